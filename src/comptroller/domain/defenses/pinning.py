"""Layer 4: model pinning; an agent only uses its allowed models, and no fallback drifts to a pricier one.

Source: "Multi-Agent Mesh Economics" (layer 4: strict model pinning to prevent
fallbacks from silently drifting into expensive frontier models).

* An :class:`AgentPin` lists an agent's allowed models and/or tiers (a tier is a
  label from ``PinningPolicy.model_tiers``, e.g. ``local``, ``mid``, ``frontier``).
  A request for any other model is refused with ``model_not_allowed``
  (:func:`route_request`). An agent without a pin, and no default pin, is
  unrestricted (the route says so).
* When the routed model fails upstream, :func:`route_fallback` walks the pin's
  :class:`FallbackRule` list in order and takes the first allowed target whose
  ceiling for *this* request is not higher than the failed model's, unless that rule
  says ``pricier_ok`` explicitly. "Pricier" is measured on the request's ceilings,
  millicents (``pricing.ceiling_mc`` of the same token bounds on each model), which
  the engine passes in.
* :func:`cheaper_models` lists the agent's allowed models cheaper than the current
  one, for pacing's downgrade (:mod:`.pacing`).

Every routed call carries a :class:`Route` that records why it went where it went.
Model names are resolved ids (aliases are resolved before pinning, and in the
configuration).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from comptroller.domain.codes import Code
from comptroller.domain.defenses._checks import require_text
from comptroller.domain.defenses.errors import DefenseConfigError
from comptroller.domain.defenses.verdict import Rule, Verdict
from comptroller.domain.money import format_usd
from comptroller.domain.scopes import Level

__all__ = [
    "ANY_MODEL",
    "AgentPin",
    "FallbackRule",
    "PinningPolicy",
    "Route",
    "RouteReason",
    "cheaper_models",
    "route_fallback",
    "route_request",
]

ANY_MODEL = "*"


class RouteReason(StrEnum):
    """Why a call went to its model."""

    UNPINNED = "unpinned"
    ALLOWED = "allowed"
    FALLBACK = "fallback"
    PACING_DOWNGRADE = "pacing_downgrade"


@dataclass(frozen=True, slots=True)
class Route:
    """Where a call goes and why; recorded with the call.

    Attributes:
        model: the model the call goes to.
        requested_model: the model the caller asked for.
        reason: why ``model``.
        detail: one sentence for people (the rule, the prices compared).
    """

    model: str
    requested_model: str
    reason: RouteReason
    detail: str


@dataclass(frozen=True, slots=True)
class FallbackRule:
    """When ``source`` fails, try ``target``.

    Attributes:
        source: the failed model, or ``*`` for any.
        target: the model to try instead (must be allowed by the pin).
        pricier_ok: True only if this fallback may cost more than the failed model.
    """

    source: str
    target: str
    pricier_ok: bool = False

    def __post_init__(self) -> None:
        require_text("fallback", "source", self.source)
        require_text("fallback", "target", self.target)


@dataclass(frozen=True, slots=True)
class AgentPin:
    """The models one agent may use.

    Attributes:
        models: allowed model ids.
        tiers: allowed tiers (every model of the tier is allowed).
        fallbacks: fallback rules, tried in order.

    Raises:
        DefenseConfigError: if neither models nor tiers are given, or a name is empty.
    """

    models: tuple[str, ...] = ()
    tiers: tuple[str, ...] = ()
    fallbacks: tuple[FallbackRule, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "models", tuple(self.models))
        object.__setattr__(self, "tiers", tuple(self.tiers))
        object.__setattr__(self, "fallbacks", tuple(self.fallbacks))
        if not self.models and not self.tiers:
            raise DefenseConfigError(
                "a model pin needs at least one allowed model or tier; list them in models or tiers, "
                "or remove the pin to leave the agent unrestricted")
        for name in (*self.models, *self.tiers):
            require_text("pin", "model or tier", name)


_ROUTES_MAX = 8_192  # (agent, model) routes a policy remembers; beyond it the memo starts over


@dataclass(frozen=True, slots=True)
class PinningPolicy:
    """The pins of every agent.

    Attributes:
        pins: agent name -> its pin.
        default: the pin of agents without one (None: they are unrestricted).
        model_tiers: model id -> tier label.

    Raises:
        DefenseConfigError: if a pin names a tier no model belongs to, or a fallback
            target its own pin does not allow.
    """

    pins: Mapping[str, AgentPin] = field(default_factory=dict)
    default: AgentPin | None = None
    model_tiers: Mapping[str, str] = field(default_factory=dict)
    _routes: dict[tuple[str, str], Route] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        known_tiers = set(self.model_tiers.values())
        named = [*self.pins.items(), *([("(default)", self.default)] if self.default else [])]
        for agent, pin in named:
            for tier in pin.tiers:
                if tier not in known_tiers:
                    raise DefenseConfigError(
                        f"pin of agent {agent!r} allows tier {tier!r}, but no model has that tier "
                        f"(known: {', '.join(sorted(known_tiers)) or 'none'}); add it to model_tiers")
            for rule in pin.fallbacks:
                if not self._pin_allows(pin, rule.target):
                    raise DefenseConfigError(
                        f"pin of agent {agent!r} falls back to {rule.target!r}, which it does not allow "
                        f"(models {list(pin.models)}, tiers {list(pin.tiers)}); allow it or drop the rule")

    def pin_for(self, agent: str) -> AgentPin | None:
        """The agent's pin, else the default pin, else None (unrestricted)."""
        return self.pins.get(agent, self.default)

    def allows(self, agent: str, model: str) -> bool:
        """True if the agent may use ``model``."""
        pin = self.pin_for(agent)
        return pin is None or self._pin_allows(pin, model)

    def _pin_allows(self, pin: AgentPin, model: str) -> bool:
        return model in pin.models or self.model_tiers.get(model) in pin.tiers


