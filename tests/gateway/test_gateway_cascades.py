"""``cascade/<name>`` models through the gateway, driven by the official openai client over real HTTP.

The stub upstream answers each tier model with a canned reply (``StubControl.replies``), so
the tier gates see exactly the text a test chose; every attempt's money is read back from
the SQLite ledger.
"""

from __future__ import annotations

import json
import threading
from typing import Any

import httpx
import openai
import pytest
from gateway_kit import MODEL, OUTPUT_CAP, GatewayFactory, Harness, stub_policy, wait_for
from stub_upstream import prompt_tokens

from comptroller.bootstrap import build_engine
from comptroller.config import ConfigError
from comptroller.gateway.app import create_app
from comptroller.gateway.config import GatewayConfig, ProviderConfig
from comptroller.storage.keys import MemoryKeyStore

CHEAP, STRONG = "tier1-model", "tier2-model"
CHEAP_IN, CHEAP_OUT = 10, 20        # mc per token: input_mtok "100", output_mtok "200" USD
STRONG_IN, STRONG_OUT = 100, 200    # input_mtok "1000", output_mtok "2000" USD
SCHEMA = {"type": "object", "required": ["answer"], "properties": {"answer": {"type": "string"}}}
RESPONSE_FORMAT: Any = {"type": "json_schema", "json_schema": {"name": "answer", "schema": SCHEMA}}
MESSAGES: Any = [{"role": "system", "content": "Answer in JSON."},
                 {"role": "user", "content": "What is six times seven?"}]
VALID, INVALID = '{"answer": "42"}', "Sure! It is 42, I think."
MODELS = {MODEL: "stub", "other-model": "stub", CHEAP: "stub", STRONG: "stub"}


def cascade_policy(**overrides: Any) -> Any:
    """The test policy with a two-tier cascade ``support`` (cheap, strong), each tier gated by the JSON schema."""
    prices = {MODEL: {"input_mtok": "1000", "output_mtok": "2000"},
              "other-model": {"input_mtok": "1000", "output_mtok": "2000"},
              CHEAP: {"input_mtok": "100", "output_mtok": "200"},
              STRONG: {"input_mtok": "1000", "output_mtok": "2000"}}
    tiers = [{"name": "cheap", "models": [CHEAP], "gates": [{"kind": "non_empty"}, {"kind": "json_schema"}]},
             {"name": "strong", "models": [STRONG], "gates": [{"kind": "json_schema"}]}]
    return stub_policy(prices=prices, cascades={"support": {"tiers": tiers}}, **overrides)


def cost(mc_in: int, mc_out: int, completion_text: str) -> int:
    """One attempt's cost at the stub's usage: its prompt tokens and one token per word of the reply."""
    return prompt_tokens(MESSAGES) * mc_in + len(completion_text.split()) * mc_out


@pytest.fixture(params=[False, True], ids=["ledger-on-loop", "ledger-threads"])
def cgw(make_gateway: GatewayFactory, request: pytest.FixtureRequest) -> Harness:
    """A gateway with the cascade policy (ledger calls on the loop, or in threads as for PostgreSQL);
    tier 1 answers invalid JSON, tier 2 valid JSON."""
    gw = make_gateway(cascade_policy(), models=MODELS, ledger_threads=request.param)
    gw.stub.control.replies.update({CHEAP: INVALID, STRONG: VALID})
    return gw


def ask(gw: Harness, key: str | None = None, **kwargs: Any) -> Any:
    """A cascade call through the openai client; the raw response (headers and parsed body)."""
    return gw.client(key).chat.completions.with_raw_response.create(
        model="cascade/support", messages=MESSAGES, response_format=RESPONSE_FORMAT, **kwargs)


def test_invalid_json_at_tier_one_escalates_and_both_attempts_are_settled(cgw: Harness) -> None:
    """The issue's must-show: tier 1's invalid JSON fails its gate, tier 2 answers; two settled attempts,
    one request id, and the response names tier 2 and why tier 1 was passed over."""
    raw = ask(cgw)
    completion = raw.parse()
    assert json.loads(completion.choices[0].message.content) == {"answer": "42"}
    assert raw.headers["x-comptroller-tier"] == "strong"
    assert raw.headers["x-comptroller-outcome"] == "answered"
    assert raw.headers["x-comptroller-cascade"] == "support"
    assert raw.headers["x-comptroller-passed-over"].startswith("cheap#1: ")
    assert "json" in raw.headers["x-comptroller-passed-over"].lower()
    assert raw.headers["x-comptroller-model"] == STRONG
    request_id = raw.headers["x-comptroller-request-id"]
    records = list(cgw.engine.store.usage_records())
    assert [r.idempotency_key for r in records] == [f"{request_id}:cheap:1", f"{request_id}:strong:1"]
    assert [r.model for r in records] == [CHEAP, STRONG]
    assert [r.cost_mc for r in records] == [cost(CHEAP_IN, CHEAP_OUT, INVALID), cost(STRONG_IN, STRONG_OUT, VALID)]
    assert raw.headers["x-comptroller-cost-mc"] == str(sum(r.cost_mc for r in records))
    assert all(r.attribution.tenant == "acme" for r in records)
    sent = cgw.stub.control.requests
    assert [(b["model"], b["max_tokens"]) for b in sent] == [(CHEAP, OUTPUT_CAP), (STRONG, OUTPUT_CAP)]
    assert all(b["response_format"] == RESPONSE_FORMAT for b in sent)
    routes = cgw.engine.store.events("route")
    assert [(e.detail["request_id"], e.detail["tier"]) for e in routes] == [(request_id, "strong")]
    assert cgw.pending() == 0
    assert cgw.reserved_mc() == 0


