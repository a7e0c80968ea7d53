"""64 concurrent clients mixing every API, plain and streamed, against a tenant budget of K ceilings."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import anthropic
import openai
import pytest
from gateway_kit import CLAUDE, MODEL, GatewayFactory, api_gateway, api_policy
from stub_upstream import StubUpstream

from comptroller.bootstrap import price_book
from comptroller.domain.pricing import ceiling_mc
from comptroller.domain.tokens import request_input_tokens_max

K = 12
CLIENTS = 64
CALLS_PER_CLIENT = 2
MAX_TOKENS = 8
KINDS = ("chat", "chat stream", "responses", "responses stream", "messages", "messages stream", "embeddings",
         "embeddings")


def text(i: int) -> str:
    """A distinct prompt per call (no loop detector fires), all of one length (one ceiling per kind)."""
    return f"Request number {i:06d}."


def body(kind: str, i: int) -> tuple[str, dict[str, Any]]:
    """The API (as the input bound names it) and the body of call ``i`` of ``kind``."""
    api = kind.split(maxsplit=1)[0]
    if api == "chat":
        return api, {"model": MODEL, "messages": [{"role": "user", "content": text(i)}], "max_tokens": MAX_TOKENS}
    if api == "responses":
        return api, {"model": MODEL, "input": text(i), "max_output_tokens": MAX_TOKENS}
    if api == "messages":
        return api, {"model": CLAUDE, "messages": [{"role": "user", "content": text(i)}], "max_tokens": MAX_TOKENS}
    return api, {"model": MODEL, "input": text(i)}


def largest_ceiling_mc() -> int:
    """The largest ceiling of any kind of call in the mix."""
    book = price_book(api_policy())
    ceilings = []
    for kind in set(KINDS):
        api, payload = body(kind, 0)
        price = book.price(payload["model"], datetime.now(UTC))
        output = 0 if api == "embeddings" else MAX_TOKENS
        ceilings.append(ceiling_mc(price, input_tokens_max=request_input_tokens_max(payload, api=api),  # type: ignore[arg-type]
                                   output_tokens_max=output))
    return max(ceilings)


def caller(oa: openai.AsyncOpenAI, an: anthropic.AsyncAnthropic, kind: str, i: int) -> Callable[[], Awaitable[Any]]:
    """The official-client call for ``kind``."""
    _, payload = body(kind, i)
    stream = kind.endswith("stream")

    async def chat() -> Any:
        if stream:
            return [c async for c in await oa.chat.completions.create(**payload, stream=True)]
        return await oa.chat.completions.create(**payload)

    async def responses() -> Any:
        if stream:
            return [e async for e in await oa.responses.create(**payload, stream=True)]
        return await oa.responses.create(**payload)

    async def messages() -> Any:
        if stream:
            async with an.messages.stream(**payload) as events:
                return await events.get_final_message()
        return await an.messages.create(**payload)

    async def embeddings() -> Any:
        return await oa.embeddings.create(**payload)

    calls = {"chat": chat, "responses": responses, "messages": messages, "embeddings": embeddings}
    return calls[kind.split(maxsplit=1)[0]]


async def drive(url: str, key: str) -> list[tuple[str, int, str | None]]:
    """Every client's calls at once: (kind, status, refusal code)."""
    oa = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=60)
    an = anthropic.AsyncAnthropic(base_url=url, api_key=key, max_retries=0, timeout=60)

    async def one(c: int) -> list[tuple[str, int, str | None]]:
        out = []
        for j in range(CALLS_PER_CLIENT):
            i = c * CALLS_PER_CLIENT + j
            kind = KINDS[i % len(KINDS)]
            try:
                await caller(oa, an, kind, i)()
            except (openai.RateLimitError, anthropic.RateLimitError) as exc:
                error = exc.response.json()["error"]
                out.append((kind, 429, error["code"]))
            else:
                out.append((kind, 200, None))
        return out

    try:
        results = await asyncio.gather(*(one(c) for c in range(CLIENTS)))
    finally:
        await oa.close()
        await an.close()
    return [r for rs in results for r in rs]


@pytest.mark.timeout(240)
def test_mixed_apis_are_served_exactly_the_admitted_calls_within_the_budget(make_gateway: GatewayFactory,
                                                                         stub: StubUpstream) -> None:
    """With K ceilings of budget, at least K calls are served, each reached the stub once, spend stays in budget."""
    limit_mc = K * largest_ceiling_mc()
    gw = api_gateway(make_gateway, stub, api_policy(budgets=[{"level": "tenant", "tenant": "acme",
                                                              "limit_mc": limit_mc}]))
    stub.control.latency_s = 0.02  # many calls in flight at once
    outcomes = asyncio.run(drive(gw.url, gw.key))
    statuses = Counter(status for _, status, _ in outcomes)
    assert set(statuses) <= {200, 429}, statuses
    assert {code for _, status, code in outcomes if status == 429} <= {"budget_exceeded"}
    records = list(gw.engine.store.usage_records())
    assert statuses[200] >= K and statuses[429] > 0
    assert len(stub.control.requests) == statuses[200] == len(records)
    served = Counter(kind.split(maxsplit=1)[0] for kind, status, _ in outcomes if status == 200)
    by_path = Counter(path.rsplit("/", 1)[-1] for path in stub.control.paths)
    assert by_path == Counter({{"chat": "completions"}.get(k, k): n for k, n in served.items()})
    assert sum(r.cost_mc for r in records) <= limit_mc
    assert all(a.settled_mc <= a.budget.limit_mc and a.reserved_mc == 0 for a in gw.engine.store.accounts())
    assert gw.pending() == 0
