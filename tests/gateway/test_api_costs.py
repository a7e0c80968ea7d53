"""Every API's settled cost equals a hand computation from the stub's usage, with the official clients."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from gateway_kit import (
    CACHED,
    CLAUDE,
    INPUT_MC_PER_TOKEN,
    MC_PER_TOKEN,
    MODEL,
    OUTPUT_MC_PER_TOKEN,
    TIER_MC_PER_TOKEN,
    TIER_START,
    TIERED,
    GatewayFactory,
    Harness,
    api_gateway,
    wait_for,
)
from stub_apis import input_words, responses_prompt_tokens
from stub_upstream import StubUpstream, prompt_tokens

from comptroller.domain.tokens import prediction_tokens_max, request_input_tokens_max

MESSAGES = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Say five words."}]


@pytest.fixture
def gw(make_gateway: GatewayFactory, stub: StubUpstream) -> Harness:
    """A gateway serving both API families."""
    return api_gateway(make_gateway, stub)


def last_cost(gw: Harness) -> int:
    """The cost of the call settled last, from the ledger."""
    return list(gw.engine.store.usage_records())[-1].cost_mc


def test_chat_n_choices_and_cache_reads_are_priced_by_hand(gw: Harness) -> None:
    """n = 3 reserves three outputs, sends the bound per choice, and settles n outputs plus cache reads."""
    gw.stub.control.cached_tokens = 2
    raw = gw.client().chat.completions.with_raw_response.create(model=CACHED, messages=MESSAGES, n=3, max_tokens=4)
    assert len(raw.parse().choices) == 3
    sent = gw.stub.control.requests[-1]
    assert (sent["n"], sent["max_tokens"]) == (3, 4)
    rates = MC_PER_TOKEN[CACHED]
    expected = (prompt_tokens(MESSAGES) - 2) * rates[0] + 2 * rates[2] + 3 * 4 * rates[1]
    assert int(raw.headers["x-comptroller-cost-mc"]) == last_cost(gw) == expected
    assert int(raw.headers["x-comptroller-ceiling-mc"]) >= expected


@pytest.mark.parametrize("stream", [False, True])
def test_responses_reasoning_and_cached_tokens_are_priced_by_hand(gw: Harness, stream: bool) -> None:
    """Reasoning tokens are output and cached input tokens are cache reads, plain and streamed."""
    control = gw.stub.control
    control.cached_tokens, control.reasoning_tokens = 3, 7
    body: dict[str, Any] = {"model": CACHED, "input": "Name three primes please.", "instructions": "Be brief.",
                            "max_output_tokens": 40}
    client = gw.client()
    if stream:
        events = list(client.responses.create(**body, stream=True))
        assert events[-1].type == "response.completed"
    else:
        assert client.responses.create(**body).output_text == "w0 w1 w2 w3 w4"
    assert gw.stub.control.paths[-1] == "/v1/responses"
    assert gw.stub.control.requests[-1]["max_output_tokens"] == 40
    rates = MC_PER_TOKEN[CACHED]
    prompt = responses_prompt_tokens(body)
    expected = (prompt - 3) * rates[0] + 3 * rates[2] + (5 + 7) * rates[1]
    assert last_cost(gw) == expected


@pytest.mark.parametrize("stream", [False, True])
def test_messages_cache_reads_and_5m_1h_writes_are_priced_by_hand(gw: Harness, stream: bool) -> None:
    """Anthropic cache reads, 5-minute and 1-hour writes each take their own rate, plain and streamed."""
    control = gw.stub.control
    control.cached_tokens, control.cache_write_tokens, control.cache_write_1h_tokens = 4, 6, 2
    client = gw.anthropic()
    messages: Any = [{"role": "user", "content": "Say five words."}]
    if stream:
        with client.messages.stream(model=CLAUDE, max_tokens=50, messages=messages) as events:
            message = events.get_final_message()
    else:
        message = client.messages.create(model=CLAUDE, max_tokens=50, messages=messages)
    assert message.content[0].text == "w0 w1 w2 w3 w4"  # type: ignore[union-attr]
    assert gw.stub.control.paths[-1] == "/v1/messages"
    rates = MC_PER_TOKEN[CLAUDE]
    expected = (prompt_tokens(messages) * rates[0] + 4 * rates[2] + (6 - 2) * rates[3] + 2 * rates[4]
                + 5 * rates[1])
    assert last_cost(gw) == expected


def test_embeddings_are_priced_as_input_only(gw: Harness) -> None:
    """An embedding call reserves no output and settles its prompt tokens at the input rate."""
    texts = ["the first text to embed", "and a second one"]
    raw = gw.client().embeddings.with_raw_response.create(model=MODEL, input=texts)
    assert len(raw.parse().data) == 2
    expected = input_words(texts) * INPUT_MC_PER_TOKEN
    assert int(raw.headers["x-comptroller-cost-mc"]) == last_cost(gw) == expected
    record = list(gw.engine.store.usage_records())[-1]
    assert record.usage.output_tokens == 0


@pytest.mark.parametrize("stream", [False, True])
def test_legacy_completions_with_n_are_priced_by_hand(gw: Harness, stream: bool) -> None:
    """Legacy completions settle n outputs of the capped length, plain and streamed."""
    client = gw.client()
    if stream:
        chunks = list(client.completions.create(model=MODEL, prompt="Count to five", max_tokens=3, n=2, stream=True))
        assert "".join(c.choices[0].text for c in chunks if c.choices and c.choices[0].index == 0) == "w0 w1 w2"
    else:
        assert client.completions.create(model=MODEL, prompt="Count to five", max_tokens=3, n=2).choices[1].text \
            == "w0 w1 w2"
    sent = gw.stub.control.requests[-1]
    assert (sent["max_tokens"], sent["n"]) == (3, 2)
    expected = (input_words("Count to five") + 3) * INPUT_MC_PER_TOKEN + 2 * 3 * OUTPUT_MC_PER_TOKEN
    assert last_cost(gw) == expected


@pytest.mark.parametrize("words", [2, 40])
def test_a_tier_price_applies_above_its_input_start(gw: Harness, words: int) -> None:
    """Input above the tier's start is priced at the tier's rates, at or below it at the base rates."""
    messages = [{"role": "user", "content": " ".join(["word"] * words)}]
    gw.client().chat.completions.create(model=TIERED, messages=messages, max_tokens=5)
    prompt = prompt_tokens(messages)
    (low_in, low_out), (high_in, high_out) = TIER_MC_PER_TOKEN
    rate_in, rate_out = (high_in, high_out) if prompt > TIER_START else (low_in, low_out)
    assert last_cost(gw) == prompt * rate_in + 5 * rate_out


def test_a_prediction_is_reserved_as_output_beyond_the_bound_sent(gw: Harness) -> None:
    """A Predicted Output's tokens are added to the reserved output while max_tokens upstream stays the bound."""
    prediction = {"type": "content", "content": "def add(a, b):\n    return a + b\n"}
    body: dict[str, Any] = {"model": MODEL, "messages": MESSAGES, "max_tokens": 10, "prediction": prediction}
    raw = gw.client().chat.completions.with_raw_response.create(**body)
    assert gw.stub.control.requests[-1]["max_tokens"] == 10
    expected_ceiling = (request_input_tokens_max(body, api="chat") * INPUT_MC_PER_TOKEN
                        + (10 + prediction_tokens_max(body)) * OUTPUT_MC_PER_TOKEN)
    assert int(raw.headers["x-comptroller-ceiling-mc"]) == expected_ceiling


def test_a_responses_stream_cut_short_is_charged_what_was_generated(gw: Harness) -> None:
    """An upstream that drops a Responses stream mid-way is charged the input bound and the text seen, once."""
    gw.stub.control.drop_after_chunks = 3
    body: dict[str, Any] = {"model": MODEL, "input": "Count slowly.", "max_output_tokens": 20}
    with httpx.stream("POST", f"{gw.url}/v1/responses", json={**body, "stream": True}, timeout=20,
                      headers={"authorization": f"Bearer {gw.key}"}) as response:
        text = "".join(response.iter_text())
    assert "mid-stream; the generated part was charged" in text
    seen_bytes = len(b"w0 w1 w2")
    expected = request_input_tokens_max(body, api="responses") * INPUT_MC_PER_TOKEN + seen_bytes * OUTPUT_MC_PER_TOKEN
    wait_for(lambda: gw.pending() == 0, "the cut-short stream to settle")  # after the client read its end
    assert [r.cost_mc for r in gw.engine.store.usage_records()] == [expected]