def test_valid_json_at_tier_one_answers_there(cgw: Harness) -> None:
    """When the cheap tier's answer passes its gates the strong tier is never called."""
    cgw.stub.control.replies[CHEAP] = VALID
    raw = ask(cgw)
    assert raw.headers["x-comptroller-tier"] == "cheap"
    assert raw.headers["x-comptroller-passed-over"] == ""
    assert [b["model"] for b in cgw.stub.control.requests] == [CHEAP]
    assert [r.cost_mc for r in cgw.engine.store.usage_records()] == [cost(CHEAP_IN, CHEAP_OUT, VALID)]


def test_pinning_beats_routing(make_gateway: GatewayFactory) -> None:
    """An agent pinned to the strong model never reaches the cheap tier; one pinned elsewhere is refused."""
    policy = cascade_policy(pinning={"agents": {"writer": {"models": [STRONG]}, "intern": {"models": [MODEL]}}})
    gw = make_gateway(policy, models=MODELS)
    gw.stub.control.replies.update({CHEAP: VALID, STRONG: VALID})  # the cheap tier would pass: pinning skips it
    raw = ask(gw, gw.new_key(agent="writer"))
    assert raw.headers["x-comptroller-tier"] == "strong"
    assert "pinning" in raw.headers["x-comptroller-passed-over"]
    assert [b["model"] for b in gw.stub.control.requests] == [STRONG]
    assert [r.model for r in gw.engine.store.usage_records()] == [STRONG]
    with pytest.raises(openai.RateLimitError) as caught:
        ask(gw, gw.new_key(agent="intern"))
    assert caught.value.code == "model_not_allowed"
    assert caught.value.response.headers["x-comptroller-outcome"] == "refused"
    assert len(gw.stub.control.requests) == 1
    listed = {m.id for m in gw.client(gw.new_key(agent="intern")).models.list()}
    assert listed == {MODEL}
    assert "cascade/support" in {m.id for m in gw.client(gw.new_key(agent="writer")).models.list()}


def test_upstream_failure_releases_the_attempt_and_escalates(cgw: Harness) -> None:
    """A tier whose provider fails is passed over with its hold released (nothing charged for it)."""
    cgw.stub.control.fail_models[CHEAP] = 500
    raw = ask(cgw)
    assert raw.headers["x-comptroller-tier"] == "strong"
    assert "HTTP 500" in raw.headers["x-comptroller-passed-over"]
    assert [r.model for r in cgw.engine.store.usage_records()] == [STRONG]
    assert cgw.pending() == 0
    assert cgw.reserved_mc() == 0


def test_no_tier_answering_is_502_and_nothing_is_charged(cgw: Harness) -> None:
    """Every provider failing gives 502 naming each attempt; every hold is released."""
    cgw.stub.control.fail_status = 503
    with pytest.raises(openai.InternalServerError) as caught:
        ask(cgw)
    assert caught.value.status_code == 502
    assert "cheap#1" in caught.value.message and "strong#1" in caught.value.message
    assert list(cgw.engine.store.usage_records()) == []
    assert cgw.pending() == 0
    assert cgw.reserved_mc() == 0


def test_every_tier_failing_its_gates_returns_the_last_answer_unaccepted(cgw: Harness) -> None:
    """With no tier passing, the strong tier's answer comes back marked exhausted; both attempts are charged."""
    cgw.stub.control.replies[STRONG] = INVALID
    raw = ask(cgw)
    assert raw.parse().choices[0].message.content == INVALID
    assert raw.headers["x-comptroller-outcome"] == "exhausted"
    assert raw.headers["x-comptroller-tier"] == "strong"
    assert len(list(cgw.engine.store.usage_records())) == 2


def test_budget_refusal_mid_cascade_is_429_after_charging_the_first_tier(make_gateway: GatewayFactory) -> None:
    """A budget that holds the cheap tier's ceiling but not the strong tier's: tier 1 is charged, tier 2 refused."""
    gw = make_gateway(cascade_policy(budgets=[{"level": "tenant", "tenant": "acme", "limit_mc": 5000}]),
                      models=MODELS)
    gw.stub.control.replies.update({CHEAP: INVALID, STRONG: VALID})
    with pytest.raises(openai.RateLimitError) as caught:
        ask(gw)
    assert caught.value.code == "budget_exceeded"
    assert caught.value.param == "tenant"
    headers = caught.value.response.headers
    assert headers["x-comptroller-outcome"] == "refused"
    assert "cheap#1" in headers["x-comptroller-passed-over"]
    records = list(gw.engine.store.usage_records())
    assert [r.model for r in records] == [CHEAP]
    assert headers["x-comptroller-cost-mc"] == str(records[0].cost_mc)
    assert [b["model"] for b in gw.stub.control.requests] == [CHEAP]
    assert gw.pending() == 0


