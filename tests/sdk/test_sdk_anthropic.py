"""The SDK's anthropic wrapper: cache reads and writes outside input_tokens still settle exactly."""

from __future__ import annotations

import anthropic
from sdk_kit import CAP, MODEL, RATES_MC
from stub_upstream import StubUpstream, prompt_tokens

from comptroller.sdk import Comptroller

MESSAGES = [{"role": "user", "content": "Summarise the thread."}]


def client_for(stub: StubUpstream) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=stub.url, api_key="unused", max_retries=0)


def expected_mc(uncached: int, read: int, write: int, output: int) -> int:
    """Each bucket at its own rate (the policy's round per-token prices)."""
    return (uncached * RATES_MC["input"] + read * RATES_MC["cache_read"] + write * RATES_MC["cache_write"]
            + output * RATES_MC["output"])


def test_message_with_cache_reads_and_writes_settles_exactly(stub: StubUpstream, comptroller: Comptroller) -> None:
    """Anthropic's input_tokens excludes cache reads and writes; the ledger adds them back and prices each."""
    stub.control.cached_tokens, stub.control.cache_write_tokens = 7, 11
    client = comptroller.wrap(client_for(stub), agent="summariser")
    message = client.messages.create(model=MODEL, max_tokens=CAP * 8, messages=MESSAGES)
    assert message.content[0].text == "w0 w1 w2 w3 w4"
    assert stub.control.requests[-1]["max_tokens"] == CAP
    (record,) = comptroller.engine.store.usage_records()
    uncached = prompt_tokens(MESSAGES)
    assert record.usage.input_tokens == uncached + 7 + 11
    assert (record.usage.cache_read_tokens, record.usage.cache_write_tokens) == (7, 11)
    assert record.cost_mc == expected_mc(uncached, 7, 11, 5)


def test_stream_settles_from_message_start_and_delta(stub: StubUpstream, comptroller: Comptroller) -> None:
    """A streamed message is settled when it ends, from message_start's input and message_delta's output."""
    stub.control.cached_tokens, stub.control.cache_write_tokens = 3, 0
    client = comptroller.wrap(client_for(stub))
    events = list(client.messages.create(model=MODEL, max_tokens=10, messages=MESSAGES, stream=True))
    assert events[-1].type == "message_stop"
    (record,) = comptroller.engine.store.usage_records()
    assert record.cost_mc == expected_mc(prompt_tokens(MESSAGES), 3, 0, 5)
