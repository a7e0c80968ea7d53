"""The gateway's call path, driven by the official openai client over real HTTP."""

from __future__ import annotations

import openai
import pytest
from gateway_kit import (
    INPUT_MC_PER_TOKEN,
    MODEL,
    OUTPUT_CAP,
    OUTPUT_MC_PER_TOKEN,
    GatewayFactory,
    Harness,
    stub_policy,
    wait_for,
)
from stub_upstream import prompt_tokens

from comptroller.domain.defenses.loops import LoopConfig

MESSAGES = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Say five words."}]


def expected_cost(messages: list[dict[str, str]], completion: int) -> int:
    """The stub's usage priced at the test policy's rates, millicents."""
    return prompt_tokens(messages) * INPUT_MC_PER_TOKEN + completion * OUTPUT_MC_PER_TOKEN


def test_completion_is_forwarded_settled_and_priced(gw: Harness) -> None:
    """A plain call reaches the upstream with the cap as max_tokens, and settles the reported usage."""
    raw = gw.client().chat.completions.with_raw_response.create(model=MODEL, messages=MESSAGES)
    completion = raw.parse()
    assert completion.choices[0].message.content == "w0 w1 w2 w3 w4"
    assert gw.stub.control.requests[-1]["max_tokens"] == OUTPUT_CAP
    records = list(gw.engine.store.usage_records())
    assert len(records) == 1
    assert records[0].usage.input_tokens == prompt_tokens(MESSAGES)
    assert records[0].usage.output_tokens == 5
    assert records[0].cost_mc == expected_cost(MESSAGES, 5)
    assert raw.headers["x-comptroller-cost-mc"] == str(records[0].cost_mc)
    assert raw.headers["x-comptroller-model"] == MODEL
    assert records[0].attribution.tenant == "acme"
    assert gw.pending() == 0


def test_max_tokens_above_the_cap_is_lowered_upstream(gw: Harness) -> None:
    """A request asking for more than the cap is sent with the cap, so the ceiling stays a bound."""
    gw.client().chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=OUTPUT_CAP * 10)
    assert gw.stub.control.requests[-1]["max_tokens"] == OUTPUT_CAP
    gw.client().chat.completions.create(model=MODEL, messages=MESSAGES, max_completion_tokens=3)
    sent = gw.stub.control.requests[-1]
    assert sent["max_completion_tokens"] == 3
    assert "max_tokens" not in sent
    assert [r.usage.output_tokens for r in gw.engine.store.usage_records()] == [5, 3]


