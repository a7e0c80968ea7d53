"""The settle guard of the defenses: breakers and automatic kill switches count a settled cost.

:class:`SettleDefenses` is the :class:`~comptroller.domain.state.SettleGuard` a store runs inside a
settle's or release's transaction: it counts the cost in the call's breakers, in the kill switches
with a window trigger and (a 1-in-8 sample of settles, :func:`.baseline.rate_sampled`) in the
namespace's rate row; a release returns a probe lease; a capped scope's in-flight entry ends.
:meth:`SettleDefenses.serving` adds the served model's pin check. Pure: no I/O and no clock.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from functools import partial

from comptroller.domain import breaker
from comptroller.domain.breaker import BreakerConfig, BreakerState
from comptroller.domain.breaker_state import COUNTED_FIELDS, ClosedCounters, closed_counters, count_closed
from comptroller.domain.breaker_state import counted_record as counted_breaker
from comptroller.domain.defenses import killswitch
from comptroller.domain.defenses.baseline import RATE_SAMPLE, NamespaceRate, SpendBaseline, rate_sampled
from comptroller.domain.defenses.fanout import InFlight, end_in_flight
from comptroller.domain.defenses.killswitch import (
    KillSwitchConfig,
    KillSwitchState,
    SwitchCounters,
    count_switch,
    counted_record,
    switch_counters,
)
from comptroller.domain.defenses.layers import PLANS_MAX, Defenses, fan_out_plan
from comptroller.domain.defenses.served_drift import ServedDrift, record_served
from comptroller.domain.defenses.state_rows import (
    BREAKER,
    KILL,
    PIN_DRIFT,
    RATE,
    Changes,
    ParsedStates,
    scoped_key,
    stored_state,
    text_parts,
)
from comptroller.domain.defenses.verdict import JsonScalar
from comptroller.domain.defenses.windows import epoch_seconds
from comptroller.domain.ledger import Reservation
from comptroller.domain.scopes import Attribution, Level
from comptroller.domain.state import GuardOutcome, SettleGuard, StateKey, StoredState

__all__ = ["SettleDefenses"]


class _SettlePlan:
    """The rows one attribution's settle counts in, with their configs and empty states (memoised)."""

    __slots__ = ("breakers", "fan_out", "keys", "kills", "rate")

    def __init__(self, defenses: Defenses, attribution: Attribution) -> None:
        scopes = attribution.scopes()
        policy = defenses.breakers
        self.breakers: list[tuple[StateKey, BreakerConfig, Callable[[], BreakerState]]] = [] if policy is None else [
            (scoped_key(BREAKER, lv, sc), config, partial(BreakerState, lv, sc))
            for lv, sc, config in policy.breakers_for(scopes)]
        self.kills: list[tuple[StateKey, KillSwitchConfig, Callable[[], KillSwitchState]]] = [
            (scoped_key(KILL, lv, sc), config, partial(KillSwitchState, lv, sc)) for lv, sc in scopes
            if (config := defenses.kill_switches.get(lv)) is not None and config.window_spend_mc_max is not None]
        relative = next((config for _, config, _ in self.breakers if config.relative_k is not None), None)
        namespace = scopes[0][1]
        self.rate = None if relative is None else (StateKey(RATE, namespace), namespace, relative)
        self.fan_out = fan_out_plan(defenses.fan_out, scopes)
        self.keys = ([key for key, _, _ in self.breakers] + [key for key, _, _ in self.kills]
                     + [key for key, _, _, _ in self.fan_out])


