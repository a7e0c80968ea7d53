"""The SDK's openai wrapper: the same engine as the gateway, without an HTTP hop."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import openai
import pytest
from sdk_kit import CAP, MODEL, RATES_MC, comptroller_with, sdk_policy
from stub_upstream import StubUpstream, prompt_tokens

from comptroller.clock import VirtualClock
from comptroller.sdk import BudgetExceededError, CallContext, Comptroller, DeadlineExceededError, RefusedError

MESSAGES = [{"role": "user", "content": "Name five colours."}]


def client_for(stub: StubUpstream) -> openai.OpenAI:
    return openai.OpenAI(base_url=stub.base_url, api_key="unused", max_retries=0)


def test_call_is_capped_and_settled_exactly_with_cached_tokens(stub: StubUpstream, comptroller: Comptroller) -> None:
    """OpenAI counts cached tokens inside prompt_tokens: the settled cost prices them once, at the cache rate."""
    stub.control.cached_tokens = 4
    client = comptroller.wrap(client_for(stub), agent="writer")
    response = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=CAP * 4)
    assert response.usage.completion_tokens == 5
    assert stub.control.requests[-1]["max_tokens"] == CAP
    (record,) = comptroller.engine.store.usage_records()
    prompt = prompt_tokens(MESSAGES)
    assert record.usage.cache_read_tokens == 4
    assert record.cost_mc == (prompt - 4) * RATES_MC["input"] + 4 * RATES_MC["cache_read"] + 5 * RATES_MC["output"]
    assert (record.attribution.tenant, record.attribution.agent) == ("acme", "writer")


def test_refusal_raises_a_typed_error_and_sends_nothing(stub: StubUpstream, tmp_path: Path) -> None:
    """A budget refusal is BudgetExceededError carrying code and level; the provider is never called."""
    policy = sdk_policy(budgets=[{"level": "agent", "tenant": "acme", "agent": "writer", "limit_mc": 100}])
    comptroller = comptroller_with(tmp_path, policy)
    client = comptroller.wrap(client_for(stub), agent="writer")
    with pytest.raises(BudgetExceededError) as caught:
        client.chat.completions.create(model=MODEL, messages=MESSAGES)
    assert isinstance(caught.value, RefusedError)
    assert (caught.value.code, caught.value.level) == ("budget_exceeded", "agent")
    assert stub.control.requests == []


def test_attribution_layers_from_wrapper_context_and_call(stub: StubUpstream, comptroller: Comptroller) -> None:
    """Wrapper ids, then `with attribution(...)`, then the call's own `attribution=` win in that order."""
    client = comptroller.wrap(client_for(stub), agent="writer")
    with comptroller.attribution(conversation="c-1", task="t-1"):
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "one"}])
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "two"}],
                                       attribution=CallContext(agent="critic", task="t-2"))
    client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "three"}])
    seen = [(r.attribution.agent, r.attribution.conversation, r.attribution.task)
            for r in comptroller.engine.store.usage_records()]
    assert seen == [("writer", "c-1", "t-1"), ("critic", "c-1", "t-2"), ("writer", None, None)]


def test_stream_settles_at_the_end_and_hides_forced_usage(stub: StubUpstream, comptroller: Comptroller) -> None:
    """A stream is settled with its usage chunk when it ends; the chunk is not shown unless asked for."""
    client = comptroller.wrap(client_for(stub))
    chunks = list(client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True))
    assert all(chunk.choices for chunk in chunks)
    assert stub.control.requests[-1]["stream_options"] == {"include_usage": True}
    (record,) = comptroller.engine.store.usage_records()
    assert record.usage.output_tokens == 5
    assert record.cost_mc == prompt_tokens(MESSAGES) * RATES_MC["input"] + 5 * RATES_MC["output"]


def test_stream_closed_early_settles_what_was_seen(stub: StubUpstream, comptroller: Comptroller) -> None:
    """Closing a stream mid-way settles the input bound and the output seen, not the full ceiling."""
    stub.control.reply_words, stub.control.chunk_delay_s = 30, 0.02
    client = comptroller.wrap(client_for(stub))
    stream = client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
    for _ in range(3):
        next(stream)
    stream.close()
    (record,) = comptroller.engine.store.usage_records()
    assert 1 <= record.usage.output_tokens < CAP
    assert record.cost_mc < record.ceiling_mc


def test_upstream_error_releases_the_hold(stub: StubUpstream, comptroller: Comptroller) -> None:
    """A provider error propagates unchanged and the reservation is released, nothing charged."""
    stub.control.fail_status = 500
    client = comptroller.wrap(client_for(stub))
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model=MODEL, messages=MESSAGES)
    assert list(comptroller.engine.store.usage_records()) == []
    assert sum(a.reserved_mc for a in comptroller.engine.store.accounts()) == 0


def test_async_client_calls_and_streams(stub: StubUpstream, comptroller: Comptroller) -> None:
    """The AsyncOpenAI wrapper admits, forwards and settles plain calls and streams."""
    async def run() -> list[str]:
        client = comptroller.wrap(openai.AsyncOpenAI(base_url=stub.base_url, api_key="unused", max_retries=0))
        first = await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "a b"}])
        stream = await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "c"}],
                                                      stream=True, stream_options={"include_usage": True})
        texts = [chunk.choices[0].delta.content or "" async for chunk in stream if chunk.choices]
        return [first.choices[0].message.content or "", "".join(texts)]

    assert asyncio.run(run()) == ["w0 w1 w2 w3 w4"] * 2
    records = list(comptroller.engine.store.usage_records())
    assert [r.usage.output_tokens for r in records] == [5, 5]


def test_scheduled_run_deadline_refuses_late_calls(stub: StubUpstream, tmp_path: Path) -> None:
    """Calls inside a scheduled run are refused once its maximum duration has passed."""
    clock = VirtualClock(datetime(2026, 11, 21, 3, 0, tzinfo=UTC))
    comptroller = comptroller_with(tmp_path, sdk_policy(), clock)
    client = comptroller.wrap(client_for(stub), agent="cron")
    with comptroller.scheduled_run("nightly-1", max_duration_s=60):
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "early"}])
        clock.advance(61)
        with pytest.raises(DeadlineExceededError) as caught:
            client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "late"}])
    assert caught.value.code == "deadline_exceeded"
    assert len(stub.control.requests) == 1
