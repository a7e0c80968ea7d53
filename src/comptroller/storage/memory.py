"""The in-memory ledger: the reference model every other backend is tested against.

One lock serialises every operation, so it is safe across threads of one process
(not across processes). It keeps everything in dicts and lists, and implements the
contract of :class:`comptroller.ports.LedgerStore` in the plainest way.
"""

from __future__ import annotations

import heapq
import threading
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from comptroller.domain.admission import account_keys, alert_thresholds_crossed, decide, remaining_after
from comptroller.domain.budgets import Budget
from comptroller.domain.codes import Code
from comptroller.domain.defenses.verdict import Verdict
from comptroller.domain.ledger import (
    AccountView,
    Event,
    ReleaseResult,
    Reservation,
    ReservationState,
    ReserveRequest,
    ReserveResult,
    SettleResult,
    UsageRecord,
    check_ttl_s,
)
from comptroller.domain.reconcile import AccountBalance, AccountRef, Charge, Hold, LedgerSnapshot
from comptroller.domain.state import AdmitGuard, GuardOutcome, SettleGuard, StateKey, StoredState
from comptroller.domain.usage import Usage
from comptroller.storage.rows import (
    alert_event,
    corrected_record,
    new_reservation,
    refusal_event,
    settled_record,
    unknown_outcome_event,
    unknown_outcome_record,
)

__all__ = ["MemoryStore"]

_AccountKey = tuple[str, str, str]


@dataclass
class _Account:
    budget: Budget
    settled_mc: int = 0
    reserved_mc: int = 0
    alert_pct_fired: int = 0


