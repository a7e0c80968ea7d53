"""The runtime-defense sections of a policy file, validated into :class:`~comptroller.domain.defenses.chain.Defenses`.

Every section is optional; the defaults switch on the spend-rate breakers (every
agent and conversation, KinthAI's numbers with our $0.50 per minute threshold), the
re-attempt limit (3 per task per UTC day) and the loop detectors; pinning, pacing,
the automatic kill switch and run deadlines are off until configured::

    [breakers]                    # enabled = false switches every breaker off
    levels = ["agent", "conversation"]
    threshold_usd = "0.50"        # per window (or threshold_mc = 50000)
    window_s = 60
    trip_windows = 3
    cooldown_s_start = 5
    cooldown_s_max = 300
    relative = true               # also trip at relative_k x the scope's own trailing baseline
    relative_k = 10               # (namespace's while the scope is younger than baseline_age_s_min)
    relative_floor_usd = "1.00"   # ...and above this per relative window
    relative_window_s = 3600

    [[breakers.overrides]]        # one scope's own breaker (enabled = false: none)
    level = "agent"
    agent = "Programmer"
    threshold_usd = "2.00"

    [kill_switch]                 # automatic triggers on the namespace's aggregate
    window_s = 3600
    window_spend_usd = "20"       # trip when one window settles more than this
    budget_pct_max = 90           # trip when the namespace budget is 90 % spent

    [retries]
    retries_max_per_day = 3       # enabled = false switches it off

    [loops]
    identical_max = 5             # any LoopConfig field (cooldown_s_start, near_duplicates_max, ...);
                                  # enabled = false switches them off

    [pinning.agents.Programmer]   # allowed models per agent
    models = ["gpt-4o-mini"]
    tiers = ["cheap"]
    [pinning.model_tiers]
    "gpt-4o-mini" = "cheap"

    [pacing]                      # pace period budgets
    slack_pct = 10
    burst_pct = 5
    action = "refuse"             # or "downgrade" (to the agent's next cheaper allowed model)

    [fan_out]                     # max_in_flight: live calls per task / conversation / agent
    task = 9                      # (off unless set)

    [runs]                        # replay: every run gets a deadline
    duration_s_max = 1800

Sources of each rule are in :mod:`comptroller.domain.defenses`.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from comptroller.domain.breaker import (
    DEFAULT_RELATIVE_FLOOR_MC,
    DEFAULT_RELATIVE_K,
    DEFAULT_THRESHOLD_MC,
    BreakerConfig,
)
from comptroller.domain.defenses.breaker_policy import BreakerPolicy
from comptroller.domain.defenses.chain import Defenses
from comptroller.domain.defenses.fanout import FanOutConfig
from comptroller.domain.defenses.killswitch import KillSwitchConfig
from comptroller.domain.defenses.loops import LoopConfig
from comptroller.domain.defenses.pacing import PaceAction, PacingConfig
from comptroller.domain.defenses.pinning import AgentPin, FallbackRule, PinningPolicy
from comptroller.domain.defenses.retries import RetryPolicy
from comptroller.domain.money import parse_usd, usd_to_mc_half_up
from comptroller.domain.scopes import Level, scope_key

__all__ = ["DefenseSections"]


def _money_mc(usd: Any, mc: int | None, name: str) -> int | None:
    """Millicents from ``<name>_usd`` (a decimal string) or ``<name>_mc``; at most one may be given."""
    if usd is not None and mc is not None:
        raise ValueError(f"give one of {name}_usd or {name}_mc, not both")
    return mc if usd is None else usd_to_mc_half_up(parse_usd(usd, f"{name}_usd"))


class _BreakerFields(BaseModel):
    model_config = ConfigDict(extra="forbid")
    threshold_usd: Any = None
    threshold_mc: int | None = None
    window_s: int = 60
    trip_windows: int = 3
    cooldown_s_start: float = 5.0
    cooldown_s_max: float = 300.0
    probe_lease_s: float = 60.0
    relative_k: int | None = DEFAULT_RELATIVE_K
    relative: bool = True
    relative_floor_usd: Any = None
    relative_floor_mc: int | None = None
    relative_window_s: int = 3_600
    baseline_half_life_s: float = 86_400.0
    baseline_age_s_min: float = 86_400.0

    def to_config(self) -> BreakerConfig:
        threshold = _money_mc(self.threshold_usd, self.threshold_mc, "threshold")
        floor = _money_mc(self.relative_floor_usd, self.relative_floor_mc, "relative_floor")
        return BreakerConfig(threshold_mc=DEFAULT_THRESHOLD_MC if threshold is None else threshold,
                             window_s=self.window_s, trip_windows=self.trip_windows,
                             cooldown_s_start=self.cooldown_s_start, cooldown_s_max=self.cooldown_s_max,
                             probe_lease_s=self.probe_lease_s,
                             relative_k=self.relative_k if self.relative else None,
                             relative_floor_mc=DEFAULT_RELATIVE_FLOOR_MC if floor is None else floor,
                             relative_window_s=self.relative_window_s,
                             baseline_half_life_s=self.baseline_half_life_s,
                             baseline_age_s_min=self.baseline_age_s_min)


class BreakerOverride(_BreakerFields):
    """One scope's own breaker: ``level`` and the ids that name the scope."""

    level: Level
    enabled: bool = True
    tenant: str | None = None
    agent: str | None = None
    conversation: str | None = None

    def key(self, namespace: str) -> tuple[Level, str]:
        """The ``(level, scope key)`` this override configures."""
        tenant = self.tenant or "default"
        ids = {Level.NAMESPACE: (namespace,), Level.TENANT: (namespace, tenant),
               Level.AGENT: (namespace, tenant, self.agent), Level.CONVERSATION: (namespace, tenant, self.conversation),
               Level.AGENT_CONVERSATION: (namespace, tenant, self.agent, self.conversation)}.get(self.level)
        if ids is None or any(i is None for i in ids):
            raise ValueError(f"breakers.overrides: a {self.level} override needs the ids of its scope "
                             "(agent = ..., conversation = ...)")
        return self.level, scope_key(*(str(i) for i in ids))


