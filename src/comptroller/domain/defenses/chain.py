"""The defenses of one call, composed in the fixed order of checks, as the guards a store runs.

:class:`Defenses` is the configuration of every layer (DESIGN.md rules 5 and 6).
:class:`AdmitDefenses` is the :class:`~comptroller.domain.state.AdmitGuard` of one
call: inside the reservation's transaction it reads the call's kill switches, its
scheduled run, its task's retry state, its loop history and its breakers, and runs
the checks in :data:`~comptroller.domain.defenses.order.CHECK_ORDER` (kill switch,
pinning, deadline, loop, breaker, pacing; the store then checks the budgets). The
first refusal wins and only a kill switch tripped on the way, or the loop lock the
refusal trips, is written; when every
check passes, every changed state is written with the reservation.
:class:`SettleDefenses` counts a settled cost in the breakers and the automatic kill
switches, and returns a released call's probe lease.

State rows (:class:`~comptroller.domain.state.StateKey`):

========  ======================  =============================================
kind      key                     state
========  ======================  =============================================
breaker   ``level:scope``         :class:`~comptroller.domain.breaker.BreakerState`
kill      ``level:scope``         :class:`.killswitch.KillSwitchState`
retry     task scope key          :class:`.retries.RetryState`
loop      ``level:scope``         :class:`.loops.LoopHistory` (with its lock, :mod:`.loop_lock`)
run       ``tenant|run id``       :class:`.deadline.ScheduledRun` (:func:`.deadline.run_key`)
rate      namespace scope key     :class:`.baseline.NamespaceRate` (relative breakers' fallback; counted
                                  by a 1-in-8 sample of settles, :func:`.baseline.rate_sampled`)
fan_out   ``level:scope``         :class:`.fanout.InFlight` (live reservation ids of a capped scope)
dispatch  ``ns|conversation``     :class:`.dispatch_rule.DispatchGate` (a group's mode and dispatches; read only)
pin_drift ``agent:scope``         :class:`.served_drift.ServedDrift` (a served model outside the pin; written
                                  at settle by :meth:`SettleDefenses.serving`, read at admit with pinning)
========  ======================  =============================================

The quotas, rate limits and wallet floors keep their rows under the kind ``limits``
(:mod:`comptroller.domain.limit_rows`); their guard (:mod:`comptroller.domain.limits`)
wraps this chain's, in the same transaction.

Pure: no I/O and no clock; ``now`` comes from the store's caller.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from typing import Protocol, TypeVar

from comptroller.domain import breaker
from comptroller.domain.breaker import BreakerState
from comptroller.domain.defenses import killswitch
from comptroller.domain.defenses.baseline import RATE_SAMPLE, NamespaceRate, SpendBaseline, rate_sampled
from comptroller.domain.defenses.breaker_policy import BreakerPolicy
from comptroller.domain.defenses.deadline import ScheduledRun, check_deadline, check_run_cap, run_key, unknown_run
from comptroller.domain.defenses.dispatch_rule import DispatchGate, check_dispatched, gate_key
from comptroller.domain.defenses.fanout import FanOutConfig, InFlight, admit_in_flight, end_in_flight
from comptroller.domain.defenses.killswitch import KillSwitchConfig, KillSwitchState, check_kill_switch
from comptroller.domain.defenses.loops import LoopConfig, LoopHistory, LoopRequest, check_loops, loop_scope
from comptroller.domain.defenses.pacing import PacingConfig, apply_pacing
from comptroller.domain.defenses.pinning import PinningPolicy, Route
from comptroller.domain.defenses.retries import RetryPolicy, RetryState, check_attempt, check_unlabelled
from comptroller.domain.defenses.served_drift import ServedDrift, check_served_drift, record_served
from comptroller.domain.defenses.verdict import JsonScalar, Verdict
from comptroller.domain.ledger import AccountView, Event, Reservation, ReserveRequest
from comptroller.domain.scopes import Attribution, Level
from comptroller.domain.state import GuardOutcome, SettleGuard, StateKey, StoredState

__all__ = [
    "BREAKER",
    "FAN_OUT",
    "KILL",
    "LOOP",
    "PIN_DRIFT",
    "RATE",
    "RETRY",
    "RUN",
    "AdmitDefenses",
    "CallFacts",
    "Defenses",
    "ParsedStates",
    "SettleDefenses",
    "scoped_key",
]

BREAKER, KILL, RETRY, LOOP, RUN, RATE = "breaker", "kill_switch", "retry", "loop", "run", "rate"
FAN_OUT = "fan_out"
PIN_DRIFT = "pin_drift"
_PLANS_MAX = 8_192
_SettlePlan = tuple[list[tuple[StateKey, Level, str, "breaker.BreakerConfig"]],
                    list[tuple[StateKey, Level, str, KillSwitchConfig]],
                    tuple[StateKey, str, "breaker.BreakerConfig"] | None,
                    list[tuple[StateKey, Level, str, int]]]


def scoped_key(kind: str, level: Level, scope: str) -> StateKey:
    """The state key of a per-scope state (``level:scope``; levels contain no ``:``)."""
    return StateKey(kind, f"{level}:{scope}")


def _fan_out_plan(config: FanOutConfig | None,
                  scopes: Sequence[tuple[Level, str]]) -> list[tuple[StateKey, Level, str, int]]:
    """The capped scopes of a call: ``(state key, level, scope, max_in_flight)``."""
    if config is None:
        return []
    return [(scoped_key(FAN_OUT, level, scope), level, scope, config.max_in_flight[level])
            for level, scope in scopes if level in config.max_in_flight]


def _no_breakers() -> BreakerPolicy:
    return BreakerPolicy()


@dataclass(frozen=True, slots=True)
class Defenses:
    """Every runtime defense's configuration; None switches a layer off.

    Attributes:
        breakers: which scopes have spend-rate breakers (default: every agent and conversation).
        kill_switches: level -> automatic triggers of that level's switches (manual trips
            work at every level regardless).
        pinning: allowed models per agent (None: every agent unrestricted).
        retries: the re-attempt limit per task per UTC day (counted when a call names an attempt,
            or, unlabelled, when its request's fingerprint repeats within the current attempt).
        loops: the loop detectors (run when a call carries a fingerprint or text).
        pacing: pacing of period budgets (None: off).
        fan_out: ``max_in_flight`` per task, conversation or agent (None: off).
    """

    breakers: BreakerPolicy | None = field(default_factory=_no_breakers)
    kill_switches: Mapping[Level, KillSwitchConfig] = field(default_factory=dict)
    pinning: PinningPolicy | None = None
    retries: RetryPolicy | None = field(default_factory=RetryPolicy)
    loops: LoopConfig | None = field(default_factory=LoopConfig)
    pacing: PacingConfig | None = None
    fan_out: FanOutConfig | None = None
    _plans: dict[Attribution, _AdmitPlan] = field(default_factory=dict, init=False, repr=False, compare=False)

    @classmethod
    def budgets_only(cls) -> Defenses:
        """No runtime defense: only the budgets (and manual kill switches) apply."""
        return cls(breakers=None, retries=None, loops=None)

    def admit_plan(self, attribution: Attribution) -> _AdmitPlan:
        """The state keys and configs of an attribution's admit checks (memoised per attribution, bounded)."""
        plan = self._plans.get(attribution)
        if plan is None:
            if len(self._plans) >= _PLANS_MAX:
                self._plans.clear()
            plan = self._plans[attribution] = _AdmitPlan(self, attribution)
        return plan


class _AdmitPlan:
    """What the admit checks of one attribution read, under one configuration (see :meth:`Defenses.admit_plan`)."""

    __slots__ = ("agent_scope", "breakers", "drift_key", "fan_out", "gate_key", "kills", "loop_key", "loop_level",
                 "loop_scope", "scopes", "task")

    def __init__(self, defenses: Defenses, attribution: Attribution) -> None:
        self.scopes = attribution.scopes()
        self.loop_level, self.loop_scope = loop_scope(attribution)
        self.loop_key = scoped_key(LOOP, self.loop_level, self.loop_scope)
        by_level = dict(self.scopes)
        self.task = by_level.get(Level.TASK)
        self.kills = [(scoped_key(KILL, level, scope), level, scope, defenses.kill_switches.get(level))
                      for level, scope in self.scopes]
        self.agent_scope = by_level[Level.AGENT]
        self.drift_key = scoped_key(PIN_DRIFT, Level.AGENT, self.agent_scope)
        conversation = attribution.conversation
        self.gate_key = None if conversation is None else gate_key(attribution.namespace, conversation)
        policy = defenses.breakers
        self.fan_out = _fan_out_plan(defenses.fan_out, self.scopes)
        self.breakers = [] if policy is None else [
            (scoped_key(BREAKER, level, scope), level, scope, config)
            for level, scope, config in policy.breakers_for(self.scopes)]


@dataclass(frozen=True, slots=True)
class CallFacts:
    """What the admit checks know of one call.

    Attributes:
        call_id: the reservation's idempotency key.
        attribution: who the call is for.
        route: pinning's answer: the route, or its ``model_not_allowed`` verdict.
        requests: model -> the reserve request on that model (the routed model, then the
            cheaper allowed models pacing may downgrade to, priciest first).
        run_id: the scheduled run the call belongs to, if any.
        attempt_id: the task attempt the call belongs to, if any.
        fingerprint, text: the loop detectors' inputs, if any.
        message_id: the group message the call answers (a strict group's dispatch rule; None:
            the latest dispatched).
    """

    call_id: str
    attribution: Attribution
    route: Route | Verdict
    requests: Mapping[str, ReserveRequest]
    run_id: str | None = None
    attempt_id: str | None = None
    fingerprint: str | None = None
    text: str | None = None
    message_id: str | None = None


class _Versioned(Protocol):
    @property
    def version(self) -> int: ...

    def to_record(self) -> dict[str, JsonScalar]: ...


_S = TypeVar("_S")


class ParsedStates:
    """A memo of parsed state records, keyed by the record object itself (one per engine).

    A store hands out the same record object while its row is unchanged (memory always;
    SQLite while the row's text is unchanged), and the record a guard writes is memoised
    with the state it came from, so most reads skip parsing. The memo holds each record
    object, so an identity match is always the same record. Bounded; safe across threads
    (a race only costs a parse).

    Args:
        entries_max: rows remembered; beyond it the memo starts over.
    """

    def __init__(self, entries_max: int = 16_384) -> None:
        self._memo: dict[StateKey, tuple[Mapping[str, JsonScalar], object]] = {}
        self._entries_max = entries_max

    def load(self, states: Mapping[StateKey, StoredState], key: StateKey,
             parse: Callable[[Mapping[str, JsonScalar]], _S], default: Callable[[], _S]) -> _S:
        """The parsed state of ``key`` (``default()`` when the row does not exist)."""
        stored = states.get(key)
        if stored is None:
            return default()
        hit = self._memo.get(key)
        if hit is not None and hit[0] is stored.record:
            return hit[1]  # type: ignore[return-value]  # memoised from parse(record) of this very object
        value = parse(stored.record)
        self._remember(key, stored.record, value)
        return value

    def write(self, key: StateKey, before: _Versioned, after: _Versioned) -> tuple[StoredState, ...]:
        """The write of a changed state (none if its version did not move), memoised for the next read."""
        if after.version == before.version:
            return ()
        record = after.to_record()
        self._remember(key, record, after)
        return (StoredState(key, after.version, record),)

    def _remember(self, key: StateKey, record: Mapping[str, JsonScalar], value: object) -> None:
        if len(self._memo) >= self._entries_max:
            self._memo.clear()
        self._memo[key] = (record, value)


@dataclass
class _Changes:
    writes: list[StoredState] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    kept_writes: list[StoredState] = field(default_factory=list)  # a refusal's own state (a loop lock tripping)
    kept_events: list[Event] = field(default_factory=list)

    def outcome(self, verdict: Verdict | None = None, request: ReserveRequest | None = None) -> GuardOutcome:
        return GuardOutcome(verdict, tuple(self.writes), tuple(self.events), request)


class AdmitDefenses:
    """The :class:`~comptroller.domain.state.AdmitGuard` of one call (see the module docstring)."""

    def __init__(self, defenses: Defenses, facts: CallFacts, parsed: ParsedStates | None = None) -> None:
        self.defenses = defenses
        self.facts = facts
        self.parsed = parsed or ParsedStates()
        plan = defenses.admit_plan(facts.attribution)
        self._loop_level, self._loop_scope, self._loop_key = plan.loop_level, plan.loop_scope, plan.loop_key
        self._task = plan.task
        self._kill_plan = plan.kills
        self._agent_scope = plan.agent_scope
        self._drift_key = plan.drift_key
        self._gate_key = plan.gate_key
        self._fan_out_plan = plan.fan_out
        self._breaker_plan = plan.breakers

    def state_keys(self) -> list[StateKey]:
        """The kill switches of every scope, the run, the retry state, the loop history, the breakers."""
        keys = [key for key, _, _, _ in self._kill_plan]
        if self.facts.run_id is not None:
            keys.append(run_key(self.facts.attribution, self.facts.run_id))
        if self._gate_key is not None:
            keys.append(self._gate_key)
        if self._counts_attempts():
            assert self._task is not None
            keys.append(StateKey(RETRY, self._task))
        if self._detects_loops():
            keys.append(self._loop_key)
        keys += [key for key, _, _, _ in self._breaker_plan]
        keys += [key for key, _, _, _ in self._fan_out_plan]
        if self.defenses.pinning is not None:
            keys.append(self._drift_key)
        return keys

    def apply(self, states: Mapping[StateKey, StoredState], accounts: Sequence[AccountView],
              now: datetime) -> GuardOutcome:
        """Run the checks in order; the first refusal stops (only a kill-switch trip is kept)."""
        changes = _Changes()
        verdict = self._kill_switch(states, accounts, now, changes)
        if verdict is not None:
            return changes.outcome(verdict)
        if isinstance(self.facts.route, Verdict):
            return changes.outcome(self.facts.route)
        verdict = self._served_drift(states)
        if verdict is not None:
            return changes.outcome(verdict)
        kept = len(changes.writes), len(changes.events)
        verdict = (self._deadline(states, now, changes) or self._dispatch(states)
                   or self._retries(states, now, changes)
                   or self._loops(states, now, changes) or self._breaker(states, now, changes)
                   or self._fan_out(states, now, changes))
        request = None
        if verdict is None:
            paced = self._pacing(accounts, self.facts.route, now)
            verdict, request = (paced, None) if isinstance(paced, Verdict) else (None, paced)
        if verdict is not None:
            del changes.writes[kept[0]:], changes.events[kept[1]:]
            changes.writes += changes.kept_writes
            changes.events += changes.kept_events
        return changes.outcome(verdict, request)

    # rank 1
    def _kill_switch(self, states: Mapping[StateKey, StoredState], accounts: Sequence[AccountView],
                     now: datetime, changes: _Changes) -> Verdict | None:
        tripped = []
        for key, level, scope, config in self._kill_plan:
            fraction = config is not None and config.budget_pct_max is not None
            if not fraction and key not in states:
                continue  # no row: never tripped, and no budget trigger to check
            state = self.parsed.load(states, key, KillSwitchState.from_record,
                                     partial(KillSwitchState, level, scope))
            if fraction and not state.tripped:
                assert config is not None
                state = self._budget_fraction(state, config, accounts, now=now, key=key, changes=changes)
            if state.tripped:
                tripped.append(state)
        return check_kill_switch(tripped) if tripped else None

    def _budget_fraction(self, state: KillSwitchState, config: KillSwitchConfig, accounts: Sequence[AccountView], *,
                         now: datetime, key: StateKey, changes: _Changes) -> KillSwitchState:
        mine = [a for a in accounts if a.budget.level == state.level and a.scope == state.scope
                and a.budget.limit_mc > 0]
        if not mine:
            return state
        fullest = max(mine, key=lambda a: a.settled_mc / a.budget.limit_mc)
        step = killswitch.record_spend(state, config, 0, now, budget_settled_mc=fullest.settled_mc,
                                       budget_limit_mc=fullest.budget.limit_mc)
        if not step.state.tripped:
            return state
        changes.writes += self.parsed.write(key, state, step.state)
        changes.events += step.events
        return step.state

    # rank 2, after the answer: a served model outside the pin refuses the agent's next calls
    def _served_drift(self, states: Mapping[StateKey, StoredState]) -> Verdict | None:
        pinning = self.defenses.pinning
        if pinning is None or self._drift_key not in states:
            return None
        agent = self.facts.attribution.agent
        drift = self.parsed.load(states, self._drift_key, ServedDrift.from_record,
                                 partial(ServedDrift, self._agent_scope, agent))
        return check_served_drift(pinning, drift)

    # rank 3
    def _deadline(self, states: Mapping[StateKey, StoredState], now: datetime, changes: _Changes) -> Verdict | None:
        run_id = self.facts.run_id
        if run_id is None:
            return None
        key = run_key(self.facts.attribution, run_id)
        stored = states.get(key)
        if stored is None:
            return unknown_run(run_id, self.facts.attribution)
        run = ScheduledRun.from_record(stored.record)
        late = check_deadline(run, now)
        if late is not None:
            return late
        ceiling = max(r.ceiling_mc for r in self.facts.requests.values())
        counted, capped = check_run_cap(run, ceiling)
        if capped is None and counted is not run:
            changes.writes.append(StoredState(key, stored.version + 1, counted.to_record()))
        return capped

    # rank 4
    def _dispatch(self, states: Mapping[StateKey, StoredState]) -> Verdict | None:
        """A strict group's gate (read only): the caller must be dispatched for the message it answers."""
        if self._gate_key is None or self._gate_key not in states:
            return None
        gate = self.parsed.load(states, self._gate_key, DispatchGate.from_record, partial(DispatchGate, ""))
        return check_dispatched(gate, self.facts.attribution, self.facts.message_id)

    # rank 5
    def _counts_attempts(self) -> bool:
        return self.defenses.retries is not None and self._task is not None and (
            self.facts.attempt_id is not None or self.facts.fingerprint is not None)

    def _detects_loops(self) -> bool:
        return self.defenses.loops is not None and (self.facts.fingerprint is not None
                                                    or self.facts.text is not None)

    def _retries(self, states: Mapping[StateKey, StoredState], now: datetime, changes: _Changes) -> Verdict | None:
        if not self._counts_attempts():
            return None
        assert self.defenses.retries is not None and self._task is not None
        key = StateKey(RETRY, self._task)
        task = self._task
        state = self.parsed.load(states, key, RetryState.from_record, lambda: RetryState(task))
        if self.facts.attempt_id is not None:
            step = check_attempt(state, self.defenses.retries, self.facts.attempt_id, now)
        else:  # unlabelled: the request family seen again in this attempt starts a new one
            assert self.facts.fingerprint is not None
            step = check_unlabelled(state, self.defenses.retries, self.facts.fingerprint, now)
        changes.writes += self.parsed.write(key, state, step.state)
        return step.verdict

    def _loops(self, states: Mapping[StateKey, StoredState], now: datetime, changes: _Changes) -> Verdict | None:
        if not self._detects_loops():
            return None
        assert self.defenses.loops is not None
        key = scoped_key(LOOP, self._loop_level, self._loop_scope)
        level, scope = self._loop_level, self._loop_scope
        history = self.parsed.load(states, key, LoopHistory.from_record, lambda: LoopHistory(level, scope))
        request = LoopRequest(call_id=self.facts.call_id, agent=self.facts.attribution.agent,
                              fingerprint=self.facts.fingerprint or "", text=self.facts.text or "",
                              ceiling_mc=max(r.ceiling_mc for r in self.facts.requests.values()))
        step = check_loops(history, self.defenses.loops, request, now)
        writes = self.parsed.write(key, history, step.history)
        if step.verdict is None:
            changes.writes += writes
            changes.events += step.events
        else:
            changes.kept_writes += writes
            changes.kept_events += step.events
        return step.verdict

    # rank 6
    def _fan_out(self, states: Mapping[StateKey, StoredState], now: datetime, changes: _Changes) -> Verdict | None:
        ttl_s = next(iter(self.facts.requests.values())).ttl_s
        for key, level, scope, cap in self._fan_out_plan:
            state = self.parsed.load(states, key, InFlight.from_record, partial(InFlight, level, scope))
            step = admit_in_flight(state, cap, self.facts.call_id, ttl_s, now)
            if step.verdict is not None:
                return step.verdict
            changes.writes += self.parsed.write(key, state, step.state)
        return None

    # rank 5
    def _breaker(self, states: Mapping[StateKey, StoredState], now: datetime, changes: _Changes) -> Verdict | None:
        for key, level, scope, config in self._breaker_plan:
            state = self.parsed.load(states, key, BreakerState.from_record, partial(BreakerState, level, scope))
            step = breaker.admit(state, config, self.facts.call_id, now)
            if step.verdict is not None:
                return step.verdict
            changes.writes += self.parsed.write(key, state, step.state)
            changes.events += step.events
        return None

    # rank 6
    def _pacing(self, accounts: Sequence[AccountView], route: Route, now: datetime) -> Verdict | ReserveRequest | None:
        config = self.defenses.pacing
        if config is None:
            return None
        ceilings = {model: r.ceiling_mc for model, r in self.facts.requests.items()}
        downgrades = [m for m in self.facts.requests if m != route.model]
        paced = apply_pacing(config, accounts, route, ceilings_mc=ceilings, downgrades=downgrades, now=now)
        if isinstance(paced, Verdict):
            return paced
        return None if paced.model == route.model else self.facts.requests[paced.model]


class SettleDefenses:
    """The :class:`~comptroller.domain.state.SettleGuard`: breakers and automatic kill switches count spend."""

    def __init__(self, defenses: Defenses, parsed: ParsedStates | None = None) -> None:
        self.defenses = defenses
        self.parsed = parsed or ParsedStates()
        self._plans: dict[Attribution, _SettlePlan] = {}
        self._rates: dict[str, SpendBaseline] = {}  # namespace -> its baseline as last read or written here

    def _plan(self, attribution: Attribution) -> _SettlePlan:
        """The breakers and window-triggered kill switches of an attribution, with their keys (memoised)."""
        plan = self._plans.get(attribution)
        if plan is None:
            if len(self._plans) >= _PLANS_MAX:
                self._plans.clear()
            scopes = attribution.scopes()
            policy = self.defenses.breakers
            breakers = [] if policy is None else [(scoped_key(BREAKER, lv, sc), lv, sc, config)
                                                  for lv, sc, config in policy.breakers_for(scopes)]
            kills = [(scoped_key(KILL, lv, sc), lv, sc, config) for lv, sc in scopes
                     if (config := self.defenses.kill_switches.get(lv)) is not None
                     and config.window_spend_mc_max is not None]
            relative = next((config for _, _, _, config in breakers if config.relative_k is not None), None)
            namespace = scopes[0][1]
            rate = None if relative is None else (StateKey(RATE, namespace), namespace, relative)
            plan = self._plans[attribution] = (breakers, kills, rate, _fan_out_plan(self.defenses.fan_out, scopes))
        return plan

    def state_keys(self, reservation: Reservation) -> list[StateKey]:
        """The call's breakers, the switches with a window trigger, the namespace's rate (relative breakers).

        The rate row is read only by a sampled settle (:func:`.baseline.rate_sampled`, which counts in it)
        or when this guard has not seen the namespace's baseline yet; other settles judge young scopes
        against the baseline last seen here (at most a few sampled settles old).
        """
        breakers, kills, rate, fan_out = self._plan(reservation.attribution)
        keys = [key for key, _, _, _ in breakers] + [key for key, _, _, _ in kills]
        keys += [key for key, _, _, _ in fan_out]
        if rate is None or (rate[1] in self._rates and not rate_sampled(reservation.id)):
            return keys
        return [*keys, rate[0]]

    def apply(self, reservation: Reservation, cost_mc: int | None, states: Mapping[StateKey, StoredState],
              now: datetime) -> GuardOutcome:
        """Count ``cost_mc`` (a settle), or return the probe lease (a release: ``cost_mc`` None)."""
        changes = _Changes()
        call_id = reservation.idempotency_key
        breakers, kills, rate, fan_out = self._plan(reservation.attribution)
        for key, level, scope, _ in fan_out:
            flight = self.parsed.load(states, key, InFlight.from_record, partial(InFlight, level, scope))
            changes.writes += self.parsed.write(key, flight, end_in_flight(flight, call_id, now).state)
        namespace, fallback = None, None
        if rate is not None:
            rate_key, rate_scope, _ = rate
            if rate_key in states or rate_sampled(reservation.id) or rate_scope not in self._rates:
                namespace = self.parsed.load(states, rate_key, NamespaceRate.from_record,
                                             partial(NamespaceRate, rate_scope))
                fallback = self._remember_rate(rate_scope, namespace.baseline)
            else:
                fallback = self._rates.get(rate_scope)
        for key, level, scope, config in breakers:
            state = self.parsed.load(states, key, BreakerState.from_record, partial(BreakerState, level, scope))
            step = (breaker.release_probe(state, config, call_id, now) if cost_mc is None
                    else breaker.record_spend(state, config, cost_mc, now, call_id=call_id, fallback=fallback))
            changes.writes += self.parsed.write(key, state, step.state)
            changes.events += step.events
        if rate is not None and namespace is not None and cost_mc is not None and rate_sampled(reservation.id):
            config = rate[2]
            counted = namespace.baseline.add(cost_mc * RATE_SAMPLE, now, window_s=config.relative_window_s,
                                             half_life_s=config.baseline_half_life_s)
            if counted != namespace.baseline:
                changes.writes += self.parsed.write(rate[0], namespace, NamespaceRate(
                    namespace.scope, counted, namespace.version + 1))
                self._remember_rate(rate[1], counted)
        if cost_mc is not None:
            for key, level, scope, kill_config in kills:
                switch = self.parsed.load(states, key, KillSwitchState.from_record,
                               partial(KillSwitchState, level, scope))
                kill_step = killswitch.record_spend(switch, kill_config, cost_mc, now)
                changes.writes += self.parsed.write(key, switch, kill_step.state)
                changes.events += kill_step.events
        return changes.outcome()

    def _remember_rate(self, namespace: str, baseline: SpendBaseline) -> SpendBaseline:
        if len(self._rates) >= _PLANS_MAX:
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
