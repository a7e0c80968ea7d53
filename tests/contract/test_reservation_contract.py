"""The reservation life cycle as a table of (operation, expected code), run on every backend.

After TigerBeetle's two-phase transfer tests: each scenario is a list of steps; the
runner checks every step's code, then checks the agent account against the money the
table implies (holds of admitted, unresolved reservations; costs of settles), so the
expected balances come from the table, never from constants.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

import pytest

from comptroller.domain.budgets import ANY_SCOPE, Budget
from comptroller.domain.codes import Code
from comptroller.domain.ledger import ReservationState
from comptroller.domain.scopes import Level
from comptroller.ports import LedgerStore
from ledger_kit import T0, USAGE, account_of, assert_accounts_within_limits, attribution, reserve_request

LIMIT_MC = 1_000
TTL_S = 60.0
WHO = attribution("a1")
AGENT_SCOPE = dict(WHO.scopes())[Level.AGENT]


@dataclass(frozen=True)
class Step:
    """One operation of a scenario and the code it must answer.

    ``op`` is ``reserve`` (hold ``mc`` under ``key``), ``settle`` (charge ``mc``),
    ``release``, or ``advance`` (move virtual time by ``seconds``).
    """

    op: str
    key: str = ""
    mc: int = 0
    expect: Code | None = None
    seconds: float = 0.0


def reserve(key: str, mc: int, expect: Code) -> Step:
    """A reserve step."""
    return Step("reserve", key, mc, expect)


def settle(key: str, mc: int, expect: Code) -> Step:
    """A settle step."""
    return Step("settle", key, mc, expect)


def release(key: str, expect: Code) -> Step:
    """A release step."""
    return Step("release", key, expect=expect)


def advance(seconds: float) -> Step:
    """A step moving virtual time forward."""
    return Step("advance", seconds=seconds)


OK, EXCEEDED = Code.OK, Code.BUDGET_EXCEEDED

SCENARIOS: dict[str, list[Step]] = {
    "reserve within the limit is admitted": [reserve("k1", 400, OK)],
    "reserve of exactly the limit is admitted": [reserve("k1", LIMIT_MC, OK)],
    "reserve above the limit is refused": [reserve("k1", LIMIT_MC + 1, EXCEEDED)],
    "holds add up until the limit refuses": [
        reserve("k1", 600, OK), reserve("k2", 600, EXCEEDED), reserve("k3", 400, OK),
        reserve("k4", 1, EXCEEDED)],
    "a zero ceiling is admitted on a full budget": [reserve("k1", LIMIT_MC, OK), reserve("k2", 0, OK)],
    "retry with the same key and request answers already_reserved": [
        reserve("k1", 400, OK), reserve("k1", 400, Code.ALREADY_RESERVED)],
    "retry with the same key and another ceiling is a conflict": [
        reserve("k1", 400, OK), reserve("k1", 500, Code.IDEMPOTENCY_CONFLICT)],
    "a refused request does not consume its key": [
        reserve("k1", LIMIT_MC + 1, EXCEEDED), reserve("k1", 400, OK)],
    "settle charges the cost and frees the hold": [reserve("k1", 400, OK), settle("k1", 300, Code.SETTLED)],
    "settle twice is a no-op, never a double charge": [
        reserve("k1", 400, OK), settle("k1", 300, Code.SETTLED), settle("k1", 300, Code.ALREADY_SETTLED)],
    "a second settle with another cost changes nothing": [
        reserve("k1", 400, OK), settle("k1", 300, Code.SETTLED), settle("k1", 999, Code.ALREADY_SETTLED)],
    "settle frees the unused rest of the hold for the next call": [
        reserve("k1", LIMIT_MC, OK), settle("k1", 200, Code.SETTLED), reserve("k2", LIMIT_MC - 200, OK),
        reserve("k3", 1, EXCEEDED)],
    "settle above the ceiling charges the true cost (a ceiling miss)": [
        reserve("k1", 400, OK), settle("k1", 500, Code.SETTLED)],
    "release returns the hold": [
        reserve("k1", LIMIT_MC, OK), release("k1", Code.RELEASED), reserve("k2", LIMIT_MC, OK)],
    "release twice answers already_released": [
        reserve("k1", 400, OK), release("k1", Code.RELEASED), release("k1", Code.ALREADY_RELEASED)],
    "release after settle answers already_settled": [
        reserve("k1", 400, OK), settle("k1", 300, Code.SETTLED), release("k1", Code.ALREADY_SETTLED)],
    "settle after release is recorded late": [
        reserve("k1", 400, OK), release("k1", Code.RELEASED), settle("k1", 300, Code.SETTLED_LATE)],
    "settle after a late settle answers already_settled": [
        reserve("k1", 400, OK), release("k1", Code.RELEASED), settle("k1", 300, Code.SETTLED_LATE),
        settle("k1", 300, Code.ALREADY_SETTLED), release("k1", Code.ALREADY_SETTLED)],
    "settle of an unknown id is reservation_not_found": [settle("nope", 300, Code.RESERVATION_NOT_FOUND)],
    "release of an unknown id is reservation_not_found": [release("nope", Code.RESERVATION_NOT_FOUND)],
    "an expired lease returns its money": [
        reserve("k1", LIMIT_MC, OK), reserve("k2", 1, EXCEEDED), advance(TTL_S), reserve("k3", LIMIT_MC, OK)],
    "a lease holds until the instant it expires": [
        reserve("k1", LIMIT_MC, OK), advance(TTL_S - 0.001), reserve("k2", 1, EXCEEDED)],
    "settle after expiry is recorded late": [
        reserve("k1", 400, OK), advance(TTL_S), settle("k1", 300, Code.SETTLED_LATE)],
    "release after expiry answers already_released": [
        reserve("k1", 400, OK), advance(TTL_S), release("k1", Code.ALREADY_RELEASED)],
    "retry of an expired reservation's key still answers the first reservation": [
        reserve("k1", 400, OK), advance(TTL_S), reserve("k1", 400, Code.ALREADY_RESERVED)],
}


@dataclass
class _Expected:
    """The money a scenario's table implies for the agent account."""

    held_mc: dict[str, int] = field(default_factory=dict)
    expires: dict[str, float] = field(default_factory=dict)
    settled_mc: int = 0
    costs: dict[str, int] = field(default_factory=dict)

    def apply(self, step: Step, elapsed_s: float) -> None:
        if step.expect is Code.OK:
            self.held_mc[step.key] = step.mc
            self.expires[step.key] = elapsed_s + TTL_S
        elif step.expect in (Code.SETTLED, Code.SETTLED_LATE):
            self.held_mc.pop(step.key, None)
            self.settled_mc += step.mc
            self.costs[step.key] = step.mc
        elif step.expect is Code.RELEASED:
            self.held_mc.pop(step.key)

    def expire(self, elapsed_s: float) -> None:
        for key in [k for k, at in self.expires.items() if at <= elapsed_s and k in self.held_mc]:
            self.held_mc.pop(key)


