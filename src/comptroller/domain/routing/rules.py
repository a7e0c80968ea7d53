"""The rule router: facts of a request -> a cascade and the tier it starts at, with the reason.

Rules are tried in order; the first whose every given condition holds picks the cascade
and, optionally, the tier to start from (``deep_mode`` -> the frontier tier; a short
prompt without tools -> the local tier). With no match, the requested cascade (the
gateway's ``cascade/<name>``, the SDK's ``cascade(name=...)``) or the router's default
is used from its first tier. Every decision carries a reason string that the call
records.

Pinning always wins (DESIGN.md rule 6, layer 4): the route only chooses among tiers;
:func:`comptroller.domain.routing.cascade.plan` drops the models an agent's pin forbids,
and :func:`check_pinning` refuses at start-up a rule that sends a pinned agent to a
cascade where it may use no model.

A rule may also require a projected daily output volume (``daily_output_tokens_min``),
e.g. the local-vs-API break-even of :mod:`comptroller.domain.routing.tco`, so a tier's
traffic goes to a local provider only where the node pays for itself.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from comptroller.domain.defenses.pinning import PinningPolicy
from comptroller.domain.routing.cascade import Cascade
from comptroller.domain.routing.errors import RoutingConfigError

__all__ = ["RouteDecision", "RouteFacts", "Router", "RoutingRule", "check_pinning"]


@dataclass(frozen=True, slots=True)
class RouteFacts:
    """What the router may look at.

    Attributes:
        agent: the calling agent.
        input_tokens: the request's input size, tokens (an upper bound is fine).
        deep_mode: the explicit deep-mode flag (SDK argument or the gateway's header).
        tools: True if the request carries tool definitions.
        text: the request's last user message (for keyword rules).
        role: the agent's role, if the caller gives one (``judge``, ``critic``...).
        projected_daily_output_tokens: the traffic forecast for this route, tokens/day, if known.
    """

    agent: str
    input_tokens: int
    deep_mode: bool = False
    tools: bool = False
    text: str = ""
    role: str | None = None
    projected_daily_output_tokens: int | None = None


@dataclass(frozen=True, slots=True)
class RoutingRule:
    """If every given condition holds, route to ``cascade`` starting at ``tier``.

    Attributes:
        name: the rule's label in reasons.
        cascade: the target cascade's name.
        tier: the tier to start at (None: the first).
        deep_mode, tools: required flag values (None: either).
        input_tokens_min, input_tokens_max: inclusive bounds on the input size, tokens.
        keywords: any of these words in the text (case-insensitive, whole words).
        agents, roles: the request's agent or role is one of these (empty: any).
        daily_output_tokens_min: the projected daily output volume is at least this, tokens/day.

    Raises:
        RoutingConfigError: on an empty name or cascade, or min > max.
    """

    name: str
    cascade: str
    tier: str | None = None
    deep_mode: bool | None = None
    tools: bool | None = None
    input_tokens_min: int | None = None
    input_tokens_max: int | None = None
    keywords: tuple[str, ...] = ()
    agents: tuple[str, ...] = ()
    roles: tuple[str, ...] = ()
    daily_output_tokens_min: int | None = None

    def __post_init__(self) -> None:
        for name in ("keywords", "agents", "roles"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if not self.name.strip() or not self.cascade.strip():
            raise RoutingConfigError(f"routing rule {self.name!r} needs a name and a cascade")
        low, high = self.input_tokens_min, self.input_tokens_max
        if low is not None and high is not None and low > high:
            raise RoutingConfigError(f"routing rule {self.name!r}: input_tokens_min {low} > input_tokens_max {high}")

    def explain(self, facts: RouteFacts) -> str | None:
        """Why the rule matches ``facts`` (the conditions that held), or None if one fails."""
        held: list[str] = []
        checks: list[tuple[bool, str]] = []
        if self.deep_mode is not None:
            checks.append((facts.deep_mode == self.deep_mode, f"deep_mode={self.deep_mode}"))
        if self.tools is not None:
            checks.append((facts.tools == self.tools, f"tools={self.tools}"))
        if self.input_tokens_min is not None:
            checks.append((facts.input_tokens >= self.input_tokens_min, f"input >= {self.input_tokens_min} tokens"))
        if self.input_tokens_max is not None:
            checks.append((facts.input_tokens <= self.input_tokens_max, f"input <= {self.input_tokens_max} tokens"))
        if self.keywords:
            hit = next((k for k in self.keywords
                        if re.search(r"\b" + re.escape(k) + r"\b", facts.text, re.IGNORECASE)), None)
            checks.append((hit is not None, f"keyword {hit!r}"))
        if self.agents:
            checks.append((facts.agent in self.agents, f"agent {facts.agent!r}"))
        if self.roles:
            checks.append((facts.role in self.roles, f"role {facts.role!r}"))
        if self.daily_output_tokens_min is not None:
            volume = facts.projected_daily_output_tokens
            checks.append((volume is not None and volume >= self.daily_output_tokens_min,
                           f"projected {volume} output tokens/day >= {self.daily_output_tokens_min}"))
        for ok, what in checks:
            if not ok:
                return None
            held.append(what)
        return ", ".join(held) or "always"


@dataclass(frozen=True, slots=True)
class RouteDecision:
    """Where a request goes: ``cascade`` from tier ``start_tier`` (named ``tier``), and why."""

    cascade: str
    start_tier: int
    tier: str
    reason: str
    rule: str | None = None


@dataclass(frozen=True, slots=True)
class Router:
    """Rules over named cascades.

    Raises:
        RoutingConfigError: when a rule or the default names an unknown cascade or tier.
    """

    cascades: Mapping[str, Cascade]
    rules: tuple[RoutingRule, ...] = ()
    default: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "rules", tuple(self.rules))
        known = sorted(self.cascades)
        for rule in self.rules:
            if rule.cascade not in self.cascades:
                raise RoutingConfigError(f"routing rule {rule.name!r} routes to unknown cascade {rule.cascade!r} "
                                         f"(defined: {known}); define [cascades.{rule.cascade}]")
            if rule.tier is not None:
                self.cascades[rule.cascade].tier_index(rule.tier)
        if self.default is not None and self.default not in self.cascades:
            raise RoutingConfigError(f"the default cascade {self.default!r} is not defined (defined: {known})")

    def route(self, facts: RouteFacts, *, cascade: str | None = None) -> RouteDecision | None:
        """The first matching rule's route (among rules for ``cascade`` if one is requested).

        Returns:
            The decision; with no match, ``cascade`` (or the default) from its first tier;
            None when no rule matches and there is neither.

        Raises:
            RoutingConfigError: if ``cascade`` is not defined.
        """
        if cascade is not None and cascade not in self.cascades:
            raise RoutingConfigError(f"unknown cascade {cascade!r} (defined: {sorted(self.cascades)})")
        for rule in self.rules:
            if cascade is not None and rule.cascade != cascade:
                continue
            why = rule.explain(facts)
            if why is None:
                continue
            target = self.cascades[rule.cascade]
            start = 0 if rule.tier is None else target.tier_index(rule.tier)
            return RouteDecision(rule.cascade, start, target.tiers[start].name,
                                 f"rule {rule.name!r} ({why}) -> cascade {rule.cascade!r} from tier "
                                 f"{target.tiers[start].name!r}", rule.name)
        chosen = cascade or self.default
        if chosen is None:
            return None
        how = "requested" if cascade is not None else "default"
        return RouteDecision(chosen, 0, self.cascades[chosen].tiers[0].name,
                             f"no rule matched; {how} cascade {chosen!r} from its first tier")


def check_pinning(router: Router, pinning: PinningPolicy, *, resolve: Callable[[str], str] = str) -> None:
    """Refuse, at start-up, a route that sends a pinned agent where it may use no model.

    Checks every rule naming agents, and the default cascade for every pinned agent.
    ``resolve`` maps a tier's model label to the resolved id pins name (the price book's
    alias resolution; default: labels are ids).

    Raises:
        RoutingConfigError: naming the agent, its allowed models and the route.
    """
    routes: list[tuple[str, str, int, str]] = []
    for rule in router.rules:
        start = 0 if rule.tier is None else router.cascades[rule.cascade].tier_index(rule.tier)
        routes += [(agent, rule.cascade, start, f"rule {rule.name!r}") for agent in rule.agents]
    if router.default is not None:
        routes += [(agent, router.default, 0, "the default cascade") for agent in pinning.pins]
    for agent, name, start, what in routes:
        pin = pinning.pin_for(agent)
        models = [m for t in router.cascades[name].tiers[start:] for m in t.models]
        if pin is not None and not any(pinning.allows(agent, resolve(m)) for m in models):
            raise RoutingConfigError(
                f"{what} routes agent {agent!r} to cascade {name!r} (models {models}), but the agent is pinned to "
                f"models {list(pin.models)} and tiers {list(pin.tiers)}; add an allowed model to a tier, or route "
                "the agent elsewhere")
