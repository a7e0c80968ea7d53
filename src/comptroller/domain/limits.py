"""Rate limits, quotas and wallet floors of one call, as guards composed around the defenses' guards.

The engine wraps the call's :class:`~comptroller.domain.state.AdmitGuard` (the defenses,
:mod:`comptroller.domain.defenses.chain`) in :class:`LimitsAdmit`, and its settle guard in
:class:`LimitsSettle`. Inside the reservation's transaction, on every backend, after the
defenses admitted the call (and chose its final request: pacing may downgrade it), the
limits run in the order of :data:`~comptroller.domain.defenses.order.CHECK_ORDER`: rate
limits (:mod:`.rate_limits`), quotas (:mod:`.quotas`), the wallet floor
(:mod:`.wallets.floors`); the store then checks the money budgets. The first refusal wins,
and then nothing the defenses or the limits would have written is written: a refused call
takes no rate-limit slot, no quota and no hold. Admitted, every change commits with the
reservation; a budget refusal after them drops them with it.

Limits come from the policy and from the namespace's limit book in the ledger
(:mod:`.limit_book`, ``comptroller quota set``): the admit guard reads the book's row in the
transaction and raises :class:`~.limit_book.LimitsChanged` when it changed since the engine
read it (the engine reads it again and retries), so every admission sees the current limits.

At settle (and release) :class:`LimitsSettle` corrects a TPM slot to the actual tokens,
settles quota holds to the actual count and moves the wallet hold to the spend at the
actual cost, in the settle's transaction, once (stores call settle guards only when they
charge or release).

Rows read per call: one per applicable rate limit and quota, and the agent's floor row
(always: a floor set by an admin applies at once, with no policy change). Pure.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from comptroller.domain import held_counts, quotas, rate_limits
from comptroller.domain.defenses.verdict import Verdict
from comptroller.domain.held_counts import HeldCount
from comptroller.domain.ledger import AccountView, Reservation, ReserveRequest
from comptroller.domain.limit_book import LimitBook, LimitsChanged, book_key, merged
from comptroller.domain.quotas import Quota
from comptroller.domain.rate_limits import Gcra, RateLimit, RateUnit
from comptroller.domain.scopes import Attribution, Level
from comptroller.domain.state import AdmitGuard, GuardOutcome, SettleGuard, StateKey, StoredState
from comptroller.domain.usage import Usage
from comptroller.domain.wallets import floors
from comptroller.domain.wallets.accounts import agent_wallet
from comptroller.domain.wallets.floors import FloorState

__all__ = ["Limits", "LimitsAdmit", "LimitsSettle"]

_STATICS_MAX = 8_192


@dataclass(frozen=True, slots=True)
class Limits:
    """The policy's rate limits and quotas, and the engine's copy of each namespace's limit book.

    Wallet floors are rows set by an admin, always checked.

    Attributes:
        rate_limits: RPM and TPM limits per key, tenant and agent.
        quotas: token and message quotas per level and period.
    """

    rate_limits: tuple[RateLimit, ...] = ()
    quotas: tuple[Quota, ...] = ()
    _statics: dict[tuple[Attribution, int], _Static] = field(default_factory=dict, compare=False, repr=False)
    _books: dict[str, LimitBook] = field(default_factory=dict, compare=False, repr=False)

    def book(self, namespace: str) -> LimitBook:
        """The engine's copy of a namespace's limit book (an empty one, version 0, until read)."""
        return self._books.get(namespace) or LimitBook()

    def refresh(self, namespace: str, book: LimitBook) -> None:
        """Replace the engine's copy of a namespace's book (after :class:`~.limit_book.LimitsChanged`)."""
        self._books[namespace] = book

    def static(self, attribution: Attribution) -> _Static:
        """The rate limits, quotas and floor row an attribution counts against (memoised, bounded)."""
        book = self.book(attribution.namespace)
        found = self._statics.get((attribution, book.version))
        if found is None:
            if len(self._statics) >= _STATICS_MAX:
                self._statics.clear()
            scopes = attribution.scopes()
            quota_list, rate_list = merged(self.quotas, self.rate_limits, book)
            found = self._statics[attribution, book.version] = _Static(
                tuple((rate_limits.state_key(r, s), r, s)
                      for r, s in rate_limits.applicable(rate_list, attribution.key_id, scopes)),
                tuple(quotas.applicable(quota_list, scopes)), dict(scopes)[Level.AGENT],
                floors.floor_key(agent_wallet(attribution)), book.version)
        return found

    def admit(self, inner: AdmitGuard, request: ReserveRequest, now: datetime) -> LimitsAdmit:
        """The admit guard of a call reserved with ``request`` at ``now`` around the defenses ``inner``."""
        return LimitsAdmit(inner, self, request, now)

    def settle(self, inner: SettleGuard, usage: Usage | None) -> LimitsSettle:
        """The settle guard of a call that used ``usage`` (None: a release) around ``inner``."""
        return LimitsSettle(inner, self, usage)


def _units(unit: RateUnit, input_tokens_max: int, output_tokens_max: int) -> int:
    return 1 if unit is RateUnit.RPM else input_tokens_max + output_tokens_max


@dataclass(frozen=True, slots=True)
class _Static:
    """What an attribution counts against, whatever the time: rate-limit rows, quotas, the floor row."""

    rates: tuple[tuple[StateKey, RateLimit, str], ...]
    quotas: tuple[tuple[Quota, str], ...]
    agent_scope: str
    floor: StateKey
    book_version: int


class _Plan:
    """The rows of one call: its rate limits, quotas (in the period it was admitted in) and floor."""

    def __init__(self, limits: Limits, attribution: Attribution, admitted_at: datetime) -> None:
        static = limits.static(attribution)
        self.rates, self.agent_scope, self.floor = static.rates, static.agent_scope, static.floor
        self.book_version = static.book_version
        self.quotas = [(quotas.quota_key(q, s, admitted_at), q, s) for q, s in static.quotas]

    def keys(self) -> list[StateKey]:
        if not self.rates and not self.quotas:
            return [self.floor]
        return [k for k, _, _ in self.rates] + [k for k, _, _ in self.quotas] + [self.floor]


def _gcra(states: Mapping[StateKey, StoredState], key: StateKey) -> Gcra:
    stored = states.get(key)
    return Gcra() if stored is None else Gcra.from_record(stored.record, stored.version)


def _count(states: Mapping[StateKey, StoredState], key: StateKey) -> HeldCount:
    stored = states.get(key)
    return HeldCount() if stored is None else HeldCount.from_record(stored.record, stored.version)


def _floor(states: Mapping[StateKey, StoredState], key: StateKey) -> FloorState | None:
    stored = states.get(key)
    return None if stored is None else FloorState.from_record(stored.record, stored.version)


class LimitsAdmit:
    """The :class:`~comptroller.domain.state.AdmitGuard` of one call: the defenses, then the limits.

    Args:
        inner: the call's defenses.
        limits: the configured limits.
        request: the request the call is reserved with unless the defenses replace it.
        now: the admission time (the store's ``now``; it fixes the quota periods).
    """

    def __init__(self, inner: AdmitGuard, limits: Limits, request: ReserveRequest, now: datetime) -> None:
        self.inner, self.request = inner, request
        self.plan = _Plan(limits, request.attribution, now)
        self.namespace = request.attribution.namespace
        self.book = book_key(self.namespace)

    def state_keys(self) -> list[StateKey]:
        """The defenses' rows, then the call's rate-limit, quota and floor rows and its namespace's limit book."""
        return [*self.inner.state_keys(), *self.plan.keys(), self.book]

    def apply(self, states: Mapping[StateKey, StoredState], accounts: Sequence[AccountView],
              now: datetime) -> GuardOutcome:
        """The defenses' outcome; if they admit, the limits' checks on the final request (module docstring).

        Raises:
            LimitsChanged: the namespace's limit book is not the one the call's rows were chosen from.
        """
        outcome = self.inner.apply(states, accounts, now)
        if outcome.verdict is not None:
            return outcome
        stored = states.get(self.book)
        if (0 if stored is None else stored.version) != self.plan.book_version:
            raise LimitsChanged(self.namespace)
        request = outcome.request or self.request
        writes: list[StoredState] = []
        verdict = (self._rates(states, request, now, writes) or self._quotas(states, request, now, writes)
                   or self._floor(states, request, now, writes))
        if verdict is not None:
            return GuardOutcome(verdict)
        if not writes:
            return outcome
        return GuardOutcome(None, outcome.writes + tuple(writes), outcome.events, outcome.request)

    def _rates(self, states: Mapping[StateKey, StoredState], request: ReserveRequest, now: datetime,
               writes: list[StoredState]) -> Verdict | None:
        now_ns = rate_limits.ns(now)
        for key, limit, scope in self.plan.rates:
            units = _units(limit.unit, request.input_tokens_max, request.output_tokens_max)
            state, wait_ns = rate_limits.conform(_gcra(states, key), limit, units, now_ns)
            if wait_ns is not None:
                return rate_limits.refusal(limit, scope, units, wait_ns)
            writes.append(StoredState(key, state.version, state.to_record()))
        return None

    def _quotas(self, states: Mapping[StateKey, StoredState], request: ReserveRequest, now: datetime,
                writes: list[StoredState]) -> Verdict | None:
        expires_at = now + timedelta(seconds=request.ttl_s)
        for key, quota, scope in self.plan.quotas:
            count = held_counts.age(_count(states, key), now)
            amount = quotas.ceiling(quota.unit, request.input_tokens_max, request.output_tokens_max)
            verdict = quotas.check(count, quota, scope, amount, now)
            if verdict is not None:
                return verdict
            count = held_counts.reserve(count, request.idempotency_key, amount, expires_at)
            writes.append(StoredState(key, count.version, count.to_record()))
        return None

    def _floor(self, states: Mapping[StateKey, StoredState], request: ReserveRequest, now: datetime,
               writes: list[StoredState]) -> Verdict | None:
        state = _floor(states, self.plan.floor)
        if state is None:
            return None
        state = state.with_spend(held_counts.age(state.spend, now))
        verdict = floors.check(state, self.plan.agent_scope, request.ceiling_mc)
        if verdict is not None:
            return verdict
        state = state.with_spend(held_counts.reserve(state.spend, request.idempotency_key, request.ceiling_mc,
                                                     now + timedelta(seconds=request.ttl_s)))
        writes.append(StoredState(self.plan.floor, state.version, state.to_record()))
        return None


class LimitsSettle:
    """The :class:`~comptroller.domain.state.SettleGuard` of one settle or release: the defenses', then the limits'.

    Args:
        inner: the defenses' settle guard.
        limits: the configured limits.
        usage: the tokens billed (None: a release; a settle without usage counts its reserved bounds).
    """

    def __init__(self, inner: SettleGuard, limits: Limits, usage: Usage | None) -> None:
        self.inner, self.limits, self.usage = inner, limits, usage
        self._plan: tuple[str, _Plan] | None = None

    def _plan_of(self, reservation: Reservation) -> _Plan:
        if self._plan is None or self._plan[0] != reservation.id:
            self._plan = (reservation.id, _Plan(self.limits, reservation.attribution, reservation.created_at))
        return self._plan[1]

    def state_keys(self, reservation: Reservation) -> list[StateKey]:
        """The defenses' rows, then the call's rate-limit, quota and floor rows."""
        return [*self.inner.state_keys(reservation), *self._plan_of(reservation).keys()]

    def apply(self, reservation: Reservation, cost_mc: int | None, states: Mapping[StateKey, StoredState],
              now: datetime) -> GuardOutcome:
        """The defenses' writes and the limits' corrections (``cost_mc`` None: a release)."""
        outcome = self.inner.apply(reservation, cost_mc, states, now)
        plan = self._plan_of(reservation)
        if not plan.rates and not plan.quotas and plan.floor not in states:
            return outcome
        usage = None if cost_mc is None else self.usage or Usage(reservation.input_tokens_max,
                                                                 reservation.output_tokens_max)
        call_id = reservation.idempotency_key
        writes: list[StoredState] = []
        now_ns = rate_limits.ns(now)
        for key, limit, _ in plan.rates:
            if limit.unit is RateUnit.TPM:
                ceiling = reservation.input_tokens_max + reservation.output_tokens_max
                unused = ceiling if usage is None else ceiling - usage.input_tokens - usage.output_tokens
                before = _gcra(states, key)
                after = rate_limits.refund(before, limit, unused, now_ns)
                if after != before:
                    writes.append(StoredState(key, after.version, after.to_record()))
        for key, quota, _ in plan.quotas:
            before_count = _count(states, key)
            count = held_counts.age(before_count, now)
            count = (held_counts.release(count, call_id) if usage is None
                     else held_counts.settle(count, call_id, quotas.used(quota.unit, usage)))
            if count != before_count:
                writes.append(StoredState(key, max(count.version, before_count.version + 1), count.to_record()))
        floor = _floor(states, plan.floor)
        if floor is not None:
            spend = held_counts.age(floor.spend, now)
            spend = held_counts.release(spend, call_id) if cost_mc is None else held_counts.settle(spend, call_id,
                                                                                                  cost_mc)
            after_floor = floor.with_spend(spend)
            if after_floor != floor:
                writes.append(StoredState(plan.floor, after_floor.version, after_floor.to_record()))
        return GuardOutcome(outcome.verdict, outcome.writes + tuple(writes), outcome.events, outcome.request)