class BreakersSection(_BreakerFields):
    """``[breakers]``: the level defaults and per-scope overrides."""

    enabled: bool = True
    levels: list[Level] = Field(default_factory=lambda: [Level.AGENT, Level.CONVERSATION])
    overrides: list[BreakerOverride] = Field(default_factory=list)

    def to_policy(self, namespace: str) -> BreakerPolicy | None:
        if not self.enabled:
            return None
        config = self.to_config()
        overrides = {o.key(namespace): (o.to_config() if o.enabled else None) for o in self.overrides}
        return BreakerPolicy(levels=dict.fromkeys(self.levels, config), overrides=overrides)


class KillSwitchSection(BaseModel):
    """``[kill_switch]``: automatic triggers on the namespace's aggregate spend."""

    model_config = ConfigDict(extra="forbid")
    window_s: int = 3_600
    window_spend_usd: Any = None
    window_spend_mc: int | None = None
    budget_pct_max: int | None = None

    def to_config(self) -> KillSwitchConfig:
        return KillSwitchConfig(window_s=self.window_s,
                                window_spend_mc_max=_money_mc(self.window_spend_usd, self.window_spend_mc,
                                                              "window_spend"),
                                budget_pct_max=self.budget_pct_max)


class RetriesSection(BaseModel):
    """``[retries]``: re-attempts per task per UTC day."""

    model_config = ConfigDict(extra="forbid")
    enabled: bool = True
    retries_max_per_day: int = 3


