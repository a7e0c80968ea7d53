"""Configuration of cascades and routing rules (``[cascades.NAME]``, ``[routing]``), checked at start-up.

TOML, inside a policy file::

    [cascades.support]
    response_schema = { type = "object", required = ["answer"] }  # for json_schema gates without their own

    [[cascades.support.tiers]]
    name = "local"
    models = ["llama-3.1-8b-local"]          # equivalent models, rotated over attempts
    attempts_max = 2                          # "escalate after two failures"
    gates = [
      { kind = "non_empty" },                 # finish_reasons = ["stop"] by default
      { kind = "json_schema" },               # schema = {...} here, else the cascade's, else the request's
      { kind = "confidence", field = "confidence", threshold = 0.7 },
      { kind = "custom", callable = "mypackage.checks:has_citation" },
    ]
    # numeric kinds: final_number (marker = "####"), arithmetic, final_agrees, question_numbers,
    # answer_length (max_chars = 400)

    [[cascades.support.tiers]]
    name = "frontier"
    models = ["gpt-4o"]

    [routing]
    default = "support"                       # with no matching rule and no requested cascade

    [[routing.rules]]
    name = "deep mode"
    deep_mode = true                          # also: tools, input_tokens_min/max, keywords, agents, roles,
    cascade = "support"                       #       daily_output_tokens_min
    tier = "frontier"                         # start here (default: the first tier)

    [[routing.rules]]                         # local traffic only where a local node pays for itself:
    name = "bulk to local"                    # the break-even volume `comptroller tco` prints
    agents = ["indexer"]
    daily_output_tokens_min = 5_762_056
    cascade = "support"
    tier = "local"

:func:`load_routing` turns the two sections into a :class:`RoutingConfig` and raises
:class:`~comptroller.domain.routing.errors.RoutingConfigError` at start-up, never at the
first call, for: a cascade with no tiers, a schema that does not compile, a tier model
without a price, a custom gate that cannot be imported, a rule naming an unknown cascade
or tier, and a rule that routes a pinned agent where it may use no model.
"""

from __future__ import annotations

import importlib
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from comptroller.domain.defenses.pinning import PinningPolicy
from comptroller.domain.routing.cascade import Cascade, Tier
from comptroller.domain.routing.errors import RoutingConfigError
from comptroller.domain.routing.gates import ConfidenceGate, CustomGate, Gate, JsonSchemaGate, NonEmptyGate
from comptroller.domain.routing.numeric_gates import (
    AnswerLengthGate,
    ArithmeticGate,
    FinalAgreesGate,
    FinalNumberGate,
    QuestionNumbersGate,
)
from comptroller.domain.routing.rules import RouteDecision, RouteFacts, Router, RoutingRule, check_pinning
from comptroller.ports import PriceSource
from comptroller.routing.runner import (
    CascadeEngine,
    CascadeRequest,
    CascadeResult,
    TierCall,
    TierReply,
    run_cascade,
    run_cascade_async,
)

__all__ = ["CascadeSpec", "GateSpec", "RoutingConfig", "RoutingSpec", "RuleSpec", "TierSpec", "load_routing"]

GateKind = Literal["non_empty", "json_schema", "confidence", "custom", "final_number", "arithmetic", "final_agrees",
                   "question_numbers", "answer_length"]