def route_request(policy: PinningPolicy, *, agent: str, scope: str, model: str) -> Route | Verdict:
    """Route a request to the model it asks for, or refuse it (``model_not_allowed``, detector ``not_pinned``).

    Args:
        policy: the pins.
        agent: the calling agent.
        scope: the agent's scope key (for the verdict).
        model: the resolved model id requested.
    """
    routes = policy._routes  # this module's memo of the policy's answers
    route = routes.get((agent, model))
    if route is not None:
        return route  # a policy never changes, and a Route neither
    pin = policy.pin_for(agent)
    if pin is None or policy.allows(agent, model):
        if pin is None:
            route = Route(model, model, RouteReason.UNPINNED,
                          f"agent {agent!r} has no model pin; any model may be used")
        else:
            how = "by model" if model in pin.models else f"by tier {policy.model_tiers.get(model)!r}"
            route = Route(model, model, RouteReason.ALLOWED, f"{model!r} is allowed for agent {agent!r} {how}")
        if len(routes) >= _ROUTES_MAX:
            routes.clear()
        routes[(agent, model)] = route
        return route
    tier = policy.model_tiers.get(model)
    return Verdict(
        code=Code.MODEL_NOT_ALLOWED, rule=Rule.PINNING, detector="not_pinned", level=Level.AGENT, scope=scope,
        evidence={"agent": agent, "model": model, "model_tier": tier, "allowed_models": ",".join(pin.models),
                  "allowed_tiers": ",".join(pin.tiers)},
        message=(
            f"model_not_allowed: agent {agent!r} may use models {list(pin.models)} and tiers "
            f"{list(pin.tiers)}; it asked for {model!r} (tier {tier!r}). Ask for an allowed model, or add "
            "this one to the agent's pin."
        ),
    )


def route_fallback(policy: PinningPolicy, route: Route, *, agent: str, scope: str,
                   ceilings_mc: Mapping[str, int]) -> Route | Verdict:
    """Choose the fallback for a routed model that failed upstream, never a pricier one unless allowed.

    Args:
        policy: the pins.
        route: the route whose model failed.
        agent: the calling agent.
        scope: the agent's scope key (for the verdict).
        ceilings_mc: this request's ceiling on the failed model and on every
            fallback target, millicents.

    Returns:
        The fallback :class:`Route`, or a ``model_not_allowed`` verdict: detector
        ``fallback_pricier`` if every candidate costs more without ``pricier_ok``,
        ``no_fallback`` if there is no candidate.

    Raises:
        ValueError: if a ceiling the choice needs is missing.
    """
    failed = route.model
    pin = policy.pin_for(agent)
    rules = [] if pin is None else [r for r in pin.fallbacks
                                    if r.source in (failed, ANY_MODEL) and r.target != failed]
    pricier: list[str] = []
    for rule in rules:
        was, now = _ceiling(ceilings_mc, failed), _ceiling(ceilings_mc, rule.target)
        if now > was and not rule.pricier_ok:
            pricier.append(rule.target)
            continue
        why = "pricier, allowed explicitly by the rule" if now > was else "not pricier"
        return Route(rule.target, route.requested_model, RouteReason.FALLBACK,
                     f"{failed!r} failed; fell back to {rule.target!r} ({why}: ceiling {format_usd(now)} "
                     f"vs {format_usd(was)})")
    detector = "fallback_pricier" if pricier else "no_fallback"
    why = (f"candidates {pricier} cost more and their rules do not say pricier_ok" if pricier
           else "none is configured")
    return Verdict(
        code=Code.MODEL_NOT_ALLOWED, rule=Rule.PINNING, detector=detector, level=Level.AGENT, scope=scope,
        evidence={"agent": agent, "failed_model": failed, "pricier_candidates": ",".join(pricier)},
        message=(
            f"model_not_allowed: {failed!r} failed for agent {agent!r} and no fallback may replace it "
            f"({why}); retry later, or add a fallback rule (with pricier_ok to accept a higher cost)."
        ),
    )


def cheaper_models(policy: PinningPolicy, *, agent: str, model: str,
                   ceilings_mc: Mapping[str, int]) -> list[str]:
    """The agent's allowed models strictly cheaper than ``model`` for this request, priciest first.

    Priciest first means one step down: the smallest cut in quality that lowers the
    cost. Ties are broken by name, so the order is deterministic.

    Args:
        policy: the pins.
        agent: the calling agent.
        model: the current model (its ceiling must be in ``ceilings_mc``).
        ceilings_mc: this request's ceiling on each candidate model, millicents.

    Raises:
        ValueError: if ``model`` has no ceiling.
    """
    current = _ceiling(ceilings_mc, model)
    cheaper = [m for m, c in ceilings_mc.items() if c < current and policy.allows(agent, m)]
    return sorted(cheaper, key=lambda m: (-ceilings_mc[m], m))


def _ceiling(ceilings_mc: Mapping[str, int], model: str) -> int:
    if model not in ceilings_mc:
        raise ValueError(f"no ceiling for model {model!r}: price the request on every candidate model first")
    return ceilings_mc[model]

