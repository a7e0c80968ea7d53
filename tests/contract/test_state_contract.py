"""Contract: defense state rows and guards, on every backend.

Guards here are small test guards written against the port (not mocks of the
stores): they record what the store handed them and return fixed outcomes, so each
test checks one promise of ``LedgerStore`` about atomicity with the money.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from comptroller.domain.budgets import ANY_SCOPE, Budget
from comptroller.domain.codes import Code
from comptroller.domain.defenses.verdict import Rule, Verdict
from comptroller.domain.ledger import AccountView, Event, Reservation
from comptroller.domain.scopes import Level
from comptroller.domain.state import GuardOutcome, StateKey, StoredState
from comptroller.ports import LedgerStore
from ledger_kit import T0, USAGE, attribution, reserve_request

KEY = StateKey("test", "k1")
OTHER = StateKey("test", "k2")


def _state(key: StateKey, version: int, **record: str | int | None) -> StoredState:
    return StoredState(key, version, {"v": version, **record})


def _event(code: str) -> Event:
    return Event(ts=T0, kind="test", code=code, level=None, scope=None, detail={"n": 1})


@dataclass
class AdmitGuardDouble:
    """Reads ``keys``; answers ``outcome``; remembers what it was shown."""

    keys: Sequence[StateKey]
    outcome: GuardOutcome
    seen: list[tuple[dict[StateKey, StoredState], list[AccountView]]] = field(default_factory=list)

    def state_keys(self) -> Sequence[StateKey]:
        return self.keys

    def apply(self, states: Mapping[StateKey, StoredState], accounts: Sequence[AccountView],
              now: datetime) -> GuardOutcome:
        self.seen.append((dict(states), list(accounts)))
        return self.outcome


@dataclass
class SettleGuardDouble:
    """Writes ``version`` into KEY per call; remembers each (reservation id, cost)."""

    calls: list[tuple[str, int | None]] = field(default_factory=list)

    def state_keys(self, reservation: Reservation) -> Sequence[StateKey]:
        return [KEY]

    def apply(self, reservation: Reservation, cost_mc: int | None, states: Mapping[StateKey, StoredState],
              now: datetime) -> GuardOutcome:
        self.calls.append((reservation.id, cost_mc))
        version = states[KEY].version + 1 if KEY in states else 1
        return GuardOutcome(writes=(_state(KEY, version, cost=cost_mc),), events=(_event("counted"),))


def _refusal() -> Verdict:
    return Verdict(code=Code.KILL_SWITCH, rule=Rule.KILL_SWITCH, detector="manual", level=Level.NAMESPACE,
                   scope="ns", message="kill_switch: test")


def test_put_state_is_a_compare_and_set(store: LedgerStore) -> None:
    """A new row needs expected version 0; later writes need the stored version; losers write nothing."""
    assert store.state(KEY) is None
    assert store.put_state(_state(KEY, 1), expected_version=0)
    assert not store.put_state(_state(KEY, 2, lost="yes"), expected_version=0)
    assert store.put_state(_state(KEY, 2), expected_version=1, events=[_event("changed")])
    assert not store.put_state(_state(KEY, 3), expected_version=1)
    stored = store.state(KEY)
    assert stored is not None and (stored.version, dict(stored.record)) == (2, {"v": 2})
    assert [e.code for e in store.events("test")] == ["changed"]


def test_states_lists_one_kind_in_key_order(store: LedgerStore) -> None:
    """states(kind) returns that kind only, sorted by key."""
    store.put_state(_state(OTHER, 1), 0)
    store.put_state(_state(KEY, 1), 0)
    store.put_state(_state(StateKey("else", "k0"), 1), 0)
    assert [s.key for s in store.states("test")] == [KEY, OTHER]


def test_admitted_reserve_commits_guard_writes_and_events(store: LedgerStore) -> None:
    """When the guard passes and the budgets hold, its writes and events land with the reservation."""
    store.put_state(_state(KEY, 1), 0)
    store.put_budget(Budget(Level.AGENT, ANY_SCOPE, 1_000))
    guard = AdmitGuardDouble([KEY, OTHER], GuardOutcome(writes=(_state(KEY, 2), _state(OTHER, 1)),
                                                        events=(_event("admitted"),)))
    result = store.reserve(reserve_request("r1", 100), T0, guard)
    assert result.code is Code.OK
    states, accounts = guard.seen[0]
    assert list(states) == [KEY]  # only existing rows are handed over
    assert [(a.budget.level, a.reserved_mc) for a in accounts] == [(Level.AGENT, 0)]
    assert [s.version for s in (store.state(KEY), store.state(OTHER)) if s] == [2, 1]
    assert [e.code for e in result.events] == ["admitted"]
    assert [e.code for e in store.events("test")] == ["admitted"]


def test_budget_refusal_drops_guard_writes(store: LedgerStore) -> None:
    """A call the budgets refuse leaves no guard write behind, only its refusal event."""
    store.put_budget(Budget(Level.AGENT, ANY_SCOPE, 50))
    guard = AdmitGuardDouble([KEY], GuardOutcome(writes=(_state(KEY, 1),), events=(_event("admitted"),)))
    result = store.reserve(reserve_request("r1", 100), T0, guard)
    assert result.code is Code.BUDGET_EXCEEDED
    assert result.verdict is not None and result.verdict.rule is Rule.BUDGETS
    assert store.state(KEY) is None
    assert store.events("test") == []
    assert [e.code for e in store.events("refusal")] == ["budget_exceeded"]
    assert [e.kind for e in result.events] == ["refusal"]


def test_guard_refusal_keeps_only_what_the_guard_returned(store: LedgerStore) -> None:
    """A refusing guard's writes (a trip) and events persist with the refusal event; no money is held."""
    guard = AdmitGuardDouble([KEY], GuardOutcome(verdict=_refusal(), writes=(_state(KEY, 1),),
                                                 events=(_event("tripped"),)))
    result = store.reserve(reserve_request("r1", 100), T0, guard)
    assert (result.code, result.reservation) == (Code.KILL_SWITCH, None)
    assert result.verdict == _refusal()
    assert store.state(KEY) is not None
    assert [e.code for e in store.events()] == ["tripped", "kill_switch"]
    refusal = store.events("refusal")[0]
    assert refusal.detail["rule"] == "kill_switch" and refusal.detail["agent"] == "a1"
    assert all(a.reserved_mc == 0 for a in store.accounts())


