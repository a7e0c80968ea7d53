"""Anthropic Message Batches through the gateway, driven by the official ``anthropic`` client against a stub.

Expected money comes from genai-prices' batch rates for the model (cache reads included) times the
stub's documented token counts, rounded as the ledger rounds.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import ROUND_CEILING, ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import anthropic
import pytest
from genai_prices import data_snapshot
from stub_batches import BatchStub, GatewayUnderTest, start_gateway, stub_input_tokens

from comptroller.config import Policy
from comptroller.domain.tokens import request_input_tokens_max

MODEL = "claude-haiku-4-5"
MAX_TOKENS = 48
REPLY_WORDS = 30
CACHE_READ = 4
_PER = Decimal(1_000_000)
_MC = Decimal(100_000)


def _rates() -> dict[str, Decimal]:
    _, info = data_snapshot.get_snapshot().find_provider_model(MODEL, None, None, None)
    price = info.get_prices(datetime.now(UTC), {"processing": "batch"})
    assert price != info.get_prices(datetime.now(UTC)), f"genai-prices has no batch price for {MODEL}"
    return {"input": Decimal(price.input_mtok), "output": Decimal(price.output_mtok),
            "cache_read": Decimal(price.cache_read_mtok), "cache_write_1h": Decimal(price.cache_write_1h_mtok)}


def _params(i: int) -> dict[str, Any]:
    words = " ".join(f"t{i}y{k}" for k in range(3 + i % 11))
    return {"model": MODEL, "max_tokens": MAX_TOKENS, "messages": [{"role": "user", "content": f"ask {i}: {words}"}]}


@pytest.fixture
def stub() -> Iterator[BatchStub]:
    """A fresh stub provider per test."""
    with BatchStub() as server:
        server.control.reply_words = REPLY_WORDS
        yield server


@pytest.fixture
def make(tmp_path: Path, stub: BatchStub) -> Iterator[Any]:
    """Start a gateway on the stub with a tenant budget of ``limit_mc``."""
    started: list[GatewayUnderTest] = []

    def start(limit_mc: int = 10**9) -> GatewayUnderTest:
        policy = Policy.model_validate({"namespace": "test", "output_cap_tokens": 64,
                                        "budgets": [{"level": "tenant", "tenant": "acme", "limit_mc": limit_mc}]})
        gw = start_gateway(tmp_path, stub, policy, {MODEL: "anthropic", "gpt-4o": "openai"})
        started.append(gw)
        return gw

    yield start
    for gw in started:
        gw.server.__exit__(None, None, None)


def _client(gw: GatewayUnderTest, key: str | None = None) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gw.url, api_key=key or gw.key, max_retries=0, timeout=30)


def test_a_message_batch_of_100_is_reserved_whole_and_settled_per_custom_id(make: Any, stub: BatchStub) -> None:
    """Every request is held at create; at the end each succeeded custom_id is charged its usage (cache reads
    at the batch cache rate), 3 errored are released, a missing one is charged its bound and reported."""
    rates = _rates()
    gw = make()
    params = {f"q-{i}": _params(i) for i in range(100)}
    failed, dropped = {"q-0", "q-42", "q-99"}, "q-13"
    stub.control.fail_ids, stub.control.drop_ids, stub.control.cache_read_tokens = failed, {dropped}, CACHE_READ
    client = _client(gw)

    batch = client.messages.batches.create(requests=[{"custom_id": c, "params": p} for c, p in params.items()])

    input_max = max(rates["input"], rates["cache_read"], rates["cache_write_1h"])
    bounds = {c: request_input_tokens_max(p, api="messages") for c, p in params.items()}
    ceiling = sum(int(((input_max * bounds[c] + rates["output"] * MAX_TOKENS) / _PER * _MC)
                      .quantize(Decimal(1), rounding=ROUND_CEILING)) for c in params)
    assert batch.model_extra is not None
    assert batch.model_extra["comptroller_reconciliation"]["ceiling_mc"] == ceiling == gw.reserved_mc()
    done = client.messages.batches.retrieve(batch.id)
    assert done.processing_status == "ended"
    expected = {}
    for custom_id, p in params.items():
        if custom_id in failed:
            continue
        if custom_id == dropped:
            usd = rates["input"] * bounds[custom_id] + rates["output"] * MAX_TOKENS
        else:
            usd = (rates["input"] * stub_input_tokens(p["messages"]) + rates["cache_read"] * CACHE_READ
                   + rates["output"] * min(REPLY_WORDS, MAX_TOKENS))
        expected[custom_id] = int((usd / _PER * _MC).quantize(Decimal(1), rounding=ROUND_HALF_UP))
    assert gw.usage_costs() == expected
    assert gw.reserved_mc() == 0
    report = (done.model_extra or {})["comptroller_reconciliation"]
    assert (report["settled"], report["released"], report["missing_custom_ids"]) == (97, 3, [dropped])
    results = {r.custom_id: r.result.type for r in client.messages.batches.results(batch.id)}
    assert len(results) == 99 and results["q-42"] == "errored"


def test_a_message_batch_over_budget_is_refused_whole_in_anthropics_shape(make: Any, stub: BatchStub) -> None:
    """A batch that does not fit is refused with a 429 the anthropic client raises as RateLimitError; no hold
    is left and the provider sees no batch."""
    gw = make(limit_mc=50)
    params = [{"custom_id": f"q-{i}", "params": _params(i)} for i in range(20)]

    with pytest.raises(anthropic.RateLimitError) as refused:
        _client(gw).messages.batches.create(requests=params)  # type: ignore[arg-type]

    body = refused.value.body
    assert isinstance(body, dict) and body["type"] == "error" and body["error"]["code"] == "budget_exceeded"
    assert stub.control.message_batches == {}
    assert gw.reserved_mc() == 0


def test_a_tenant_cannot_read_another_tenants_message_batch(make: Any, stub: BatchStub) -> None:
    """Another tenant's key gets Anthropic's not_found for the batch, its results and its cancel."""
    gw = make()
    batch = _client(gw).messages.batches.create(requests=[{"custom_id": "a", "params": _params(1)}])  # type: ignore[list-item]
    other = _client(gw, gw.new_key("globex"))
    with pytest.raises(anthropic.NotFoundError):
        other.messages.batches.retrieve(batch.id)
    with pytest.raises(anthropic.NotFoundError):
        other.messages.batches.cancel(batch.id)
    with pytest.raises(anthropic.NotFoundError):
        list(other.messages.batches.results(batch.id))


def test_a_request_without_max_tokens_is_refused_naming_it(make: Any, stub: BatchStub) -> None:
    """A request missing Anthropic's required max_tokens is a 400 naming it; nothing is held or sent."""
    gw = make()
    params = {k: v for k, v in _params(1).items() if k != "max_tokens"}
    with pytest.raises(anthropic.BadRequestError) as bad:
        _client(gw).messages.batches.create(requests=[{"custom_id": "a", "params": params}])  # type: ignore[list-item]
    body = bad.value.body
    assert isinstance(body, dict) and body["error"]["param"] == "requests[0].params.max_tokens"
    assert stub.control.message_batches == {} and gw.reserved_mc() == 0


