"""Loading [cascades.*] and [routing] from TOML: a working configuration, and every start-up error."""

from __future__ import annotations

import tomllib
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from comptroller.clock import VirtualClock
from comptroller.domain.caps import OutputCaps
from comptroller.domain.defenses.pinning import AgentPin, PinningPolicy
from comptroller.domain.pricing import ModelPrice
from comptroller.domain.routing import ConfidenceGate, CustomGate, JsonSchemaGate, RouteFacts, RoutingConfigError
from comptroller.domain.scopes import Attribution
from comptroller.domain.usage import Usage
from comptroller.engine import Engine
from comptroller.prices import PriceBook
from comptroller.routing import CascadeRequest, Outcome, TierCall, TierReply, load_routing
from comptroller.storage.memory import MemoryStore

AT = datetime(2025, 6, 1, tzinfo=UTC)
BOOK = PriceBook(overrides={"llama-local": ModelPrice(model="llama-local", input_mtok=Decimal(0),
                                                      output_mtok=Decimal(0), source="test")},
                 aliases={"fast": "gpt-4o-mini"})
POLICY = """
[cascades.support]
response_schema = { type = "object", required = ["answer", "confidence"] }

[[cascades.support.tiers]]
name = "local"
models = ["llama-local"]
attempts_max = 2
gates = [
  { kind = "non_empty" },
  { kind = "json_schema" },
  { kind = "confidence", field = "confidence", threshold = 0.7 },
  { kind = "custom", callable = "builtins:bool" },
]

[[cascades.support.tiers]]
name = "mid"
models = ["fast"]
gates = [{ kind = "final_number" }, { kind = "answer_length", max_chars = 400 }]

[[cascades.support.tiers]]
name = "frontier"
models = ["gpt-4o"]

[routing]
default = "support"

[[routing.rules]]
name = "deep mode"
deep_mode = true
cascade = "support"
tier = "frontier"
"""


def _load(text: str, pinning: PinningPolicy | None = None) -> Any:
    data = tomllib.loads(text)
    return load_routing(data.get("cascades", {}), data.get("routing", {}), prices=BOOK, pinning=pinning, at=AT,
                        source="policy.toml")


def test_a_full_configuration_loads_into_cascades_gates_and_rules() -> None:
    """Tiers, attempts, every gate kind and the rule come out as configured; the cascade schema reaches the gate."""
    config = _load(POLICY)
    (cascade,) = config.cascades.values()
    local = cascade.tiers[0]
    assert [t.name for t in cascade.tiers] == ["local", "mid", "frontier"] and local.attempts_max == 2
    assert [g.name for g in local.gates] == ["non_empty", "json_schema", "confidence", "builtins:bool"]
    schema_gate, confidence, custom = local.gates[1], local.gates[2], local.gates[3]
    assert isinstance(schema_gate, JsonSchemaGate) and schema_gate.schema == {"type": "object",
                                                                              "required": ["answer", "confidence"]}
    assert isinstance(confidence, ConfidenceGate) and confidence.threshold == 0.7
    assert isinstance(custom, CustomGate) and custom.func is bool
    decision = config.route(RouteFacts("a", 10, deep_mode=True))
    assert (decision.cascade, decision.tier) == ("support", "frontier")


def test_the_loaded_configuration_runs_through_the_engine() -> None:
    """config.run routes and runs: deep mode starts at the frontier tier, one settled attempt."""
    store = MemoryStore()
    engine = Engine(store=store, prices=BOOK, clock=VirtualClock(AT), caps=OutputCaps(default_tokens=100))
    calls: list[TierCall] = []

    def call(tier_call: TierCall) -> TierReply:
        calls.append(tier_call)
        return TierReply("deep answer", Usage(20, 10))
    result = _load(POLICY).run(engine, CascadeRequest(Attribution(agent="a"), 50), call,
                               facts=RouteFacts("a", 50, deep_mode=True))
    assert (result.outcome, result.tier, [c.model for c in calls]) == (Outcome.ANSWERED, "frontier", ["gpt-4o"])
    assert "rule 'deep mode'" in result.route_reason
    assert len(list(store.usage_records())) == 1


@pytest.mark.parametrize(("text", "message"), [
    ("[cascades.empty]\ntiers = []", "cascade 'empty' has no tiers"),
    ("[[cascades.c.tiers]]\nname = \"t\"\nmodels = [\"gpt-4o\"]\n"
     "gates = [{ kind = \"json_schema\", schema = { type = \"objct\" } }]", "does not compile"),
    ("[[cascades.c.tiers]]\nname = \"t\"\nmodels = [\"my-unpriced-model\"]", "model 'my-unpriced-model' has no price"),
    ("[[cascades.c.tiers]]\nname = \"t\"\nmodels = [\"gpt-4o\"]\n"
     "gates = [{ kind = \"custom\", callable = \"no_such_module_x:check\" }]", "cannot import custom gate"),
    ("[[cascades.c.tiers]]\nname = \"t\"\nmodels = [\"gpt-4o\"]\ngates = [{ kind = \"custom\" }]",
     "callable = \"package.module:function\""),
    ("[[cascades.c.tiers]]\nname = \"t\"\nmodels = [\"gpt-4o\"]\ngates = [{ kind = \"confidence\" }]",
     "needs threshold"),
    ("[[cascades.c.tiers]]\nname = \"t\"\nmodels = [\"gpt-4o\"]\ngates = [{ kind = \"telepathy\" }]", "kind"),
    ("[[cascades.c.tiers]]\nname = \"t\"\nmodels = [\"gpt-4o\"]\n[routing]\ndefault = \"other\"",
     "default cascade 'other'"),
    ("[[cascades.c.tiers]]\nname = \"t\"\nmodels = [\"gpt-4o\"]\nspeed = 3", "speed"),
])
def test_configuration_errors_at_start_up(text: str, message: str) -> None:
    """Each mistake is a RoutingConfigError naming the file and the problem, before any call."""
    with pytest.raises(RoutingConfigError, match=r"policy\.toml") as caught:
        _load(text)
    assert message in str(caught.value)


def test_a_pinned_agent_routed_outside_its_models_is_a_start_up_error() -> None:
    """A rule sending a local-only agent to the frontier tier is refused when the configuration loads."""
    rule = ("\n[[routing.rules]]\nname = \"interns deep\"\nagents = [\"intern\"]\ncascade = \"support\"\n"
            "tier = \"frontier\"")
    pins = PinningPolicy(pins={"intern": AgentPin(models=("llama-local",))})
    with pytest.raises(RoutingConfigError, match="rule 'interns deep' routes agent 'intern'"):
        _load(POLICY + rule, pinning=pins)
    assert _load(POLICY, pinning=pins).pinning is pins


def test_pinning_resolves_aliases_of_tier_models() -> None:
    """A pin naming the resolved id allows a tier that names the alias."""
    pins = PinningPolicy(pins={"writer": AgentPin(models=("gpt-4o-mini",))})
    text = ("[cascades.c]\n[[cascades.c.tiers]]\nname = \"t\"\nmodels = [\"fast\"]\n"
            "[[routing.rules]]\nname = \"w\"\nagents = [\"writer\"]\ncascade = \"c\"")
    assert _load(text, pinning=pins).router.rules[0].agents == ("writer",)
