"""64 agents racing near a tenant budget's edge get the calls that really fit (issue 14, "Ceilings").

Each agent sends one ChatDev-shaped chat call (a role prompt and a task, about 80 billed tokens)
to ``gpt-4o-mini`` through the gateway, all at once. The byte bound counts each call's input as
470 tokens, the exact recount as 112. The stub reports usage equal to the reserved bounds, so no
settle returns money while the wave races: the number served is what the first wave's holds admit,
whatever the timing.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import openai
import pytest
from gateway_kit import GatewayFactory, Harness, stub_policy
from stub_upstream import StubUpstream

from comptroller.bootstrap import price_book
from comptroller.config import Policy
from comptroller.domain.pricing import ceiling_mc
from comptroller.domain.tokens import request_input_tokens_max
from comptroller.exact_input import input_recount
from comptroller.gateway.apis import pipeline
from comptroller.gateway.config import ProviderConfig

MODEL = "gpt-4o-mini"  # o200k: covered by the exact recount
AGENTS = 64
FIT = 10  # the budget holds this many recounted ceilings
MAX_TOKENS = 660
SYSTEM = ("You are Programmer. We are both working at ChatDev. We share a common interest in collaborating to "
          "successfully complete a task assigned by a new customer. You can write/create computer software or "
          "applications by providing a specific programming language to the computer.")


def body(agent: int) -> dict[str, Any]:
    """Agent ``agent``'s call: distinct text (no loop detector fires), the same length for every agent."""
    task = f"Task {agent:02d}: write a Python function that returns the n-th Fibonacci number, with a docstring."
    return {"model": MODEL, "max_tokens": MAX_TOKENS,
            "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": task}]}


def policy(**overrides: Any) -> Policy:
    """Round prices for the model (100 mc per input token, 200 per output token), an output cap above MAX_TOKENS."""
    return stub_policy(output_cap_tokens=1024, prices={MODEL: {"input_mtok": "1000", "output_mtok": "2000"}},
                       **overrides)


def bounds() -> tuple[int, int]:
    """(byte bound, exact bound) of every agent's call, in tokens; the test needs them equal across agents."""
    byte_bounds = {request_input_tokens_max(body(a), api="chat") for a in range(AGENTS)}
    exact_bounds = set()
    for a in range(AGENTS):
        recount = input_recount(body(a), api="chat")
        assert recount is not None, "bpe-openai (the exact extra) is installed with the dev extra"
        exact_bounds.add(recount(MODEL))
    assert len(byte_bounds) == 1 and len(exact_bounds) == 1, (byte_bounds, exact_bounds)
    (by_bytes,), (exact,) = byte_bounds, exact_bounds
    assert exact is not None and exact < by_bytes
    return by_bytes, exact


def ceiling(input_tokens: int) -> int:
    """The ceiling of one call with ``input_tokens`` of input, millicents."""
    price = price_book(policy()).price(MODEL, datetime.now(UTC))
    return ceiling_mc(price, input_tokens_max=input_tokens, output_tokens_max=MAX_TOKENS)


def start(make_gateway: GatewayFactory, stub: StubUpstream, limit_mc: int) -> Harness:
    """A gateway serving the model from the stub, with a tenant budget of ``limit_mc``."""
    return make_gateway(policy(budgets=[{"level": "tenant", "tenant": "acme", "limit_mc": limit_mc}]),
                        providers={"stub": ProviderConfig(base_url=stub.base_url)}, models={MODEL: "stub"})


async def race(url: str, key: str) -> Counter[tuple[int, str | None]]:
    """Every agent's one call at once (each its own agent of the tenant): (status, refusal code) counts."""
    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=60)

    async def one(agent: int) -> tuple[int, str | None]:
        try:
            await client.chat.completions.create(**body(agent),
                                                 extra_headers={"x-comptroller-agent": f"agent{agent:02d}"})
        except openai.RateLimitError as exc:
            return 429, exc.response.json()["error"]["code"]
        return 200, None

    try:
        return Counter(await asyncio.gather(*(one(a) for a in range(AGENTS))))
    finally:
        await client.close()


@pytest.mark.timeout(180)
@pytest.mark.parametrize("exact", [True, False], ids=["exact recount", "byte bound only"])
def test_a_racing_wave_near_the_edge_gets_exactly_the_calls_that_fit(make_gateway: GatewayFactory,
                                                                    stub: StubUpstream, exact: bool,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """With the recount, 64 racing agents get the 10 calls the budget fits (the byte bound alone: 8), never more."""
    by_bytes, by_tokens = bounds()
    limit_mc = FIT * ceiling(by_tokens)
    held = by_tokens if exact else by_bytes
    expected = limit_mc // ceiling(held)
    assert (limit_mc // ceiling(by_tokens), limit_mc // ceiling(by_bytes)) == (10, 8)  # the numbers
    if not exact:  # as without the exact extra installed
        monkeypatch.setattr(pipeline, "input_recount", lambda body, *, api: None)
    gw = start(make_gateway, stub, limit_mc)
    stub.control.latency_s = 0.05  # the whole wave is in flight at once
    stub.control.usage_override.update(prompt_tokens=held, completion_tokens=MAX_TOKENS,
                                       total_tokens=held + MAX_TOKENS)
    outcomes = asyncio.run(race(gw.url, gw.key))
    assert outcomes == Counter({(200, None): expected, (429, "budget_exceeded"): AGENTS - expected})
    records = list(gw.engine.store.usage_records())
    assert len(records) == len(stub.control.requests) == expected
    assert all(r.cost_mc == ceiling(held) for r in records)  # each held on the bound it was admitted with
    (account,) = gw.engine.store.accounts()
    assert account.settled_mc == expected * ceiling(held) <= limit_mc and account.reserved_mc == 0
    assert len(list(gw.engine.store.events("refusal"))) == AGENTS - expected  # one per refused call, no more