class SettleDefenses:
    """The :class:`~comptroller.domain.state.SettleGuard`: breakers and automatic kill switches count spend."""

    def __init__(self, defenses: Defenses, parsed: ParsedStates | None = None) -> None:
        self.defenses = defenses
        self.parsed = parsed or ParsedStates()
        self._plans: dict[Attribution, _SettlePlan] = {}
        self._rates: dict[str, SpendBaseline] = {}  # namespace -> its baseline as last read or written here
        # row -> the closed breaker's record last written here and its counters: a store hands that very object
        # back while no other connection wrote the row, and then its shape needs no check
        self._counted: dict[StateKey, tuple[Mapping[str, JsonScalar], ClosedCounters, tuple[str, ...] | None]] = {}
        self._switches: dict[StateKey, tuple[Mapping[str, JsonScalar], SwitchCounters]] = {}  # the same for switches

    def _plan(self, attribution: Attribution) -> _SettlePlan:
        """The breakers and window-triggered kill switches of an attribution, with their keys (memoised)."""
        plan = self._plans.get(attribution)
        if plan is None:
            if len(self._plans) >= PLANS_MAX:
                self._plans.clear()
            plan = self._plans[attribution] = _SettlePlan(self.defenses, attribution)
        return plan

    def state_keys(self, reservation: Reservation) -> list[StateKey]:
        """The call's breakers, the switches with a window trigger, the namespace's rate (relative breakers).

        The rate row is read only by a sampled settle (:func:`.baseline.rate_sampled`, which counts in it)
        or when this guard has not seen the namespace's baseline yet; other settles judge young scopes
        against the baseline last seen here (at most a few sampled settles old).
        """
        plan = self._plan(reservation.attribution)
        rate = plan.rate
        if rate is None or (rate[1] in self._rates and not rate_sampled(reservation.id)):
            return list(plan.keys)
        return [*plan.keys, rate[0]]

    def apply(self, reservation: Reservation, cost_mc: int | None, states: Mapping[StateKey, StoredState],
              now: datetime) -> GuardOutcome:
        """Count ``cost_mc`` (a settle), or return the probe lease (a release: ``cost_mc`` None)."""
        changes = Changes()
        call_id = reservation.idempotency_key
        plan = self._plan(reservation.attribution)
        parsed = self.parsed
        for key, level, scope, _ in plan.fan_out:
            flight = parsed.load(states, key, InFlight.from_record, partial(InFlight, level, scope))
            changes.writes += parsed.write(key, flight, end_in_flight(flight, call_id, now).state)
        namespace, fallback, sampled = None, None, False
        rate = plan.rate
        if rate is not None:
            rate_key, rate_scope, _ = rate
            sampled = rate_sampled(reservation.id)
            if sampled or rate_key in states or rate_scope not in self._rates:
                namespace = parsed.load(states, rate_key, NamespaceRate.from_record, partial(NamespaceRate, rate_scope))
                fallback = self._remember_rate(rate_scope, namespace.baseline)
            else:
                fallback = self._rates.get(rate_scope)
        now_s = epoch_seconds(now)
        self._breakers(plan, states, changes, call_id=call_id, cost_mc=cost_mc, now=now, now_s=now_s,
                       fallback=fallback)
        if rate is not None and namespace is not None and cost_mc is not None and sampled:
            config = rate[2]
            counted = namespace.baseline.add(cost_mc * RATE_SAMPLE, now, window_s=config.relative_window_s,
                                             half_life_s=config.baseline_half_life_s)
            if counted != namespace.baseline:
                changes.writes += parsed.write(rate[0], namespace, NamespaceRate(
                    namespace.scope, counted, namespace.version + 1))
                self._remember_rate(rate[1], counted)
        if cost_mc is not None and plan.kills:
            self._kill_switches(plan, cost_mc, states, now, changes, now_s=now_s)
        return changes.outcome()

    def _breakers(self, plan: _SettlePlan, states: Mapping[StateKey, StoredState], changes: Changes, *, call_id: str,
                  cost_mc: int | None, now: datetime, now_s: int, fallback: SpendBaseline | None) -> None:
        """Count the cost in each breaker (the common settle on its counters), or return a released probe's lease."""
        memo = self._counted
        for key, config, empty in plan.breakers:
            stored = states.get(key)
            if cost_mc is not None and stored is not None and type(cost_mc) is int and cost_mc >= 0:
                record = stored.record
                known = memo.get(key)
                mine = known is not None and known[0] is record
                counters = known[1] if mine else closed_counters(record)  # type: ignore[index]  # mine: known
                if counters is not None:
                    counted = count_closed(counters, config, cost_mc, now_s)
                    if counted is counters:
                        continue
                    if counted is not None:
                        # a row written here twice in a row: its text cut once (never for a store that hands
                        # back fresh records, as PostgreSQL does)
                        parts = (known[2] or text_parts(record, COUNTED_FIELDS)  # type: ignore[index]
                                 if mine else None)
                        record = counted_breaker(record, counted, parts)
                        if len(memo) >= PLANS_MAX:
                            memo.clear()
                        memo[key] = (record, counted, parts)
                        changes.writes.append(stored_state(key, stored.version + 1, record))
                        continue
            state = self.parsed.load(states, key, BreakerState.from_record, empty)
            step = (breaker.release_probe(state, config, call_id, now) if cost_mc is None
                    else breaker.record_spend(state, config, cost_mc, now, call_id=call_id, fallback=fallback))
            changes.writes += self.parsed.write(key, state, step.state)
            changes.events += step.events

    def _kill_switches(self, plan: _SettlePlan, cost_mc: int, states: Mapping[StateKey, StoredState], now: datetime,
                       changes: Changes, *, now_s: int) -> None:
        """Count the cost in each switch with a window trigger (the common settle on its counters)."""
        memo = self._switches
        for key, config, empty in plan.kills:
            stored = states.get(key)
            if stored is not None and type(cost_mc) is int and cost_mc >= 0:
                record = stored.record
                known = memo.get(key)
                counters = known[1] if known is not None and known[0] is record else switch_counters(record)
                counted = None if counters is None else count_switch(counters, config, cost_mc, now_s)
                if counted is not None:
                    record = counted_record(record, counted)
                    if len(memo) >= PLANS_MAX:
                        memo.clear()
                    memo[key] = (record, counted)
                    changes.writes.append(stored_state(key, stored.version + 1, record))
                    continue
            switch = self.parsed.load(states, key, KillSwitchState.from_record, empty)
            step = killswitch.record_spend(switch, config, cost_mc, now)
            changes.writes += self.parsed.write(key, switch, step.state)
            changes.events += step.events

    def _remember_rate(self, namespace: str, baseline: SpendBaseline) -> SpendBaseline:
        if len(self._rates) >= PLANS_MAX:
            self._rates.clear()
        self._rates[namespace] = baseline
        return baseline

    def serving(self, served_model: str) -> SettleGuard:
        """This guard for a call answered by ``served_model``, another model than the one admitted.

        With pins configured, the settle also records the served model in the agent's
        ``pin_drift`` row, in the same transaction (:func:`.served_drift.record_served`): a model
        the pin does not allow refuses the agent's next calls, on every worker.
        """
        return self if self.defenses.pinning is None else _ServedSettle(self, served_model)


