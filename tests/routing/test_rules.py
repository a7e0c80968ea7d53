"""The rule router: first matching rule wins, with its reason; defaults; pinning checked at start-up."""

from __future__ import annotations

import pytest

from comptroller.domain.defenses.pinning import AgentPin, PinningPolicy
from comptroller.domain.routing import Cascade, RouteFacts, Router, RoutingConfigError, RoutingRule, Tier, check_pinning

SUPPORT = Cascade("support", (Tier("local", ("local-8b",)), Tier("mid", ("mid-70b",)), Tier("frontier", ("gpt-4o",))))
CODE = Cascade("code", (Tier("mid", ("mid-70b",)), Tier("frontier", ("gpt-4o",))))
RULES = (
    RoutingRule("deep mode", "support", tier="frontier", deep_mode=True),
    RoutingRule("long input", "support", tier="mid", input_tokens_min=8_000),
    RoutingRule("tools", "code", tools=True),
    RoutingRule("legal words", "support", tier="frontier", keywords=("contract", "liability")),
    RoutingRule("judges", "support", tier="frontier", roles=("judge",)),
    RoutingRule("bulk local", "support", tier="local", agents=("indexer",), daily_output_tokens_min=5_000_000),
)
ROUTER = Router({"support": SUPPORT, "code": CODE}, RULES, default="support")


@pytest.mark.parametrize(("facts", "cascade", "tier", "rule"), [
    (RouteFacts("a", 100, deep_mode=True), "support", "frontier", "deep mode"),
    (RouteFacts("a", 9_000), "support", "mid", "long input"),
    (RouteFacts("a", 7_999), "support", "local", None),
    (RouteFacts("a", 100, tools=True), "code", "mid", "tools"),
    (RouteFacts("a", 100, text="Review this Contract, please"), "support", "frontier", "legal words"),
    (RouteFacts("a", 100, text="contractor rates"), "support", "local", None),
    (RouteFacts("a", 100, role="judge"), "support", "frontier", "judges"),
    (RouteFacts("indexer", 100, projected_daily_output_tokens=6_000_000), "support", "local", "bulk local"),
    (RouteFacts("indexer", 100, projected_daily_output_tokens=4_000_000), "support", "local", None),
    (RouteFacts("a", 9_000, deep_mode=True), "support", "frontier", "deep mode"),
])
def test_rule_table(facts: RouteFacts, cascade: str, tier: str, rule: str | None) -> None:
    """The first rule whose conditions all hold decides; with none, the default cascade from its first tier."""
    decision = ROUTER.route(facts)
    assert decision is not None
    assert (decision.cascade, decision.tier, decision.rule) == (cascade, tier, rule)
    assert (rule or "no rule matched") in decision.reason


def test_a_requested_cascade_only_considers_its_own_rules() -> None:
    """With cascade/<name> requested, rules for other cascades are skipped."""
    decision = ROUTER.route(RouteFacts("a", 100, deep_mode=True), cascade="code")
    assert decision is not None and (decision.cascade, decision.tier) == ("code", "mid")
    assert "requested cascade 'code'" in decision.reason


def test_no_rule_no_request_no_default_routes_nowhere() -> None:
    """Without a default, an unmatched request gets None (the caller decides)."""
    assert Router({"support": SUPPORT}, (), None).route(RouteFacts("a", 1)) is None


@pytest.mark.parametrize(("build", "message"), [
    (lambda: Router({"support": SUPPORT}, (RoutingRule("r", "nope"),)), "unknown cascade 'nope'"),
    (lambda: Router({"support": SUPPORT}, (RoutingRule("r", "support", tier="gold"),)), "no tier 'gold'"),
    (lambda: Router({"support": SUPPORT}, (), default="nope"), "default cascade 'nope'"),
    (lambda: RoutingRule("r", "support", input_tokens_min=10, input_tokens_max=5), "input_tokens_min 10 > "),
    (lambda: Cascade("empty", ()), "has no tiers"),
    (lambda: Tier("t", ()), "needs at least one model"),
    (lambda: Tier("t", ("m",), attempts_max=0), "attempts_max must be in 1..5"),
    (lambda: Cascade("dup", (Tier("t", ("a",)), Tier("t", ("b",)))), "repeats a tier name"),
])
def test_configuration_mistakes_are_errors(build: object, message: str) -> None:
    """Each mistake raises RoutingConfigError naming it."""
    with pytest.raises(RoutingConfigError, match=message):
        build()  # type: ignore[operator]


def test_pinning_check_refuses_a_rule_that_routes_a_pinned_agent_outside_its_models() -> None:
    """A rule sending a local-only agent to the frontier tier fails at start-up; a reachable route passes."""
    pins = PinningPolicy(pins={"intern": AgentPin(models=("local-8b",))})
    bad = Router({"support": SUPPORT}, (RoutingRule("deep", "support", tier="frontier", agents=("intern",)),))
    with pytest.raises(RoutingConfigError, match="agent 'intern' to cascade 'support'"):
        check_pinning(bad, pins)
    check_pinning(Router({"support": SUPPORT}, (RoutingRule("any", "support", agents=("intern",)),)), pins)


def test_pinning_check_covers_the_default_cascade() -> None:
    """A pinned agent whose models appear nowhere in the default cascade is an error."""
    pins = PinningPolicy(pins={"writer": AgentPin(models=("claude-haiku",))})
    with pytest.raises(RoutingConfigError, match="the default cascade"):
        check_pinning(Router({"code": CODE}, (), default="code"), pins)