def test_known_idempotency_key_is_answered_before_the_guard(store: LedgerStore) -> None:
    """A repeated reserve answers already_reserved without running the guard (no double counting)."""
    first = store.reserve(reserve_request("r1", 100), T0)
    guard = AdmitGuardDouble([KEY], GuardOutcome(verdict=_refusal()))
    again = store.reserve(reserve_request("r1", 100), T0, guard)
    assert again.code is Code.ALREADY_RESERVED and again.reservation == first.reservation
    assert guard.seen == []


def test_settle_guard_runs_once_per_charge(store: LedgerStore) -> None:
    """The settle guard sees the cost once; a repeated settle does not call it again."""
    reservation = store.reserve(reserve_request("r1", 100), T0).reservation
    assert reservation is not None
    guard = SettleGuardDouble()
    first = store.settle(reservation.id, USAGE, 40, T0, guard)
    again = store.settle(reservation.id, USAGE, 40, T0, guard)
    assert (first.code, again.code) == (Code.SETTLED, Code.ALREADY_SETTLED)
    assert guard.calls == [(reservation.id, 40)]
    stored = store.state(KEY)
    assert stored is not None and stored.record["cost"] == 40
    assert [e.code for e in first.events] == ["counted"] and again.events == ()


def test_late_settle_is_counted_by_the_guard(store: LedgerStore) -> None:
    """A settle after the lease expired still charges, so the guard counts it too."""
    reservation = store.reserve(reserve_request("r1", 100, ttl_s=1), T0).reservation
    assert reservation is not None
    guard = SettleGuardDouble()
    result = store.settle(reservation.id, USAGE, 30, T0 + timedelta(seconds=5), guard)
    assert result.code is Code.SETTLED_LATE and guard.calls == [(reservation.id, 30)]


def test_release_guard_runs_once_with_no_cost(store: LedgerStore) -> None:
    """release hands the guard cost None once; a repeat or a release after settle does not."""
    reservation = store.reserve(reserve_request("r1", 100), T0).reservation
    settled = store.reserve(reserve_request("r2", 100), T0).reservation
    assert reservation is not None and settled is not None
    store.settle(settled.id, USAGE, 10, T0)
    guard = SettleGuardDouble()
    codes = [store.release(reservation.id, T0, guard).code, store.release(reservation.id, T0, guard).code,
             store.release(settled.id, T0, guard).code]
    assert codes == [Code.RELEASED, Code.ALREADY_RELEASED, Code.ALREADY_SETTLED]
    assert guard.calls == [(reservation.id, None)]


def test_attribution_reaches_the_refusal_event(store: LedgerStore) -> None:
    """The refusal event names the agent, conversation and task of the refused call."""
    who = attribution("writer", conversation="room", task="t9")
    store.reserve(reserve_request("r1", 100, who=who), T0,
                  AdmitGuardDouble([], GuardOutcome(verdict=_refusal())))
    detail = store.events("refusal")[0].detail
    assert (detail["agent"], detail["conversation"], detail["task"]) == ("writer", "room", "t9")