class _ServedSettle:
    """:class:`SettleDefenses` plus the served model's pin check (see :meth:`SettleDefenses.serving`)."""

    def __init__(self, inner: SettleDefenses, served_model: str) -> None:
        self.inner, self.served_model = inner, served_model

    def state_keys(self, reservation: Reservation) -> list[StateKey]:
        """The inner guard's states and the agent's ``pin_drift`` row."""
        return [*self.inner.state_keys(reservation), _drift_key(reservation.attribution)]

    def apply(self, reservation: Reservation, cost_mc: int | None, states: Mapping[StateKey, StoredState],
              now: datetime) -> GuardOutcome:
        """The inner guard's writes and, for a settle, the drift of a served model outside the pin."""
        outcome = self.inner.apply(reservation, cost_mc, states, now)
        pinning = self.inner.defenses.pinning
        if cost_mc is None or pinning is None:
            return outcome
        attribution = reservation.attribution
        key = _drift_key(attribution)
        drift = self.inner.parsed.load(states, key, ServedDrift.from_record,
                                       partial(ServedDrift, dict(attribution.scopes())[Level.AGENT],
                                               attribution.agent))
        step = record_served(pinning, drift, admitted_model=reservation.model, served_model=self.served_model,
                             reservation=reservation.id, now=now)
        return GuardOutcome(outcome.verdict, outcome.writes + self.inner.parsed.write(key, drift, step.state),
                            outcome.events + step.events, outcome.request)


def _drift_key(attribution: Attribution) -> StateKey:
    return scoped_key(PIN_DRIFT, Level.AGENT, dict(attribution.scopes())[Level.AGENT])