def test_stream_settles_the_usage_chunk_and_hides_it_unless_asked(gw: Harness) -> None:
    """A stream is forwarded chunk by chunk; usage is forced upstream, settled, and shown only if requested."""
    chunks = list(gw.client().chat.completions.create(model=MODEL, messages=MESSAGES, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "w0 w1 w2 w3 w4"
    assert all(c.usage is None for c in chunks)
    assert gw.stub.control.requests[-1]["stream_options"] == {"include_usage": True}
    with_usage = list(gw.client().chat.completions.create(model=MODEL, messages=MESSAGES, stream=True,
                                                          stream_options={"include_usage": True}))
    assert with_usage[-1].usage is not None
    assert with_usage[-1].usage.completion_tokens == 5
    records = list(gw.engine.store.usage_records())
    assert [r.cost_mc for r in records] == [expected_cost(MESSAGES, 5)] * 2
    assert gw.pending() == 0


def test_budget_refusal_is_a_rate_limit_error_with_code_and_level(make_gateway: GatewayFactory) -> None:
    """A call over a budget gets the client's RateLimitError, code budget_exceeded, param the level."""
    policy = stub_policy(budgets=[{"level": "tenant", "tenant": "acme", "limit_mc": 1000, "period": "day"}])
    gw = make_gateway(policy)
    with pytest.raises(openai.RateLimitError) as caught:
        gw.client().chat.completions.create(model=MODEL, messages=MESSAGES)
    error = caught.value
    assert error.status_code == 429
    assert error.code == "budget_exceeded"
    assert error.param == "tenant"
    assert error.body["evidence"]["limit_mc"] == 1000  # type: ignore[index]
    assert gw.stub.control.requests == []
    assert gw.reserved_mc() == 0


def test_refusal_of_a_period_budget_says_when_to_retry(make_gateway: GatewayFactory) -> None:
    """A daily budget that a fresh day could cover answers with Retry-After: the seconds to the roll-over."""
    first = [{"role": "user", "content": "call 00"}]
    probe = make_gateway().client().chat.completions.with_raw_response.create(model=MODEL, messages=first)
    ceiling = int(probe.headers["x-comptroller-ceiling-mc"])
    gw = make_gateway(stub_policy(budgets=[{"level": "tenant", "tenant": "acme", "limit_mc": 2 * ceiling,
                                            "period": "day"}]))
    with pytest.raises(openai.RateLimitError) as caught:
        for i in range(20):  # each settles far below its ceiling; the refusal comes once < 1 ceiling is left
            gw.client().chat.completions.create(model=MODEL, messages=[{"role": "user", "content": f"call {i:02d}"}])
    retry_after = int(caught.value.response.headers["retry-after"])
    assert 1 <= retry_after <= 86_400
    assert caught.value.body["evidence"]["limit_mc"] == 2 * ceiling  # type: ignore[index]


def test_unknown_key_is_401(gw: Harness) -> None:
    """A wrong key gets AuthenticationError, and nothing reaches the upstream."""
    with pytest.raises(openai.AuthenticationError) as caught:
        gw.client(key="ck-000000000000.notarealkeynotarealkey").chat.completions.create(model=MODEL,
                                                                                         messages=MESSAGES)
    assert caught.value.code == "invalid_api_key"
    assert gw.stub.control.requests == []


def test_revoked_key_is_401(make_gateway: GatewayFactory) -> None:
    """A key revoked in the store (another process, another replica) stops working once its cache entry expires."""
    from datetime import UTC, datetime  # noqa: PLC0415

    gw = make_gateway(key_cache_ttl_s=0.2)
    key = gw.new_key()
    gw.client(key).chat.completions.create(model=MODEL, messages=MESSAGES)
    gw.keys.revoke(key.split(".")[0].removeprefix("ck-"), datetime.now(UTC))

    def refused() -> bool:
        try:
            gw.client(key).chat.completions.create(model=MODEL, messages=MESSAGES)
        except openai.AuthenticationError:
            return True
        return False
    wait_for(refused, "the revoked key to be refused")


def test_headers_narrow_attribution_and_never_widen(gw: Harness) -> None:
    """Agent, conversation and task headers narrow within the key; another tenant or agent is 403."""
    tenant_key = gw.new_key("acme")
    gw.client(tenant_key, **{"X-Comptroller-Agent": "writer", "X-Comptroller-Conversation": "c-1",
                             "X-Comptroller-Task": "t-9"}).chat.completions.create(model=MODEL, messages=MESSAGES)
    attribution = list(gw.engine.store.usage_records())[-1].attribution
    assert (attribution.tenant, attribution.agent, attribution.conversation, attribution.task) == (
        "acme", "writer", "c-1", "t-9")
    with pytest.raises(openai.PermissionDeniedError) as caught:
        gw.client(tenant_key, **{"X-Comptroller-Tenant": "globex"}).chat.completions.create(model=MODEL,
                                                                                            messages=MESSAGES)
    assert caught.value.param == "x-comptroller-tenant"
    agent_key = gw.new_key("acme", agent="writer")
    with pytest.raises(openai.PermissionDeniedError) as caught:
        gw.client(agent_key, **{"X-Comptroller-Agent": "critic"}).chat.completions.create(model=MODEL,
                                                                                          messages=MESSAGES)
    assert caught.value.param == "x-comptroller-agent"
    gw.client(agent_key).chat.completions.create(model=MODEL, messages=MESSAGES)
    assert list(gw.engine.store.usage_records())[-1].attribution.agent == "writer"
    assert len(gw.stub.control.requests) == 2


def test_narrowing_header_adds_the_conversation_budget(make_gateway: GatewayFactory) -> None:
    """A conversation header brings that conversation's budget into force (it can only refuse more)."""
    policy = stub_policy(budgets=[{"level": "conversation", "tenant": "acme", "conversation": "tight",
                                   "limit_mc": 10}])
    gw = make_gateway(policy)
    gw.client().chat.completions.create(model=MODEL, messages=MESSAGES)
    with pytest.raises(openai.RateLimitError) as caught:
        gw.client(**{"X-Comptroller-Conversation": "tight"}).chat.completions.create(model=MODEL, messages=MESSAGES)
    assert caught.value.param == "conversation"


def test_key_models_restrict_calls_and_model_list(gw: Harness) -> None:
    """A key limited to some models lists only those and is refused others with 403."""
    key = gw.new_key("acme", models=(MODEL,))
    assert [m.id for m in gw.client(key).models.list()] == [MODEL]
    assert sorted(m.id for m in gw.client().models.list()) == sorted([MODEL, "other-model"])
    with pytest.raises(openai.PermissionDeniedError) as caught:
        gw.client(key).chat.completions.create(model="other-model", messages=MESSAGES)
    assert caught.value.code == "model_not_allowed"


def test_repeated_request_is_refused_as_a_loop_before_it_is_paid(gw: Harness) -> None:
    """The gateway fills the fingerprint, so the engine's same-request detector refuses a repeat loop."""
    messages = [{"role": "user", "content": "Try again, exactly the same."}]
    client = gw.client(**{"X-Comptroller-Agent": "looper"})
    for _ in range(LoopConfig().identical_max):  # a few repeats pass (issue 13); the loop's next is refused
        client.chat.completions.create(model=MODEL, messages=messages)
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model=MODEL, messages=messages)
    assert caught.value.code == "loop_detected"
    assert caught.value.param == "agent"
    assert len(gw.stub.control.requests) == LoopConfig().identical_max
    with pytest.raises(openai.RateLimitError) as locked:  # the scope stays locked for its cooldown (issue 13)
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Something new."}])
    assert locked.value.code == "loop_detected"
    assert len(gw.stub.control.requests) == LoopConfig().identical_max


def test_pinned_agent_lists_and_calls_only_its_models(make_gateway: GatewayFactory) -> None:
    """A key bound to a pinned agent lists only the pinned models, and another model is refused before upstream."""
    gw = make_gateway(stub_policy(pinning={"agents": {"writer": {"models": [MODEL]}}}))
    key = gw.new_key("acme", agent="writer")
    assert [m.id for m in gw.client(key).models.list()] == [MODEL]
    with pytest.raises(openai.RateLimitError) as caught:
        gw.client(key).chat.completions.create(model="other-model", messages=MESSAGES)
    assert caught.value.code == "model_not_allowed"
    assert gw.stub.control.requests == []
    gw.client(key).chat.completions.create(model=MODEL, messages=MESSAGES)
    assert len(gw.stub.control.requests) == 1


def test_the_tightest_budget_left_is_in_the_response_headers(make_gateway: GatewayFactory) -> None:
    """X-Comptroller-Budget-Remaining-Mc: the least any of the call's budgets has left after the settle."""
    limit = 1_000_000
    gw = make_gateway(stub_policy(budgets=[{"level": "tenant", "tenant": "acme", "limit_mc": limit},
                                           {"level": "namespace", "limit_mc": 10 * limit}]))
    first = gw.client().chat.completions.with_raw_response.create(model=MODEL, messages=MESSAGES)
    second = gw.client().chat.completions.with_raw_response.create(model=MODEL, messages=MESSAGES + MESSAGES[1:])
    costs = [r.cost_mc for r in gw.engine.store.usage_records()]
    assert int(first.headers["x-comptroller-budget-remaining-mc"]) == limit - costs[0]
    assert int(second.headers["x-comptroller-budget-remaining-mc"]) == limit - costs[0] - costs[1]
