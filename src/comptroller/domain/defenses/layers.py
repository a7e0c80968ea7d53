"""Every runtime defense's configuration (:class:`Defenses`), and what each attribution's checks read.

Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from comptroller.domain.defenses.breaker_policy import BreakerPolicy
from comptroller.domain.defenses.dispatch_rule import gate_key
from comptroller.domain.defenses.fanout import FanOutConfig
from comptroller.domain.defenses.killswitch import KillSwitchConfig
from comptroller.domain.defenses.loops import LoopConfig, loop_scope
from comptroller.domain.defenses.pacing import PacingConfig
from comptroller.domain.defenses.pinning import PinningPolicy
from comptroller.domain.defenses.retries import RetryPolicy
from comptroller.domain.defenses.state_rows import BREAKER, FAN_OUT, KILL, LOOP, PIN_DRIFT, RETRY, scoped_key
from comptroller.domain.scopes import Attribution, Level
from comptroller.domain.state import StateKey

__all__ = ["PLANS_MAX", "AdmitPlan", "Defenses", "fan_out_plan"]

PLANS_MAX = 8_192
"""Attributions whose plans a memo keeps; beyond it the memo starts over."""


def fan_out_plan(config: FanOutConfig | None,
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
    _plans: dict[Attribution, AdmitPlan] = field(default_factory=dict, init=False, repr=False, compare=False)

    @classmethod
    def budgets_only(cls) -> Defenses:
        """No runtime defense: only the budgets (and manual kill switches) apply."""
        return cls(breakers=None, retries=None, loops=None)

    def admit_plan(self, attribution: Attribution) -> AdmitPlan:
        """The state keys and configs of an attribution's admit checks (memoised per attribution, bounded)."""
        plan = self._plans.get(attribution)
        if plan is None:
            if len(self._plans) >= PLANS_MAX:
                self._plans.clear()
            plan = self._plans[attribution] = AdmitPlan(self, attribution)
        return plan


class AdmitPlan:
    """What the admit checks of one attribution read, under one configuration (see :meth:`Defenses.admit_plan`).

    Attributes:
        scopes: the attribution's ``(level, scope key)`` pairs, broadest first.
        loop_level, loop_scope, loop_key: the scope whose loop history is checked, and its row.
        task: the task's scope key, if any.
        kills: ``(row, level, scope, automatic triggers or None)`` of each scope's kill switch.
        agent_scope, drift_key: the agent's scope key and its ``pin_drift`` row.
        gate_key: the conversation's dispatch gate row (None without a conversation).
        fan_out: the capped scopes (:func:`fan_out_plan`).
        breakers: ``(row, level, scope, config)`` of each breaker that applies.
        kill_keys: the kill switches' rows, in ``kills`` order.
        retry_key: the task's retry row (None without a task).
        tail_keys: the breakers' rows, the capped scopes' rows, and the agent's ``pin_drift`` row with pinning
            (the rows every admission of the attribution reads after its kill switches, run, gate, retry and
            loop rows).
    """

    __slots__ = ("agent_scope", "breakers", "drift_key", "fan_out", "gate_key", "kill_keys", "kills", "loop_key",
                 "loop_level", "loop_scope", "retry_key", "scopes", "tail_keys", "task")

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
        self.fan_out = fan_out_plan(defenses.fan_out, self.scopes)
        self.breakers = [] if policy is None else [
            (scoped_key(BREAKER, level, scope), level, scope, config)
            for level, scope, config in policy.breakers_for(self.scopes)]
        self.kill_keys = tuple(key for key, _, _, _ in self.kills)
        self.retry_key = None if self.task is None else StateKey(RETRY, self.task)
        self.tail_keys = (*(key for key, _, _, _ in self.breakers), *(key for key, _, _, _ in self.fan_out),
                          *((self.drift_key,) if defenses.pinning is not None else ()))