class MemoryStore:
    """A :class:`~comptroller.ports.LedgerStore` held in process memory."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._budgets: dict[str, Budget] = {}
        self._accounts: dict[_AccountKey, _Account] = {}
        self._reservations: dict[str, Reservation] = {}
        self._holds: dict[str, list[_AccountKey]] = {}
        self._by_key: dict[str, str] = {}
        self._leases: list[tuple[datetime, str]] = []
        self._usage: list[UsageRecord] = []
        self._events: list[Event] = []
        self._states: dict[StateKey, StoredState] = {}

    # budgets
    def put_budget(self, budget: Budget) -> None:
        """Create or replace a budget."""
        with self._lock:
            self._budgets[budget.id] = budget
            for (budget_id, _, _), account in self._accounts.items():
                if budget_id == budget.id:  # accounts see the new limit at once, as in SQLite
                    account.budget = budget

    def delete_budget(self, budget_id: str) -> bool:
        """Delete a budget; True if it existed."""
        with self._lock:
            return self._budgets.pop(budget_id, None) is not None

    def budgets(self) -> list[Budget]:
        """Every budget, ordered by id."""
        with self._lock:
            return [self._budgets[k] for k in sorted(self._budgets)]

    # reservations
    def reserve(self, request: ReserveRequest, now: datetime, guard: AdmitGuard | None = None) -> ReserveResult:
        """Answer a known key; else run the guard, then the budgets; hold the ceiling or refuse."""
        with self._lock:
            self._expire_locked(now)
            existing_id = self._by_key.get(request.idempotency_key)
            if existing_id is not None:
                existing = self._reservations[existing_id]
                code = Code.ALREADY_RESERVED if request.same_request(existing) else Code.IDEMPOTENCY_CONFLICT
                return ReserveResult(code, reservation=existing if code is Code.ALREADY_RESERVED else None)
            keys = account_keys(request.attribution.scopes(), self._budgets.values(), now)
            held = [(b.id, scope, period) for b, scope, period in keys]
            views = [self._view(key, b) for key, (b, _, _) in zip(held, keys, strict=True)]
            outcome = GuardOutcome()
            if guard is not None:
                outcome = guard.apply(self._read_states(guard.state_keys()), views, now)
                if outcome.verdict is not None:
                    refused = replace(outcome, events=(*outcome.events, refusal_event(outcome.verdict, request, now)))
                    self._commit(refused)
                    return ReserveResult(outcome.verdict.code, verdict=outcome.verdict, events=refused.events)
                request = outcome.request or request
            refusal = decide(request.ceiling_mc, views, now)
            if refusal is not None:
                verdict = Verdict.from_refusal(refusal)
                event = refusal_event(verdict, request, now)
                self._events.append(event)
                return ReserveResult(Code.BUDGET_EXCEEDED, refusal=refusal, verdict=verdict, events=(event,))
            for key in held:
                self._accounts[key].reserved_mc += request.ceiling_mc
            reservation = new_reservation(uuid.uuid4().hex, request, now)
            self._reservations[reservation.id] = reservation
            self._holds[reservation.id] = held
            self._by_key[request.idempotency_key] = reservation.id
            heapq.heappush(self._leases, (reservation.expires_at, reservation.id))
            self._commit(outcome)
            return ReserveResult(Code.OK, reservation=reservation, events=outcome.events,
                                 remaining_mc=remaining_after(request.ceiling_mc, views))

    def _read_states(self, keys: Iterable[StateKey]) -> dict[StateKey, StoredState]:
        return {k: self._states[k] for k in sorted(set(keys)) if k in self._states}

    def _commit(self, outcome: GuardOutcome) -> None:
        for state in outcome.writes:
            self._states[state.key] = state
        self._events.extend(outcome.events)

    def _after(self, guard: SettleGuard | None, reservation: Reservation, cost_mc: int | None,
               now: datetime) -> None:
        if guard is not None:
            states = self._read_states(guard.state_keys(reservation))
            self._commit(guard.apply(reservation, cost_mc, states, now))

    def _view(self, key: _AccountKey, budget: Budget) -> AccountView:
        account = self._accounts.get(key)
        if account is None:
            account = self._accounts[key] = _Account(budget)
        account.budget = budget
        return AccountView(budget, key[1], key[2], account.settled_mc, account.reserved_mc,
                           account.alert_pct_fired)

    def settle(self, reservation_id: str, usage: Usage, cost_mc: int, now: datetime,
               guard: SettleGuard | None = None) -> SettleResult:
        """Charge the actual cost once; repeats answer ``already_settled``; an ``unknown_outcome`` charge
        is corrected to ``cost_mc``."""
        with self._lock:
            self._expire_locked(now)
            reservation = self._reservations.get(reservation_id)
            if reservation is None:
                return SettleResult(Code.RESERVATION_NOT_FOUND)
            if reservation.state is ReservationState.SETTLED:
                record = next(r for r in self._usage if r.reservation_id == reservation_id)
                return SettleResult(Code.ALREADY_SETTLED, record)
            first = len(self._events)
            if reservation.state is ReservationState.UNKNOWN_OUTCOME:
                record = self._correct(reservation, usage, cost_mc, now)
                self._after(guard, reservation, cost_mc, now)
                return SettleResult(Code.SETTLED_LATE, record, tuple(self._events[first:]))
            late = reservation.state is not ReservationState.PENDING
            for key in self._holds[reservation_id]:
                account = self._accounts[key]
                if not late:
                    account.reserved_mc -= reservation.ceiling_mc
                self._charge(account, key, cost_mc, now)
            record = settled_record(reservation, usage, cost_mc, now, late=late)
            self._usage.append(record)
            self._reservations[reservation_id] = replace(reservation, state=ReservationState.SETTLED)
            self._after(guard, reservation, cost_mc, now)
            return SettleResult(Code.SETTLED_LATE if late else Code.SETTLED, record, tuple(self._events[first:]))

    def _correct(self, reservation: Reservation, usage: Usage | None, cost_mc: int, now: datetime) -> UsageRecord:
        """Replace an ``unknown_outcome`` ceiling charge by the real cost (``usage`` None: a release, zero)."""
        for key in self._holds[reservation.id]:
            self._charge(self._accounts[key], key, cost_mc - reservation.ceiling_mc, now)
        record = corrected_record(reservation, usage, cost_mc, now)
        index = next(i for i, r in enumerate(self._usage) if r.reservation_id == reservation.id)
        self._usage[index] = record
        self._reservations[reservation.id] = replace(reservation, state=ReservationState.SETTLED)
        return record

    def _charge(self, account: _Account, key: _AccountKey, cost_mc: int, now: datetime) -> None:
        view = AccountView(account.budget, key[1], key[2], account.settled_mc, account.reserved_mc,
                           account.alert_pct_fired)
        account.settled_mc += cost_mc
        if key[0] not in self._budgets:  # a deleted budget fires no alerts (as in SQLite)
            return
        for pct in alert_thresholds_crossed(view, account.settled_mc):
            self._events.append(alert_event(view, pct, account.settled_mc, now))
            account.alert_pct_fired = pct

    def release(self, reservation_id: str, now: datetime, guard: SettleGuard | None = None) -> ReleaseResult:
        """Return the whole hold once."""
        with self._lock:
            self._expire_locked(now)
            reservation = self._reservations.get(reservation_id)
            if reservation is None:
                return ReleaseResult(Code.RESERVATION_NOT_FOUND)
            if reservation.state is ReservationState.SETTLED:
                return ReleaseResult(Code.ALREADY_SETTLED)
            first = len(self._events)
            if reservation.state is ReservationState.UNKNOWN_OUTCOME:
                self._correct(reservation, None, 0, now)
                self._after(guard, reservation, None, now)
                return ReleaseResult(Code.RELEASED, tuple(self._events[first:]))
            if reservation.state is not ReservationState.PENDING:
                return ReleaseResult(Code.ALREADY_RELEASED)
            self._unhold(reservation, ReservationState.RELEASED)
            self._after(guard, reservation, None, now)
            return ReleaseResult(Code.RELEASED, tuple(self._events[first:]))

    def _unhold(self, reservation: Reservation, state: ReservationState) -> None:
        for key in self._holds[reservation.id]:
            self._accounts[key].reserved_mc -= reservation.ceiling_mc
        self._reservations[reservation.id] = replace(reservation, state=state)

    def expire(self, now: datetime) -> int:
        """Return the holds of every lease expired at ``now``."""
        with self._lock:
            return self._expire_locked(now)

    def _expire_locked(self, now: datetime) -> int:
        expired = 0
        while self._leases and self._leases[0][0] <= now:
            _, reservation_id = heapq.heappop(self._leases)
            reservation = self._reservations[reservation_id]
            if reservation.state is not ReservationState.PENDING or reservation.expires_at > now:
                continue  # resolved, or renewed (its newer lease entry is still queued)
            if reservation.sent:
                self._charge_unknown(reservation, now)
            else:
                self._unhold(reservation, ReservationState.EXPIRED)
            expired += 1
        return expired

    def _charge_unknown(self, reservation: Reservation, now: datetime) -> None:
        """A sent call's lease ran out unresolved: its hold becomes its charge (no alert fires for it)."""
        for key in self._holds[reservation.id]:
            account = self._accounts[key]
            account.reserved_mc -= reservation.ceiling_mc
            account.settled_mc += reservation.ceiling_mc
        self._usage.append(unknown_outcome_record(reservation, now))
        self._events.append(unknown_outcome_event(reservation, now))
        self._reservations[reservation.id] = replace(reservation, state=ReservationState.UNKNOWN_OUTCOME)

    def renew(self, reservation_id: str, now: datetime, ttl_s: float) -> bool:
        """Extend a pending lease to ``now + ttl_s`` (never shorten it); False if it is resolved or expired."""
        check_ttl_s(ttl_s)
        with self._lock:
            self._expire_locked(now)
            reservation = self._reservations.get(reservation_id)
            if reservation is None or reservation.state is not ReservationState.PENDING:
                return False
            expires_at = max(reservation.expires_at, now + timedelta(seconds=ttl_s))
            self._reservations[reservation_id] = replace(reservation, expires_at=expires_at)
            heapq.heappush(self._leases, (expires_at, reservation_id))
            return True

    def reservation(self, reservation_id: str) -> Reservation | None:
        """One reservation by id."""
        with self._lock:
            return self._reservations.get(reservation_id)

    # reads
    def accounts(self) -> list[AccountView]:
        """Every account with its money (accounts of deleted budgets are left out)."""
        with self._lock:
            return [AccountView(a.budget, k[1], k[2], a.settled_mc, a.reserved_mc, a.alert_pct_fired)
                    for k, a in sorted(self._accounts.items()) if k[0] in self._budgets]

    def usage_records(self) -> Iterator[UsageRecord]:
        """The usage log in settle order."""
        with self._lock:
            records = list(self._usage)
        return iter(records)

    def ledger_snapshot(self) -> LedgerSnapshot:
        """Every account (deleted budgets' too), reservation and usage charge, under the lock."""
        with self._lock:
            return LedgerSnapshot(
                balances=tuple(AccountBalance(AccountRef(*key), a.settled_mc, a.reserved_mc)
                               for key, a in sorted(self._accounts.items())),
                holds=tuple(Hold(r.id, r.state, r.ceiling_mc, tuple(AccountRef(*k) for k in self._holds[r.id]))
                            for r in self._reservations.values()),
                charges=tuple(Charge(u.reservation_id, u.cost_mc) for u in self._usage))

    # defense state
    def state(self, key: StateKey) -> StoredState | None:
        """One defense state, or None."""
        with self._lock:
            return self._states.get(key)

    def states(self, kind: str) -> list[StoredState]:
        """Every state of one kind, ordered by key."""
        with self._lock:
            return [self._states[k] for k in sorted(self._states) if k.kind == kind]

    def put_state(self, state: StoredState, expected_version: int, events: Sequence[Event] = ()) -> bool:
        """Compare-and-set on the stored version (0: must not exist)."""
        with self._lock:
            current = self._states.get(state.key)
            if (0 if current is None else current.version) != expected_version:
                return False
            self._states[state.key] = state
            self._events.extend(events)
            return True

    def record_event(self, event: Event) -> None:
        """Append an event."""
        with self._lock:
            self._events.append(event)

    def events(self, kind: str | None = None) -> list[Event]:
        """Events in time order, optionally of one kind."""
        with self._lock:
            return [e for e in self._events if kind is None or e.kind == kind]

    def close(self) -> None:
        """Nothing to release."""