def _run(store: LedgerStore, steps: list[Step]) -> tuple[_Expected, dict[str, str]]:
    budget = Budget(Level.AGENT, AGENT_SCOPE, LIMIT_MC)
    store.put_budget(budget)
    expected, ids, first_ids = _Expected(), {}, {}
    elapsed_s = 0.0
    for i, step in enumerate(steps):
        now = T0 + timedelta(seconds=elapsed_s)
        if step.op == "advance":
            elapsed_s += step.seconds
            continue
        expected.expire(elapsed_s)
        if step.op == "reserve":
            result = store.reserve(reserve_request(step.key, step.mc, who=WHO, ttl_s=TTL_S), now)
            code = result.code
            if code is Code.OK:
                assert result.reservation is not None
                ids[step.key] = first_ids[step.key] = result.reservation.id
            if code is Code.ALREADY_RESERVED:
                assert result.reservation is not None and result.reservation.id == first_ids[step.key]
        elif step.op == "settle":
            code = store.settle(ids.get(step.key, step.key), USAGE, step.mc, now).code
        else:
            code = store.release(ids.get(step.key, step.key), now).code
        assert code is step.expect, f"step {i} {step}: got {code}"
        expected.apply(step, elapsed_s)
    return expected, ids


@pytest.mark.parametrize("steps", list(SCENARIOS.values()), ids=list(SCENARIOS))
def test_reservation_table(store: LedgerStore, steps: list[Step]) -> None:
    """Each step answers its code, and the agent account holds exactly what the table implies."""
    expected, _ = _run(store, steps)
    elapsed_s = sum(s.seconds for s in steps)
    store.expire(T0 + timedelta(seconds=elapsed_s))
    expected.expire(elapsed_s)
    if any(s.op == "reserve" for s in steps):
        account = account_of(store, Budget(Level.AGENT, AGENT_SCOPE, LIMIT_MC), AGENT_SCOPE)
        assert account.reserved_mc == sum(expected.held_mc.values())
        assert account.settled_mc == expected.settled_mc
    else:
        assert store.accounts() == []
    assert sum(r.cost_mc for r in store.usage_records()) == expected.settled_mc
    if all(cost <= LIMIT_MC for cost in expected.costs.values()) and expected.settled_mc <= LIMIT_MC:
        assert_accounts_within_limits(store.accounts())


def test_settle_twice_keeps_the_first_record(store: LedgerStore) -> None:
    """A repeated settle returns the first usage record and appends no second row."""
    _, ids = _run(store, [reserve("k1", 400, OK), settle("k1", 300, Code.SETTLED)])
    again = store.settle(ids["k1"], USAGE, 999, T0)
    assert again.code is Code.ALREADY_SETTLED
    assert again.record is not None and again.record.cost_mc == 300
    assert [r.cost_mc for r in store.usage_records()] == [300]


