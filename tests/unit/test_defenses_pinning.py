"""Layer 4: model pinning and fallbacks that never silently move to a pricier model."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from comptroller.domain.codes import Code
from comptroller.domain.defenses.errors import DefenseConfigError
from comptroller.domain.defenses.pinning import (
    AgentPin,
    FallbackRule,
    PinningPolicy,
    Route,
    RouteReason,
    cheaper_models,
    route_fallback,
    route_request,
)
from comptroller.domain.defenses.verdict import Rule, Verdict
from comptroller.domain.scopes import Level

TIERS = {"llama-8b": "local", "gemini-flash": "mid", "deepseek": "mid", "gpt-5": "frontier", "opus": "frontier"}
CEILINGS = {"llama-8b": 0, "gemini-flash": 40, "deepseek": 60, "gpt-5": 900, "opus": 1_500}
SCOPE = "acme|t|coder"
POLICY = PinningPolicy(
    pins={
        "coder": AgentPin(models=("gpt-5", "opus"), tiers=("mid",),
                          fallbacks=(FallbackRule("gpt-5", "opus", pricier_ok=False),
                                     FallbackRule("gpt-5", "deepseek"))),
        "critic": AgentPin(tiers=("mid", "local")),
        "judge": AgentPin(models=("gpt-5", "opus"), fallbacks=(FallbackRule("*", "opus", pricier_ok=True),)),
    },
    model_tiers=TIERS,
)


@pytest.mark.parametrize(("agent", "model", "reason"), [
    ("coder", "gpt-5", RouteReason.ALLOWED),
    ("coder", "deepseek", RouteReason.ALLOWED),  # by tier
    ("coder", "opus", RouteReason.ALLOWED),
    ("coder", "llama-8b", None),
    ("critic", "gpt-5", None),
    ("critic", "llama-8b", RouteReason.ALLOWED),
    ("intern", "opus", RouteReason.UNPINNED),  # no pin, no default
])
def test_requests_for_unpinned_models_are_refused(agent: str, model: str, reason: RouteReason | None) -> None:
    """A model outside the agent's models and tiers is refused; an allowed one routes with its reason."""
    result = route_request(POLICY, agent=agent, scope=SCOPE, model=model)
    if reason is None:
        assert isinstance(result, Verdict)
        assert (result.code, result.rule, result.detector, result.level) == (
            Code.MODEL_NOT_ALLOWED, Rule.PINNING, "not_pinned", Level.AGENT)
        assert model in result.message
    else:
        assert isinstance(result, Route) and (result.model, result.reason) == (model, reason)
        assert result.detail  # every routed call records why


def test_a_default_pin_covers_agents_without_one() -> None:
    """With a default pin, an agent without its own is restricted by it."""
    policy = PinningPolicy(default=AgentPin(models=("llama-8b",)), model_tiers=TIERS)
    assert isinstance(route_request(policy, agent="intern", scope=SCOPE, model="opus"), Verdict)


def test_fallback_skips_a_pricier_target_and_takes_a_cheaper_one() -> None:
    """When gpt-5 fails, the coder skips opus (pricier, not allowed) and falls back to deepseek."""
    route = route_request(POLICY, agent="coder", scope=SCOPE, model="gpt-5")
    assert isinstance(route, Route)
    fallback = route_fallback(POLICY, route, agent="coder", scope=SCOPE, ceilings_mc=CEILINGS)
    assert isinstance(fallback, Route)
    assert (fallback.model, fallback.requested_model, fallback.reason) == ("deepseek", "gpt-5", RouteReason.FALLBACK)
    assert CEILINGS[fallback.model] <= CEILINGS["gpt-5"]
    assert "not pricier" in fallback.detail


def test_a_pricier_fallback_needs_an_explicit_rule() -> None:
    """The judge's rule says pricier_ok, so gpt-5 may fall back to opus, and the route says so."""
    route = Route("gpt-5", "gpt-5", RouteReason.ALLOWED, "")
    fallback = route_fallback(POLICY, route, agent="judge", scope=SCOPE, ceilings_mc=CEILINGS)
    assert isinstance(fallback, Route) and fallback.model == "opus"
    assert "allowed explicitly" in fallback.detail


def test_only_pricier_candidates_refuse_with_fallback_pricier() -> None:
    """When every candidate costs more and no rule allows it, the fallback is refused."""
    policy = PinningPolicy(pins={"coder": AgentPin(models=("gpt-5", "opus"),
                                                   fallbacks=(FallbackRule("gpt-5", "opus"),))})
    route = Route("gpt-5", "gpt-5", RouteReason.ALLOWED, "")
    verdict = route_fallback(policy, route, agent="coder", scope=SCOPE, ceilings_mc=CEILINGS)
    assert isinstance(verdict, Verdict) and verdict.detector == "fallback_pricier"
    assert verdict.evidence["pricier_candidates"] == "opus"


def test_no_configured_fallback_refuses_with_no_fallback() -> None:
    """An agent without fallback rules gets no silent substitute."""
    route = Route("gemini-flash", "gemini-flash", RouteReason.ALLOWED, "")
    verdict = route_fallback(POLICY, route, agent="critic", scope=SCOPE, ceilings_mc=CEILINGS)
    assert isinstance(verdict, Verdict) and verdict.detector == "no_fallback"


def test_cheaper_models_are_allowed_ones_priciest_first() -> None:
    """The downgrade candidates are the agent's allowed models cheaper than the current one, one step down first."""
    expected = sorted((m for m in CEILINGS if CEILINGS[m] < CEILINGS["gpt-5"] and TIERS[m] == "mid"),
                      key=lambda m: -CEILINGS[m])
    assert cheaper_models(POLICY, agent="coder", model="gpt-5", ceilings_mc=CEILINGS) == expected
    with pytest.raises(ValueError, match="no ceiling"):
        cheaper_models(POLICY, agent="coder", model="unknown", ceilings_mc=CEILINGS)


@pytest.mark.parametrize(("make", "words"), [
    (AgentPin, "at least one allowed model or tier"),
    (lambda: PinningPolicy(pins={"a": AgentPin(tiers=("ultra",))}, model_tiers=TIERS), "tier 'ultra'"),
    (lambda: PinningPolicy(pins={"a": AgentPin(models=("gpt-5",), fallbacks=(FallbackRule("*", "opus"),))}),
     "does not allow"),
    (lambda: FallbackRule("", "opus"), "source"),
])
def test_invalid_pins_are_clear_errors(make: object, words: str) -> None:
    """An empty pin, an unknown tier or a fallback to a model the pin forbids raises a naming error."""
    with pytest.raises(DefenseConfigError, match=words):
        make()  # type: ignore[operator]


@settings(max_examples=200, deadline=None)
@given(asks=st.lists(st.tuples(st.sampled_from(("coder", "critic", "judge", "stranger")),
                               st.sampled_from((*TIERS, "unknown-model"))), min_size=1, max_size=30),
       default=st.booleans())
def test_a_remembered_route_is_the_route_a_fresh_policy_gives(asks: list[tuple[str, str]], default: bool) -> None:
    """route_request remembers a policy's routes per (agent, model): every answer, in any order of asks, equals
    the answer of a policy that has seen nothing (refusals are not remembered and stay refusals)."""
    def policy() -> PinningPolicy:
        return PinningPolicy(pins=POLICY.pins, model_tiers=TIERS,
                             default=AgentPin(tiers=("local",)) if default else None)

    remembering = policy()
    for agent, model in asks:
        assert route_request(remembering, agent=agent, scope=SCOPE, model=model) == route_request(
            policy(), agent=agent, scope=SCOPE, model=model)
