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

Modules: the configuration and each attribution's plan in :mod:`.layers`, the row kinds, keys and
parse memo in :mod:`.state_rows`, the settle guard in :mod:`.settle_guard`; this module holds the
admit guard and re-exports the rest.

Pure: no I/O and no clock; ``now`` comes from the store's caller.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from operator import attrgetter

from comptroller.domain import breaker
from comptroller.domain.breaker import BreakerState, BreakerStatus
from comptroller.domain.defenses import killswitch
from comptroller.domain.defenses.deadline import ScheduledRun, check_deadline, check_run_cap, run_key, unknown_run
from comptroller.domain.defenses.dispatch_rule import DispatchGate, check_dispatched
from comptroller.domain.defenses.fanout import InFlight, admit_in_flight
from comptroller.domain.defenses.killswitch import KillSwitchConfig, KillSwitchState, check_kill_switch
from comptroller.domain.defenses.layers import Defenses
from comptroller.domain.defenses.loops import LoopHistory, LoopRequest, check_loops
from comptroller.domain.defenses.pacing import PaceAction, apply_pacing, check_pace
from comptroller.domain.defenses.pinning import Route
from comptroller.domain.defenses.retries import RetryState, check_attempt, check_unlabelled
from comptroller.domain.defenses.served_drift import ServedDrift, check_served_drift
from comptroller.domain.defenses.settle_guard import SettleDefenses
from comptroller.domain.defenses.state_rows import (
    BREAKER,
    FAN_OUT,
    KILL,
    LOOP,
    PIN_DRIFT,
    RATE,
    RETRY,
    RUN,
    Changes,
    ParsedStates,
    scoped_key,
)
from comptroller.domain.defenses.verdict import Verdict
from comptroller.domain.ledger import AccountView, ReserveRequest
from comptroller.domain.scopes import Attribution
from comptroller.domain.state import GuardOutcome, StateKey, StoredState

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

_CEILING = attrgetter("ceiling_mc")


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
        self._plan = plan
        self._attempts = defenses.retries is not None and plan.task is not None and (
            facts.attempt_id is not None or facts.fingerprint is not None)  # rank 5 counts the attempt
        self._detects = defenses.loops is not None and (facts.fingerprint is not None or facts.text is not None)

    def state_keys(self) -> list[StateKey]:
        """The kill switches of every scope, the run, the retry state, the loop history, the breakers."""
        plan = self._plan
        keys = list(plan.kill_keys)
        if self.facts.run_id is not None:
            keys.append(run_key(self.facts.attribution, self.facts.run_id))
        if plan.gate_key is not None:
            keys.append(plan.gate_key)
        if self._attempts:
            assert plan.retry_key is not None
            keys.append(plan.retry_key)
        if self._detects:
            keys.append(plan.loop_key)
        keys += plan.tail_keys
        return keys

    def apply(self, states: Mapping[StateKey, StoredState], accounts: Sequence[AccountView],
              now: datetime) -> GuardOutcome:
        """Run the checks in order; the first refusal stops (only a kill-switch trip is kept)."""
        changes = Changes()
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
                     now: datetime, changes: Changes) -> Verdict | None:
        tripped = []
        for key, level, scope, config in self._kill_plan:
            fraction = config is not None and config.budget_pct_max is not None
            if not fraction and (key not in states or states[key].record.get("tripped") is False):
                continue  # not tripped (no row, or its record says so), and no budget trigger to check
            state = self.parsed.load(states, key, KillSwitchState.from_record,
                                     partial(KillSwitchState, level, scope))
            if fraction and not state.tripped:
                assert config is not None
                state = self._budget_fraction(state, config, accounts, now=now, key=key, changes=changes)
            if state.tripped:
                tripped.append(state)
        return check_kill_switch(tripped) if tripped else None

    def _budget_fraction(self, state: KillSwitchState, config: KillSwitchConfig, accounts: Sequence[AccountView], *,
                         now: datetime, key: StateKey, changes: Changes) -> KillSwitchState:
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
    def _deadline(self, states: Mapping[StateKey, StoredState], now: datetime, changes: Changes) -> Verdict | None:
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
    def _retries(self, states: Mapping[StateKey, StoredState], now: datetime, changes: Changes) -> Verdict | None:
        if not self._attempts:
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

    def _loops(self, states: Mapping[StateKey, StoredState], now: datetime, changes: Changes) -> Verdict | None:
        if not self._detects:
            return None
        assert self.defenses.loops is not None
        key, level, scope = self._loop_key, self._loop_level, self._loop_scope
        history = self.parsed.load(states, key, LoopHistory.from_record, lambda: LoopHistory(level, scope))
        facts = self.facts
        request = LoopRequest(facts.call_id, facts.attribution.agent, facts.fingerprint or "", facts.text or "",
                              max(map(_CEILING, facts.requests.values())))
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
    def _fan_out(self, states: Mapping[StateKey, StoredState], now: datetime, changes: Changes) -> Verdict | None:
        ttl_s = next(iter(self.facts.requests.values())).ttl_s
        for key, level, scope, cap in self._fan_out_plan:
            state = self.parsed.load(states, key, InFlight.from_record, partial(InFlight, level, scope))
            step = admit_in_flight(state, cap, self.facts.call_id, ttl_s, now)
            if step.verdict is not None:
                return step.verdict
            changes.writes += self.parsed.write(key, state, step.state)
        return None

    # rank 5
    def _breaker(self, states: Mapping[StateKey, StoredState], now: datetime, changes: Changes) -> Verdict | None:
        for key, level, scope, config in self._breaker_plan:
            stored = states.get(key)
            if stored is None or stored.record.get("status") == BreakerStatus.CLOSED:
                continue  # a closed breaker admits, and time alone changes nothing while closed (breaker.advance)
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
        requests = self.facts.requests
        routed = requests.get(route.model)
        if routed is not None:  # apply_pacing's first check: on pace keeps the route, over it refuses if so set
            over = check_pace(config, accounts, routed.ceiling_mc, now)
            if over is None or config.action is PaceAction.REFUSE:
                return over
        ceilings = {model: r.ceiling_mc for model, r in requests.items()}
        downgrades = [m for m in self.facts.requests if m != route.model]
        paced = apply_pacing(config, accounts, route, ceilings_mc=ceilings, downgrades=downgrades, now=now)
        if isinstance(paced, Verdict):
            return paced
        return None if paced.model == route.model else self.facts.requests[paced.model]