def test_reservation_states_follow_the_life_cycle(store: LedgerStore) -> None:
    """reservation() reports pending, then settled, released or expired, and None for an unknown id."""
    _, ids = _run(store, [reserve("s", 100, OK), reserve("r", 100, OK), reserve("e", 100, OK),
                          settle("s", 50, Code.SETTLED), release("r", Code.RELEASED)])
    states = {key: store.reservation(rid) for key, rid in ids.items()}
    assert {k: r.state for k, r in states.items() if r is not None} == {
        "s": ReservationState.SETTLED, "r": ReservationState.RELEASED, "e": ReservationState.PENDING}
    assert store.expire(T0 + timedelta(seconds=TTL_S)) == 1
    expired = store.reservation(ids["e"])
    assert expired is not None and expired.state is ReservationState.EXPIRED
    assert store.reservation("no-such-id") is None


def test_reservation_records_its_request(store: LedgerStore) -> None:
    """A stored reservation keeps the request's attribution, model, bounds, times and ceiling."""
    who = attribution("agent|with pipe", conversation="c-é", task="t\\1", phase="Coding")
    request = reserve_request("k", 123, who=who, ttl_s=42.5, model="gpt-4o")
    reservation = store.reserve(request, T0).reservation
    assert reservation is not None
    stored = store.reservation(reservation.id)
    assert stored == reservation
    assert (stored.attribution, stored.model, stored.ceiling_mc) == (who, request.model, request.ceiling_mc)
    assert (stored.input_tokens_max, stored.output_tokens_max) == (request.input_tokens_max,
                                                                   request.output_tokens_max)
    assert (stored.created_at, stored.expires_at) == (T0, T0 + timedelta(seconds=request.ttl_s))


def test_usage_record_describes_the_call(store: LedgerStore) -> None:
    """A settle appends one usage row with the reservation's attribution, usage, cost, ceiling and outcome."""
    who = attribution("a2", conversation="room", task="task-9", phase="Review")
    reservation = store.reserve(reserve_request("k", 500, who=who), T0).reservation
    assert reservation is not None
    later = T0 + timedelta(seconds=5)
    result = store.settle(reservation.id, USAGE, 321, later)
    (record,) = list(store.usage_records())
    assert record == result.record
    assert (record.reservation_id, record.idempotency_key, record.attribution) == (reservation.id, "k", who)
    assert (record.usage, record.cost_mc, record.ceiling_mc, record.outcome) == (USAGE, 321, 500, "settled")
    assert (record.reserved_at, record.resolved_at) == (T0, later)
    assert not record.ceiling_miss


def test_late_settle_is_marked_in_the_usage_log(store: LedgerStore) -> None:
    """A settle after expiry appends a settled_late row, and a cost above the ceiling marks a miss."""
    reservation = store.reserve(reserve_request("k", 100, ttl_s=TTL_S), T0).reservation
    assert reservation is not None
    store.settle(reservation.id, USAGE, 150, T0 + timedelta(seconds=TTL_S + 1))
    (record,) = list(store.usage_records())
    assert record.outcome == "settled_late"
    assert record.ceiling_miss


def test_expire_counts_the_leases_it_returns(store: LedgerStore) -> None:
    """expire(now) returns each lease expired by now exactly once, and only those."""
    for i, ttl in enumerate((10.0, 20.0, 30.0)):
        store.reserve(reserve_request(f"k{i}", 10, ttl_s=ttl), T0)
    assert store.expire(T0 + timedelta(seconds=9)) == 0
    assert store.expire(T0 + timedelta(seconds=20)) == 2
    assert store.expire(T0 + timedelta(seconds=20)) == 0
    assert store.expire(T0 + timedelta(seconds=3600)) == 1


def test_reserve_without_budgets_is_admitted(store: LedgerStore) -> None:
    """A call no budget applies to is admitted and holds no account."""
    result = store.reserve(reserve_request("k", 10**9), T0)
    assert result.code is Code.OK
    assert store.accounts() == []


def test_an_admitted_reserve_reports_the_tightest_money_left(store: LedgerStore) -> None:
    """remaining_mc is the least any applicable budget has left with the new ceiling held; None without budgets."""
    assert store.reserve(reserve_request("free", 100), T0).remaining_mc is None
    store.put_budget(Budget(Level.AGENT, ANY_SCOPE, 1_000))
    store.put_budget(Budget(Level.TENANT, ANY_SCOPE, 5_000))
    first = store.reserve(reserve_request("r1", 300), T0)
    second = store.reserve(reserve_request("r2", 200), T0)
    assert (first.remaining_mc, second.remaining_mc) == (1_000 - 300, 1_000 - 300 - 200)