class GateSpec(BaseModel):
    """One gate as written in TOML (``kind`` plus the options of that kind)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    kind: GateKind
    json_schema: dict[str, Any] | None = Field(default=None, alias="schema")
    field: str = "confidence"
    threshold: float | None = None
    callable: str | None = None
    marker: str = "####"
    max_chars: int | None = None
    finish_reasons: list[str] = Field(default_factory=lambda: ["stop"])


class TierSpec(BaseModel):
    """One tier as written in TOML."""

    model_config = ConfigDict(extra="forbid")
    name: str
    models: list[str]
    attempts_max: int = 1
    gates: list[GateSpec] = Field(default_factory=list)


class CascadeSpec(BaseModel):
    """One ``[cascades.NAME]`` section."""

    model_config = ConfigDict(extra="forbid")
    tiers: list[TierSpec] = Field(default_factory=list)
    response_schema: dict[str, Any] | None = None


class RuleSpec(BaseModel):
    """One ``[[routing.rules]]`` entry."""

    model_config = ConfigDict(extra="forbid")
    name: str
    cascade: str
    tier: str | None = None
    deep_mode: bool | None = None
    tools: bool | None = None
    input_tokens_min: int | None = Field(default=None, ge=0)
    input_tokens_max: int | None = Field(default=None, ge=0)
    keywords: list[str] = Field(default_factory=list)
    agents: list[str] = Field(default_factory=list)
    roles: list[str] = Field(default_factory=list)
    daily_output_tokens_min: int | None = Field(default=None, ge=0)


class RoutingSpec(BaseModel):
    """The ``[routing]`` section."""

    model_config = ConfigDict(extra="forbid")
    default: str | None = None
    rules: list[RuleSpec] = Field(default_factory=list)


def _custom(path: str | None, where: str) -> CustomGate:
    module_name, _, attribute = (path or "").partition(":")
    if not module_name or not attribute:
        raise RoutingConfigError(f"{where}: a custom gate needs callable = \"package.module:function\", got {path!r}")
    try:
        func = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as exc:
        raise RoutingConfigError(f"{where}: cannot import custom gate {path!r}: {exc}") from None
    if not callable(func):
        raise RoutingConfigError(f"{where}: custom gate {path!r} is not callable")
    return CustomGate(path or "", func)


def _gate(spec: GateSpec, where: str, cascade_schema: dict[str, Any] | None) -> Gate:
    if spec.kind == "json_schema":
        return JsonSchemaGate(spec.json_schema if spec.json_schema is not None else cascade_schema)
    if spec.kind == "confidence":
        if spec.threshold is None:
            raise RoutingConfigError(f"{where}: a confidence gate needs threshold = <number> (e.g. 0.7)")
        return ConfidenceGate(spec.threshold, spec.field)
    if spec.kind == "custom":
        return _custom(spec.callable, where)
    if spec.kind == "answer_length":
        if spec.max_chars is None:
            raise RoutingConfigError(f"{where}: an answer_length gate needs max_chars = <characters>")
        return AnswerLengthGate(spec.max_chars)
    simple: dict[str, Callable[[], Gate]] = {
        "non_empty": lambda: NonEmptyGate(tuple(spec.finish_reasons)),
        "final_number": lambda: FinalNumberGate(spec.marker), "arithmetic": ArithmeticGate,
        "final_agrees": lambda: FinalAgreesGate(spec.marker), "question_numbers": QuestionNumbersGate,
    }
    return simple[spec.kind]()


def _cascade(name: str, spec: CascadeSpec, prices: PriceSource, at: datetime) -> Cascade:
    tiers = []
    for tier in spec.tiers:
        where = f"cascade {name!r} tier {tier.name!r}"
        for model in tier.models:
            try:
                prices.price(prices.resolve(model), at)
            except LookupError as exc:
                raise RoutingConfigError(f"{where}: model {model!r} has no price: {exc}") from None
        gates = tuple(_gate(g, f"{where} gate {g.kind!r}", spec.response_schema) for g in tier.gates)
        tiers.append(Tier(tier.name, tuple(tier.models), tier.attempts_max, gates))
    return Cascade(name, tuple(tiers))


@dataclass(frozen=True, slots=True)
class RoutingConfig:
    """Validated cascades and rules, with the pins they were checked against.

    Attributes:
        router: the rules over the cascades.
        pinning: the agents' pins (None: nobody is pinned).
    """

    router: Router
    pinning: PinningPolicy | None = None

    @property
    def cascades(self) -> Mapping[str, Cascade]:
        """The cascades by name."""
        return self.router.cascades

    def route(self, facts: RouteFacts, *, cascade: str | None = None) -> RouteDecision:
        """Route a request (see :meth:`Router.route`).

        Raises:
            RoutingConfigError: if nothing routes it (no rule matched, no cascade requested, no default),
                or ``cascade`` is unknown.
        """
        decision = self.router.route(facts, cascade=cascade)
        if decision is None:
            raise RoutingConfigError("no routing rule matched, no cascade was requested and [routing] has no "
                                     "default; set [routing] default = \"<cascade>\"")
        return decision

    def run(self, engine: CascadeEngine, request: CascadeRequest, call: Callable[[TierCall], TierReply], *,
            facts: RouteFacts, cascade: str | None = None) -> CascadeResult:
        """Route, then run the chosen cascade through ``engine`` (see :func:`run_cascade`)."""
        decision = self.route(facts, cascade=cascade)
        return run_cascade(engine, self.router.cascades[decision.cascade], request, call,
                           start_tier=decision.start_tier, route_reason=decision.reason, pinning=self.pinning)

    async def run_async(self, engine: CascadeEngine, request: CascadeRequest,
                        call: Callable[[TierCall], Awaitable[TierReply]], *, facts: RouteFacts,
                        cascade: str | None = None) -> CascadeResult:
        """:meth:`run` with an async provider call (the gateway's ``cascade/<name>`` models)."""
        decision = self.route(facts, cascade=cascade)
        return await run_cascade_async(engine, self.router.cascades[decision.cascade], request, call,
                                       start_tier=decision.start_tier, route_reason=decision.reason,
                                       pinning=self.pinning)


def load_routing(cascades: Mapping[str, Any], routing: Mapping[str, Any], *, prices: PriceSource,
                 pinning: PinningPolicy | None = None, at: datetime | None = None,
                 source: str = "policy") -> RoutingConfig:
    """Validate the ``[cascades.*]`` and ``[routing]`` sections of a policy.

    Args:
        cascades: the parsed ``cascades`` table (name -> cascade).
        routing: the parsed ``routing`` table (``default``, ``rules``).
        prices: the price book every tier model must be priced in (aliases apply).
        pinning: the agents' pins, checked against the rules.
        at: when prices must exist (default: now, UTC).
        source: the file name, for messages.

    Raises:
        RoutingConfigError: naming ``source``, the section and what to write instead.
    """
    when = at or datetime.now(UTC)
    try:
        specs = {name: CascadeSpec.model_validate(body) for name, body in cascades.items()}
        rules = RoutingSpec.model_validate(dict(routing))
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise RoutingConfigError(f"{source}: {problems}") from None
    try:
        built = {name: _cascade(name, spec, prices, when) for name, spec in specs.items()}
        router = Router(built, tuple(RoutingRule(
            name=r.name, cascade=r.cascade, tier=r.tier, deep_mode=r.deep_mode, tools=r.tools,
            input_tokens_min=r.input_tokens_min, input_tokens_max=r.input_tokens_max, keywords=tuple(r.keywords),
            agents=tuple(r.agents), roles=tuple(r.roles), daily_output_tokens_min=r.daily_output_tokens_min)
            for r in rules.rules), rules.default)
        if pinning is not None:
            check_pinning(router, pinning, resolve=prices.resolve)
    except RoutingConfigError as exc:
        raise RoutingConfigError(f"{source}: {exc}") from None
    return RoutingConfig(router, pinning)

