"""Policy and price-override files (TOML), validated once at start.

A policy file configures replay (and later the gateway)::

    namespace = "replay"          # namespace of replayed calls
    default_model = "gpt-3.5-turbo-16k"   # for records with no model label
    output_cap_tokens = 4096      # per-turn output cap when a request has none
    ttl_s = 600                   # reservation lease, seconds

    [output_caps]                 # per-agent caps
    "Programmer" = 2048

    [aliases]                     # recorded label -> priced model
    "ModelType.GPT_3_5_TURBO" = "gpt-3.5-turbo-16k"

    [prices."llama-3.1-8b-local"] # a local model, or a replacement price
    input_mtok = "0"              # USD per million tokens, as a string (exact)
    output_mtok = "0"

    [[budgets]]
    level = "conversation"        # namespace | tenant | agent | agent_conversation | conversation | task
    limit_usd = "0.50"            # or limit_mc = 50000
    period = "total"              # total | day | week | month
    # scope ids; leave the level's own id out for "every scope at this level"
    # conversation = "chatdev/Gomoku_..."

A price-override file is the same format with only ``[aliases]`` and ``[prices]``.
Errors name the file, the field and what to write instead.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from comptroller.actions_config import ActionPolicy, TaskSettings, parse_actions, parse_tasks
from comptroller.batch_config import BatchSection
from comptroller.defenses_config import DefenseSections, RunsSection
from comptroller.domain.budgets import (
    DEFAULT_ALERT_THRESHOLDS_PCT,
    Budget,
    BudgetError,
    Period,
    budget_scope,
    limit_usd_to_mc,
)
from comptroller.domain.caps import OutputCaps
from comptroller.domain.defenses.chain import Defenses
from comptroller.domain.limits import Limits
from comptroller.domain.money import parse_usd
from comptroller.domain.pricing import ModelPrice, Rate, TieredRate
from comptroller.domain.scopes import Level
from comptroller.economics_config import FeesSection, InfraSpec
from comptroller.groups.config import GroupDefinition, parse_groups
from comptroller.limits_config import QuotaSpec, RateLimitSpec, limits_of
from comptroller.notify.config import NotifyConfig
from comptroller.ports import PriceSource
from comptroller.prices import PriceBook
from comptroller.routing.config import RoutingConfig, load_routing

__all__ = ["ConfigError", "Policy", "load_policy", "scope_for"]


class ConfigError(ValueError):
    """A policy or price file is unreadable or invalid; the message names file and field."""


class _Tier(BaseModel):
    model_config = ConfigDict(extra="forbid")
    start: int = Field(ge=0)
    price: Any


class _Tiered(BaseModel):
    model_config = ConfigDict(extra="forbid")
    base: Any
    tiers: list[_Tier]


class PriceOverride(BaseModel):
    """One configured price, USD per million tokens (strings keep decimals exact)."""

    model_config = ConfigDict(extra="forbid")
    input_mtok: Any
    output_mtok: Any
    cache_read_mtok: Any = None
    cache_write_mtok: Any = None
    cache_write_1h_mtok: Any = None
    max_output_tokens: int | None = Field(default=None, ge=1)
    context_window: int | None = Field(default=None, ge=1)

    @staticmethod
    def _rate(value: Any, name: str) -> Rate | None:
        if value is None:
            return None
        if isinstance(value, dict):
            tiered = _Tiered.model_validate(value)
            return TieredRate(parse_usd(tiered.base, name),
                              tuple((t.start, parse_usd(t.price, name)) for t in sorted(tiered.tiers,
                                                                                        key=lambda t: t.start)))
        return parse_usd(value, name)

    def to_price(self, model: str, source: str) -> ModelPrice:
        """The domain price for ``model``."""
        rates = {name: self._rate(getattr(self, name), name) for name in (
            "input_mtok", "output_mtok", "cache_read_mtok", "cache_write_mtok", "cache_write_1h_mtok")}
        input_rate, output_rate = rates.pop("input_mtok"), rates.pop("output_mtok")
        assert input_rate is not None and output_rate is not None
        return ModelPrice(model=model, input_mtok=input_rate, output_mtok=output_rate, source=source,
                          max_output_tokens=self.max_output_tokens, context_window=self.context_window,
                          **rates)


class BudgetSpec(BaseModel):
    """A budget as written in a policy file."""

    model_config = ConfigDict(extra="forbid")
    level: Level
    limit_usd: Any = None
    limit_mc: int | None = Field(default=None, ge=0)
    period: Period = Period.TOTAL
    timezone: str = "UTC"
    alert_thresholds_pct: list[int] = Field(default_factory=lambda: list(DEFAULT_ALERT_THRESHOLDS_PCT))
    namespace: str | None = None
    tenant: str | None = None
    agent: str | None = None
    conversation: str | None = None
    task: str | None = None
    group: str | None = None

    def to_budget(self, default_namespace: str) -> Budget:
        """The domain budget: scope ids as :func:`~comptroller.domain.budgets.budget_scope` requires.

        The policy's ``namespace`` stands for an unnamed namespace; a limit above 0 but below
        1 millicent is refused (:func:`~comptroller.domain.budgets.limit_usd_to_mc`).
        """
        if (self.limit_usd is None) == (self.limit_mc is None):
            raise ValueError("give exactly one of limit_usd (\"2.50\") or limit_mc (250000)")
        limit = self.limit_mc if self.limit_mc is not None else limit_usd_to_mc(
            parse_usd(self.limit_usd, "limit_usd"))
        scope = budget_scope(self.level, namespace=self.namespace, tenant=self.tenant, agent=self.agent,
                             conversation=self.conversation, task=self.task, group=self.group,
                             namespace_default=default_namespace)
        return Budget(level=self.level, scope=scope, limit_mc=limit, period=self.period,
                      timezone=self.timezone, alert_thresholds_pct=tuple(self.alert_thresholds_pct))


def scope_for(level: Level, *, namespace: str | None, tenant: str | None = None, agent: str | None = None,
              conversation: str | None = None, task: str | None = None) -> str:
    """The scope key at ``level`` named by these ids, or ``*`` when none is given.

    Every id above the level's own must be named (no silent ``"default"``); see
    :func:`comptroller.domain.budgets.budget_scope`, which raises BudgetError (a ValueError)
    naming what is missing.
    """
    return budget_scope(level, namespace=namespace, tenant=tenant, agent=agent, conversation=conversation,
                        task=task)


class Policy(DefenseSections):
    """A validated policy: attribution defaults, caps, prices, aliases, budgets, defenses, notifications.

    The defense sections (``[breakers]``, ``[kill_switch]``, ``[retries]``, ``[loops]``,
    ``[pinning]``, ``[pacing]``) are documented in :mod:`comptroller.defenses_config`;
    ``[runs]`` gives replayed runs a deadline; ``[notify]`` is :mod:`comptroller.notify.config`;
    ``[cascades]``/``[routing]`` are :mod:`comptroller.routing.config`; ``[groups]`` is
    :mod:`comptroller.groups.config`; ``[gateway]`` is :mod:`comptroller.gateway.config`, so one
    file serves ``replay``, ``serve`` and the SDK.
    """

    model_config = ConfigDict(extra="forbid")
    namespace: str = "replay"
    default_model: str | None = None
    output_cap_tokens: int | None = Field(default=None, ge=1)
    output_caps: dict[str, int] = Field(default_factory=dict)
    ttl_s: float = Field(default=600.0, gt=0, le=86_400)
    aliases: dict[str, str] = Field(default_factory=dict)
    label_aliases: dict[Literal["agent", "phase"], dict[str, str]] = Field(default_factory=dict)
    """``[label_aliases.phase]`` / ``[label_aliases.agent]``: a recorded label -> the one name replay and
    reports use (``CODING = "Coding"``), so one phase or agent logged under several spellings is one."""
    prices: dict[str, PriceOverride] = Field(default_factory=dict)
    budgets: list[BudgetSpec] = Field(default_factory=list)
    runs: RunsSection | None = None
    notify: NotifyConfig = Field(default_factory=NotifyConfig)
    cascades: dict[str, Any] = Field(default_factory=dict)
    routing: dict[str, Any] = Field(default_factory=dict)
    groups: dict[str, Any] = Field(default_factory=dict)
    gateway: dict[str, Any] = Field(default_factory=dict)
    batch: BatchSection = Field(default_factory=BatchSection)
    """``[batch]``: batch prices, leases and reconciling (:mod:`comptroller.batch_config`)."""
    """``[gateway]``: read and validated by :mod:`comptroller.gateway.config` (``comptroller serve``)."""
    fees: FeesSection | None = None
    """``[fees]`` and ``[[infra]]``: service fees and shared costs (:mod:`comptroller.economics_config`)."""
    infra: list[InfraSpec] = Field(default_factory=list)
    quotas: list[QuotaSpec] = Field(default_factory=list)
    """``[[quotas]]`` and ``[[rate_limits]]``: tokens, messages, RPM and TPM (:mod:`comptroller.limits_config`)."""
    rate_limits: list[RateLimitSpec] = Field(default_factory=list)
    actions: dict[str, Any] = Field(default_factory=dict)
    tasks: dict[str, Any] = Field(default_factory=dict)
    """``[tasks]``: heartbeat staleness and the chain of command (:class:`comptroller.actions_config.TaskSettings`)."""
    """``[actions.PLATFORM]`` / ``[actions.PLATFORM.KIND]``: the action guard (:mod:`comptroller.actions_config`)."""
    source: str = "policy"

    @field_validator("output_caps")
    @classmethod
    def _caps_positive(cls, caps: dict[str, int]) -> dict[str, int]:
        for agent, cap in caps.items():
            if cap < 1:
                raise ValueError(f"output cap for {agent!r} must be >= 1 token, got {cap}")
        return caps

    def caps(self) -> OutputCaps:
        """The per-turn output caps."""
        return OutputCaps(default_tokens=self.output_cap_tokens, by_agent=dict(self.output_caps))

    def price_overrides(self) -> dict[str, ModelPrice]:
        """Configured prices by model id."""
        return {model: p.to_price(model, f"{self.source} [prices]") for model, p in self.prices.items()}

    def budget_list(self) -> list[Budget]:
        """Configured budgets."""
        return [spec.to_budget(self.namespace) for spec in self.budgets]

    def limits(self) -> Limits:
        """The quotas and rate limits. Raises ValueError naming the entry at fault."""
        return limits_of(self.quotas, self.rate_limits, self.namespace)

    def defenses(self) -> Defenses:
        """The runtime defenses. Raises DefenseConfigError (a ValueError) naming the bad field."""
        return self.to_defenses(self.namespace)

    def routing_config(self, prices: PriceSource) -> RoutingConfig:
        """The ``[cascades.NAME]`` and ``[routing]`` sections, every tier model priced in ``prices``.

        Raises:
            RoutingConfigError: (a ValueError) naming the file, the section and what to write.
        """
        return load_routing(self.cascades, self.routing, prices=prices, pinning=self.defenses().pinning,
                            source=self.source)

    def group_definitions(self) -> dict[str, GroupDefinition]:
        """The ``[groups.NAME]`` sections (empty if none). Raises GroupFileError (a ValueError)."""
        return parse_groups({"groups": self.groups}, self.source) if self.groups else {}

    def action_policy(self) -> ActionPolicy:
        """The ``[actions]`` sections. Raises ActionsConfigError (a ValueError) naming the section and field."""
        return parse_actions(self.actions, self.source)

    def task_settings(self) -> TaskSettings:
        """The ``[tasks]`` section. Raises ActionsConfigError (a ValueError) naming the field."""
        return parse_tasks(self.tasks, self.source)


def load_policy(path: str | Path | None) -> Policy:
    """Read and validate a policy (or price-override) TOML file; None gives the empty policy.

    Raises:
        ConfigError: naming the file and the field at fault.
    """
    if path is None:
        return Policy()
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such policy file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    try:
        policy = Policy.model_validate({**data, "source": str(path)})
        policy.price_overrides()
        policy.budget_list()
        policy.caps()
        policy.defenses()
        policy.limits()
        policy.routing_config(PriceBook(overrides=policy.price_overrides(), aliases=policy.aliases))
        policy.group_definitions()
        policy.action_policy()
        policy.task_settings()
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"{path}: {problems}") from None
    except (ValueError, BudgetError) as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return policy
