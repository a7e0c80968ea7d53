"""The SDK's wrapped client recounts an OpenAI model's input near a budget's edge, as the gateway does."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import openai
from sdk_kit import comptroller_with, sdk_policy
from stub_upstream import StubUpstream

from comptroller.bootstrap import price_book
from comptroller.domain.pricing import ceiling_mc
from comptroller.domain.tokens import request_input_tokens_max
from comptroller.exact_input import input_recount

MODEL = "gpt-4o-mini"
PRICES = {MODEL: {"input_mtok": "1000", "output_mtok": "2000"}}
OUTPUT = 16
MESSAGES = [{"role": "system", "content": "You are Programmer. We are both working at ChatDev."},
            {"role": "user", "content": "Write a Python function that returns the n-th Fibonacci number."}]


def test_a_call_that_fits_only_on_its_exact_input_is_served(stub: StubUpstream, tmp_path: Path) -> None:
    """A budget below the byte-bound ceiling but above the recounted one serves the call, with no refusal."""
    body = {"model": MODEL, "messages": MESSAGES, "max_tokens": OUTPUT}
    recount = input_recount(body, api="chat")
    assert recount is not None
    exact, by_bytes = recount(MODEL), request_input_tokens_max(body, api="chat")
    assert exact is not None and exact < by_bytes
    price = price_book(sdk_policy(prices=PRICES)).price(MODEL, datetime.now(UTC))
    limit = ceiling_mc(price, input_tokens_max=by_bytes, output_tokens_max=OUTPUT) - 1  # the byte bound is refused
    assert ceiling_mc(price, input_tokens_max=exact, output_tokens_max=OUTPUT) <= limit
    policy = sdk_policy(prices=PRICES, budgets=[{"level": "tenant", "tenant": "acme", "limit_mc": limit}])
    comptroller = comptroller_with(tmp_path, policy)
    client = comptroller.wrap(openai.OpenAI(base_url=stub.base_url, api_key="unused", max_retries=0), agent="dev")
    client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=OUTPUT)  # type: ignore[arg-type]
    (record,) = comptroller.engine.store.usage_records()
    assert len(stub.control.requests) == 1 and record.cost_mc <= limit
    assert list(comptroller.engine.store.events("refusal")) == []
