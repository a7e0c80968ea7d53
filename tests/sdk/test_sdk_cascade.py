"""The SDK's cascade(...): the policy's cascades through the engine, each tier attempt admitted and settled."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from sdk_kit import MODEL, RATES_MC, sdk_policy

from comptroller.bootstrap import build_engine
from comptroller.domain.codes import Code
from comptroller.domain.routing.errors import RoutingConfigError
from comptroller.domain.usage import Usage
from comptroller.routing import Outcome, TierCall, TierReply
from comptroller.sdk import Comptroller
from comptroller.sdk.errors import RefusedError

CASCADES = {"support": {"tiers": [
    {"name": "cheap", "models": ["cheap-model"], "gates": [{"kind": "json_schema", "schema": {
        "type": "object", "required": ["answer"]}}]},
    {"name": "strong", "models": [MODEL]},
]}}
PRICES = {"cheap-model": {"input_mtok": "100", "output_mtok": "200"}}
MESSAGES = [{"role": "user", "content": "What is 6 x 7? Answer as JSON."}]
USAGE = Usage(input_tokens=20, output_tokens=10)


def _comptroller(tmp_path: Path, **overrides: object) -> Comptroller:
    policy = sdk_policy(cascades=CASCADES, **overrides)
    policy = policy.model_copy(update={"prices": {**policy.prices, **sdk_policy(prices=PRICES).prices}})
    engine = build_engine(db_url=f"sqlite:///{tmp_path / 'ledger.db'}", policy=policy)
    return Comptroller(engine, namespace=policy.namespace, tenant="acme", agent="writer",
                       routing=policy.routing_config(engine.prices))


def provider(calls: list[TierCall]) -> Callable[[TierCall], TierReply]:
    def call(tc: TierCall) -> TierReply:
        calls.append(tc)
        text = "not json" if tc.model == "cheap-model" else json.dumps({"answer": "42"})
        return TierReply(text, USAGE)
    return call


def test_invalid_json_escalates_and_every_attempt_is_settled(tmp_path: Path) -> None:
    """The cheap tier fails the JSON gate, the strong tier answers; both attempts are in the usage log."""
    comptroller = _comptroller(tmp_path)
    calls: list[TierCall] = []
    result = comptroller.cascade(MESSAGES, provider(calls), cascade="support", request_id="r1")
    assert (result.outcome, result.tier) == (Outcome.ANSWERED, "strong")
    assert [c.model for c in calls] == ["cheap-model", MODEL]
    records = list(comptroller.engine.store.usage_records())
    assert [r.idempotency_key for r in records] == ["r1:cheap:1", "r1:strong:1"]
    strong_cost = USAGE.input_tokens * RATES_MC["input"] + USAGE.output_tokens * RATES_MC["output"]
    cheap_cost = USAGE.input_tokens * 10 + USAGE.output_tokens * 20  # $100 / $200 per M tokens
    assert [r.cost_mc for r in records] == [cheap_cost, strong_cost] and result.cost_mc == cheap_cost + strong_cost
    assert all(r.attribution.agent == "writer" and r.attribution.tenant == "acme" for r in records)


def test_a_refused_cascade_raises_the_typed_refusal(tmp_path: Path) -> None:
    """With the tenant's budget too small for the first attempt, the SDK raises its budget refusal."""
    comptroller = _comptroller(tmp_path, budgets=[{"level": "tenant", "tenant": "acme", "limit_mc": 1}])
    with pytest.raises(RefusedError) as caught:
        comptroller.cascade(MESSAGES, provider([]), cascade="support")
    assert caught.value.code is Code.BUDGET_EXCEEDED


def test_without_cascades_the_error_says_what_to_configure(tmp_path: Path) -> None:
    """A Comptroller built without routing refuses cascade() with a clear configuration error."""
    engine = build_engine(db_url=f"sqlite:///{tmp_path / 'ledger.db'}", policy=sdk_policy())
    with pytest.raises(RoutingConfigError, match=r"no \[cascades\]"):
        Comptroller(engine).cascade(MESSAGES, provider([]))