class LoopsSection(BaseModel):
    """``[loops]``: the loop detectors' thresholds (:class:`LoopConfig` fields)."""

    model_config = ConfigDict(extra="allow")
    enabled: bool = True

    def to_config(self) -> LoopConfig | None:
        return LoopConfig(**(self.model_extra or {})) if self.enabled else None


class PinSpec(BaseModel):
    """One agent's allowed models and tiers, and its fallbacks."""

    model_config = ConfigDict(extra="forbid")
    models: list[str] = Field(default_factory=list)
    tiers: list[str] = Field(default_factory=list)
    fallbacks: list[dict[str, Any]] = Field(default_factory=list)

    def to_pin(self) -> AgentPin:
        return AgentPin(models=tuple(self.models), tiers=tuple(self.tiers),
                        fallbacks=tuple(FallbackRule(**f) for f in self.fallbacks))


class PinningSection(BaseModel):
    """``[pinning]``: allowed models per agent, a default pin, and model tiers."""

    model_config = ConfigDict(extra="forbid")
    agents: dict[str, PinSpec] = Field(default_factory=dict)
    default: PinSpec | None = None
    model_tiers: dict[str, str] = Field(default_factory=dict)

    def to_policy(self) -> PinningPolicy:
        return PinningPolicy(pins={a: p.to_pin() for a, p in self.agents.items()},
                             default=None if self.default is None else self.default.to_pin(),
                             model_tiers=dict(self.model_tiers))


class PacingSection(BaseModel):
    """``[pacing]``: pace period budgets."""

    model_config = ConfigDict(extra="forbid")
    slack_pct: int = 10
    burst_pct: int = 5
    action: PaceAction = PaceAction.REFUSE
    periods: list[str] = Field(default_factory=lambda: ["month"])

    def to_config(self) -> PacingConfig:
        return PacingConfig(slack_pct=self.slack_pct, burst_pct=self.burst_pct, action=self.action,
                            periods=tuple(self.periods))  # type: ignore[arg-type]  # validated there


class FanOutSection(BaseModel):
    """``[fan_out]``: ``max_in_flight`` live calls per task, conversation or agent (a level left out: no cap)."""

    model_config = ConfigDict(extra="forbid")
    task: int | None = None
    conversation: int | None = None
    agent: int | None = None

    def to_config(self) -> FanOutConfig | None:
        caps = {level: cap for level, cap in ((Level.TASK, self.task), (Level.CONVERSATION, self.conversation),
                                              (Level.AGENT, self.agent)) if cap is not None}
        return FanOutConfig(max_in_flight=caps) if caps else None


class RunsSection(BaseModel):
    """``[runs]``: replay opens every run with this deadline."""

    model_config = ConfigDict(extra="forbid")
    duration_s_max: float = Field(gt=0, le=7 * 86_400)


class DefenseSections(BaseModel):
    """Every defense section of a policy file."""

    model_config = ConfigDict(extra="forbid")
    breakers: BreakersSection = Field(default_factory=BreakersSection)
    kill_switch: KillSwitchSection | None = None
    retries: RetriesSection = Field(default_factory=RetriesSection)
    loops: LoopsSection = Field(default_factory=LoopsSection)
    pinning: PinningSection | None = None
    pacing: PacingSection | None = None
    fan_out: FanOutSection | None = None

    def to_defenses(self, namespace: str) -> Defenses:
        """The domain configuration. Raises DefenseConfigError (a ValueError) naming the bad field."""
        return Defenses(
            breakers=self.breakers.to_policy(namespace),
            kill_switches={} if self.kill_switch is None else {Level.NAMESPACE: self.kill_switch.to_config()},
            pinning=None if self.pinning is None else self.pinning.to_policy(),
            retries=RetryPolicy(self.retries.retries_max_per_day) if self.retries.enabled else None,
            loops=self.loops.to_config(),
            pacing=None if self.pacing is None else self.pacing.to_config(),
            fan_out=None if self.fan_out is None else self.fan_out.to_config(),
        )