def test_bad_cascade_requests_are_400(cgw: Harness) -> None:
    """A stream, an unknown cascade, or a bad deep-mode header is refused before anything is reserved."""
    client = cgw.client()
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="cascade/support", messages=MESSAGES, stream=True)
    assert caught.value.param == "stream"
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="cascade/nope", messages=MESSAGES)
    assert caught.value.code == "model_not_found"
    assert "support" in caught.value.message
    with pytest.raises(openai.BadRequestError) as caught:
        cgw.client(**{"X-Comptroller-Deep-Mode": "maybe"}).chat.completions.create(model="cascade/support",
                                                                                   messages=MESSAGES)
    assert caught.value.param == "x-comptroller-deep-mode"
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="cascade/auto", messages=MESSAGES)
    assert "[routing]" in caught.value.message
    assert cgw.stub.control.requests == []
    assert cgw.pending() == 0


def test_routing_rule_picks_the_start_tier(make_gateway: GatewayFactory) -> None:
    """A deep-mode rule starts the cascade at the strong tier; cascade/auto follows the rules too."""
    routing = {"rules": [{"name": "deep", "deep_mode": True, "cascade": "support", "tier": "strong"}]}
    gw = make_gateway(cascade_policy(routing=routing), models=MODELS)
    gw.stub.control.replies.update({CHEAP: VALID, STRONG: VALID})
    deep = gw.client(**{"X-Comptroller-Deep-Mode": "true"})
    raw = deep.chat.completions.with_raw_response.create(model="cascade/auto", messages=MESSAGES)
    assert raw.headers["x-comptroller-tier"] == "strong"
    assert "rule 'deep'" in raw.headers["x-comptroller-route-reason"]
    assert [b["model"] for b in gw.stub.control.requests] == [STRONG]
    plain = gw.client().chat.completions.with_raw_response.create(model="cascade/support", messages=MESSAGES)
    assert plain.headers["x-comptroller-tier"] == "cheap"


def test_key_model_list_must_name_the_cascade(cgw: Harness) -> None:
    """A key restricted to models may run a cascade only if it lists ``cascade/<name>``."""
    with pytest.raises(openai.PermissionDeniedError):
        ask(cgw, cgw.new_key(models=(CHEAP, STRONG)))
    assert ask(cgw, cgw.new_key(models=("cascade/support",))).headers["x-comptroller-tier"] == "strong"


def test_tier_model_without_a_provider_stops_start_up() -> None:
    """A cascade tier model no provider serves is a configuration error when the app is built."""
    policy = cascade_policy()
    engine = build_engine(db_url="memory://", policy=policy)
    config = GatewayConfig(providers={"stub": ProviderConfig(base_url="http://127.0.0.1:9/v1")},
                           models={CHEAP: "stub"}, admin_key_env=None)
    with pytest.raises(ConfigError, match=f"tier 'strong': no provider serves model '{STRONG}'"):
        create_app(engine=engine, keys=MemoryKeyStore(), config=config, namespace=policy.namespace,
                   routing=policy.routing_config(engine.prices))


@pytest.mark.parametrize("threads", [False, True], ids=["ledger-on-loop", "ledger-threads"])
def test_shutdown_mid_cascade_charges_the_attempt_its_bounds(make_gateway: GatewayFactory, threads: bool) -> None:
    """A worker stopping while a tier attempt waits on the upstream charges its bounds (DESIGN.md rule 12)."""
    gw = make_gateway(cascade_policy(), grace_s=0.2, models=MODELS, ledger_threads=threads)
    gw.stub.control.latency_s = 3.0
    outcome: list[object] = []

    def call() -> None:
        try:
            outcome.append(httpx.post(f"{gw.url}/v1/chat/completions", timeout=10,
                                      json={"model": "cascade/support", "messages": MESSAGES},
                                      headers={"authorization": f"Bearer {gw.key}"}).status_code)
        except httpx.HTTPError as exc:
            outcome.append(exc)

    caller = threading.Thread(target=call)
    caller.start()
    wait_for(lambda: gw.pending() == 1, "the first tier attempt to be admitted and in flight")
    gw.server.__exit__(None, None, None)
    caller.join(timeout=10)
    # with ledger threads the runner's thread, abandoned by the cancelled request, may still be ending
    wait_for(lambda: gw.pending() == 0, "every tier attempt's hold to be resolved")
    assert gw.reserved_mc() == 0
    [charged] = list(gw.engine.store.usage_records())  # sent upstream, cut off: it may have been billed
    assert charged.cost_mc == charged.ceiling_mc > 0
    assert outcome and outcome[0] != 200
