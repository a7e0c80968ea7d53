"""The adapters alone: what each puts in the upstream body, and how each reads usage (no server needed)."""

from __future__ import annotations

from typing import Any

import pytest

from comptroller.domain.usage import Usage
from comptroller.gateway.apis.chat import ChatApi
from comptroller.gateway.apis.messages import MessagesApi
from comptroller.gateway.apis.responses import ResponsesApi
from comptroller.gateway.config import ProviderConfig

PROVIDER = ProviderConfig(base_url="http://127.0.0.1:1/v1")
MESSAGES = [{"role": "user", "content": "hi"}]


def forwarded(body: dict[str, Any], bound: int = 32, provider: ProviderConfig = PROVIDER) -> dict[str, Any]:
    """The chat body sent upstream for ``body`` with output bound ``bound``."""
    api = ChatApi()
    return api.forward_body(api.parse(body, 0), bound, provider)


@pytest.mark.parametrize("model", ["o1", "o3-mini", "o4-mini-2025-04-16", "gpt-5", "gpt-5-mini", "openai/o3"])
def test_reasoning_models_get_max_completion_tokens_only(model: str) -> None:
    """Models that reject max_tokens get the bound in max_completion_tokens, and max_tokens is dropped."""
    sent = forwarded({"model": model, "messages": MESSAGES, "max_tokens": 100})
    assert sent["max_completion_tokens"] == 32 and "max_tokens" not in sent


@pytest.mark.parametrize(("fields", "expected"), [
    ({}, {"max_tokens"}), ({"max_completion_tokens": 90}, {"max_completion_tokens"}),
    ({"max_tokens": 90, "max_completion_tokens": 90}, {"max_tokens", "max_completion_tokens"}),
])
def test_the_bound_goes_where_the_client_put_it(fields: dict[str, int], expected: set[str]) -> None:
    """The bound replaces every limit field the client sent, else the provider's field, for other models."""
    sent = forwarded({"model": "gpt-4o-mini", "messages": MESSAGES, **fields})
    assert {f for f in ("max_tokens", "max_completion_tokens") if f in sent} == expected
    assert all(sent[f] == 32 for f in expected)


def test_n_is_the_number_of_outputs_reserved() -> None:
    """n > 1 is carried as the choices the engine reserves; the bound sent stays per choice."""
    api = ChatApi()
    request = api.parse({"model": "gpt-4o-mini", "messages": MESSAGES, "n": 4, "max_tokens": 10}, 0)
    assert (request.choices, request.max_tokens) == (4, 10)
    assert api.forward_body(request, 10, PROVIDER)["n"] == 4


def test_responses_usage_counts_reasoning_as_output_and_cached_as_cache_reads() -> None:
    """Responses usage: input includes cached tokens (cache reads), output includes reasoning tokens."""
    usage = ResponsesApi().usage({"usage": {"input_tokens": 100, "input_tokens_details": {"cached_tokens": 40},
                                            "output_tokens": 70, "output_tokens_details": {"reasoning_tokens": 50}}})
    assert usage == Usage(input_tokens=100, output_tokens=70, cache_read_tokens=40)


def test_messages_usage_adds_cache_reads_and_both_write_ttls_to_input() -> None:
    """Anthropic usage: input excludes cache reads and writes, so they are added back, the 1-hour part kept."""
    usage = MessagesApi().usage({"usage": {"input_tokens": 10, "output_tokens": 5, "cache_read_input_tokens": 30,
                                           "cache_creation_input_tokens": 20,
                                           "cache_creation": {"ephemeral_5m_input_tokens": 12,
                                                              "ephemeral_1h_input_tokens": 8}}})
    assert usage == Usage(input_tokens=60, output_tokens=5, cache_read_tokens=30, cache_write_tokens=20,
                          cache_write_1h_tokens=8)


def test_a_messages_stream_reads_input_at_start_and_output_at_the_delta() -> None:
    """The stream tally takes input and cache counts from message_start and the final output from message_delta."""
    tally = MessagesApi().tally(MessagesApi().parse({"model": "claude-x", "max_tokens": 9, "messages": MESSAGES}, 0))
    tally.observe("message_start", {"type": "message_start", "message": {"model": "claude-x", "usage": {
        "input_tokens": 10, "output_tokens": 1, "cache_read_input_tokens": 3, "cache_creation_input_tokens": 0}}})
    tally.observe("content_block_delta", {"type": "content_block_delta", "delta": {"type": "text_delta",
                                                                                   "text": "hello"}})
    assert not tally.final("content_block_delta", {})
    tally.observe("message_delta", {"type": "message_delta", "usage": {"output_tokens": 7}})
    assert tally.usage == Usage(input_tokens=13, output_tokens=7, cache_read_tokens=3)
    assert tally.final("message_stop", {"type": "message_stop"})
    assert tally.output_tokens_seen() == len(b"hello")