def test_a_message_batch_for_a_model_of_another_api_family_is_refused(make: Any, stub: BatchStub) -> None:
    """A model served by an OpenAI-kind provider cannot be sent as an Anthropic message batch (nothing translated)."""
    gw = make()
    params = {**_params(1), "model": "gpt-4o"}
    with pytest.raises(anthropic.BadRequestError) as bad:
        _client(gw).messages.batches.create(requests=[{"custom_id": "a", "params": params}])  # type: ignore[list-item]
    assert isinstance(bad.value.body, dict) and bad.value.body["error"]["code"] == "model_not_found"
    assert stub.control.message_batches == {} and gw.reserved_mc() == 0


def test_a_cancelled_message_batch_releases_its_canceled_requests(make: Any, stub: BatchStub) -> None:
    """Cancelled while running, every request comes back ``canceled`` and is released; nothing is charged."""
    gw = make()
    stub.control.finish_on_create = False
    client = _client(gw)
    batch = client.messages.batches.create(requests=[{"custom_id": f"q-{i}", "params": _params(i)}  # type: ignore[misc]
                                                     for i in range(3)])
    assert gw.reserved_mc() > 0

    client.messages.batches.cancel(batch.id)
    report = (client.messages.batches.retrieve(batch.id).model_extra or {})["comptroller_reconciliation"]

    assert (report["released"], report["settled"], report["missing"]) == (3, 0, 0)
    assert gw.reserved_mc() == 0 and gw.settled_mc() == 0


def test_the_same_message_batch_sent_twice_is_created_once(make: Any, stub: BatchStub) -> None:
    """A create retried with the same body (the client's retry after a timeout) answers the first batch."""
    gw = make()
    stub.control.finish_on_create = False
    requests = [{"custom_id": f"q-{i}", "params": _params(i)} for i in range(3)]
    client = _client(gw)
    first = client.messages.batches.create(requests=requests)  # type: ignore[arg-type]
    held = gw.reserved_mc()

    again = client.messages.batches.create(requests=requests)  # type: ignore[arg-type]

    assert again.id == first.id
    assert len(stub.control.message_batches) == 1 and gw.reserved_mc() == held
