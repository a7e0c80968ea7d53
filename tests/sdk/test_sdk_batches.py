"""Batches through the wrapped official clients against the batch stub on loopback: reserved whole at create, at
batch prices, settled per custom_id once the batch ends, failed lines released, a second reconcile a no-op.

Expected money: the policy's per-token rates (``sdk_kit.RATES_MC``) less the ``[batch]`` discount, times the
stub's documented token counts (``stub_batches``: input = ``stub_input_tokens``, output = min(reply words, the
request's max_tokens)).
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest
from sdk_kit import CAP, MODEL, RATES_MC, sdk_policy
from stub_batches import BatchStub, stub_input_tokens

from comptroller.batch_config import BatchSection
from comptroller.bootstrap import build_engine
from comptroller.domain.batches import BatchInputError
from comptroller.domain.state import StateKey
from comptroller.domain.tokens import request_input_tokens_max
from comptroller.domain.usage import Usage
from comptroller.sdk import Comptroller
from comptroller.sdk.batch_ledger import SDK_BATCH
from comptroller.sdk.errors import BudgetExceededError

DISCOUNT_PCT = 50
REPLY_WORDS = 20
LINES = 100
MAX_TOKENS = 48  # above CAP: the SDK sends CAP (Anthropic); an OpenAI file line must be within it
IN_MC, OUT_MC = (RATES_MC[k] * (100 - DISCOUNT_PCT) // 100 for k in ("input", "output"))


@pytest.fixture
def stub() -> Iterator[BatchStub]:
    """A fresh batch stub per test."""
    with BatchStub() as server:
        server.control.reply_words = REPLY_WORDS
        yield server


def _comptroller(tmp_path: Path, limit_mc: int = 10**9) -> Comptroller:
    budgets = [{"level": "tenant", "tenant": "acme", "limit_mc": limit_mc}]
    policy = sdk_policy(budgets=budgets)
    engine = build_engine(db_url=f"sqlite:///{tmp_path / 'ledger.db'}", policy=policy)
    return Comptroller(engine, namespace=policy.namespace, tenant="acme", batch=BatchSection(discount_pct=DISCOUNT_PCT))


def _params(i: int, max_tokens: int = MAX_TOKENS) -> dict[str, Any]:
    words = " ".join(f"w{i}x{k}" for k in range(2 + i % 7))
    return {"model": MODEL, "max_tokens": max_tokens, "messages": [{"role": "user", "content": f"ask {i}: {words}"}]}


def _requests(n: int = LINES) -> list[dict[str, Any]]:
    return [{"custom_id": f"r{i}", "params": _params(i)} for i in range(n)]


def _cost_mc(params: dict[str, Any], max_tokens_sent: int) -> int:
    """What the stub's usage for one succeeded line costs at the batch rates."""
    return stub_input_tokens(params["messages"]) * IN_MC + min(REPLY_WORDS, max_tokens_sent) * OUT_MC


def _ceiling_mc(params: dict[str, Any], output_tokens_max: int, api: Any = "messages") -> int:
    """A line's hold: every input token at the highest input-side batch rate (a cache write here), rounded up."""
    input_rate = Fraction(max(RATES_MC["input"], RATES_MC["cache_read"], RATES_MC["cache_write"]) *
                          (100 - DISCOUNT_PCT), 100)
    return math.ceil(request_input_tokens_max(params, api=api) * input_rate + output_tokens_max * OUT_MC)


def _bound_mc(params: dict[str, Any], output_tokens_max: int) -> int:
    """A line charged its bound (input bound and output bound as plain input and output tokens)."""
    return request_input_tokens_max(params, api="messages") * IN_MC + output_tokens_max * OUT_MC


def _costs(comptroller: Comptroller) -> dict[str, int]:
    """Settled cost by custom_id (the last part of each line's idempotency key)."""
    return {r.idempotency_key.rsplit("|", 1)[1]: r.cost_mc for r in comptroller.engine.store.usage_records()}


def _money(comptroller: Comptroller) -> tuple[int, int]:
    accounts = comptroller.engine.store.accounts()
    return sum(a.reserved_mc for a in accounts), sum(a.settled_mc for a in accounts)


def _anthropic(comptroller: Comptroller, stub: BatchStub, *, is_async: bool = False) -> Any:
    make = anthropic.AsyncAnthropic if is_async else anthropic.Anthropic
    return comptroller.wrap(make(base_url=stub.base_url.removesuffix("/v1"), api_key="k", max_retries=0))


def _openai(comptroller: Comptroller, stub: BatchStub) -> Any:
    return comptroller.wrap(openai.OpenAI(base_url=stub.base_url, api_key="k", max_retries=0))


def test_anthropic_batch_over_the_budget_is_refused_whole(tmp_path: Path, stub: BatchStub) -> None:
    """A message batch whose ceilings exceed the remaining budget raises the refusal, holds nothing, sends nothing."""
    requests = _requests()
    total = sum(_ceiling_mc(r["params"], CAP) for r in requests)
    comptroller = _comptroller(tmp_path, limit_mc=total - 1)
    with pytest.raises(BudgetExceededError):
        _anthropic(comptroller, stub).messages.batches.create(requests=requests)
    assert stub.control.message_batches == {}
    assert _money(comptroller) == (0, 0)


def test_anthropic_batch_settles_per_custom_id_at_batch_prices(tmp_path: Path, stub: BatchStub) -> None:
    """Every line is reserved at create with max_tokens lowered to the cap; retrieve of the ended batch settles
    each succeeded custom_id from its usage, releases errored ones, charges a missing one its bound and reports
    it and a duplicate; retrieving and reading the results again changes nothing."""
    requests = _requests()
    stub.control.fail_ids = {"r1", "r5", "r90"}
    stub.control.drop_ids = {"r13"}
    stub.control.duplicate_ids = {"r17"}
    stub.control.finish_on_create = False
    comptroller = _comptroller(tmp_path, limit_mc=10**9)
    client = _anthropic(comptroller, stub)
    batch = client.messages.batches.create(requests=requests)
    sent = stub.control.message_batches[batch.id]["_requests"]
    assert [r["params"]["max_tokens"] for r in sent] == [CAP] * LINES
    ceilings = {r["custom_id"]: _ceiling_mc(r["params"], CAP) for r in requests}
    assert _money(comptroller) == (sum(ceilings.values()), 0)
    assert comptroller.leases.held == LINES  # renewed in the background until reconciled
    assert client.messages.batches.retrieve(batch.id).processing_status == "in_progress"
    assert comptroller.batch_report(batch.id) == {}
    stub.control.finish(batch.id)
    client.messages.batches.retrieve(batch.id)
    by_id = {r["custom_id"]: r["params"] for r in requests}
    expected = {cid: _cost_mc(p, CAP) for cid, p in by_id.items() if cid not in stub.control.fail_ids | {"r13"}}
    expected["r17"] *= 2  # returned twice: both successes are charged, and it is reported
    expected["r13"] = _bound_mc(by_id["r13"], CAP)  # not returned by an ended batch: its bound (outcome unknown)
    assert _costs(comptroller) == expected
    assert _money(comptroller) == (0, sum(expected.values()))
    assert comptroller.leases.held == 0
    report = comptroller.batch_report(batch.id)
    assert report is not None
    assert (report["settled"], report["released"], report["cost_mc"]) == (LINES - 3, 3, sum(expected.values()))
    assert (report["missing_custom_ids"], report["duplicate_custom_ids"]) == (["r13"], ["r17"])
    events = comptroller.engine.store.events("batch")
    assert [(e.code, e.detail["batch_id"]) for e in events] == [("batch_mismatch", batch.id)]
    list(client.messages.batches.results(batch.id))
    client.messages.batches.retrieve(batch.id)
    assert _costs(comptroller) == expected and _money(comptroller) == (0, sum(expected.values()))
    assert len(comptroller.engine.store.events("batch")) == 1


def test_async_anthropic_results_reconcile_and_hand_back_every_result(tmp_path: Path, stub: BatchStub) -> None:
    """With the async client, reading results of an ended batch settles it and yields every result to the caller."""
    requests = _requests(6)
    stub.control.fail_ids = {"r2"}
    comptroller = _comptroller(tmp_path)
    client = _anthropic(comptroller, stub, is_async=True)

    async def run() -> list[Any]:
        batch = await client.messages.batches.create(requests=requests)
        return [item async for item in await client.messages.batches.results(batch.id)]

    items = asyncio.run(run())
    assert sorted(i.custom_id for i in items) == [f"r{i}" for i in range(6)]
    expected = {r["custom_id"]: _cost_mc(r["params"], CAP) for r in requests if r["custom_id"] != "r2"}
    assert _costs(comptroller) == expected
    assert _money(comptroller) == (0, sum(expected.values()))


def _upload(client: Any, lines: list[dict[str, Any]]) -> str:
    content = b"".join(json.dumps(line).encode() + b"\n" for line in lines)
    return str(client.files.create(file=("batch.jsonl", content), purpose="batch").id)


def _openai_lines(n: int, max_tokens: int | None = CAP) -> list[dict[str, Any]]:
    lines = []
    for i in range(n):
        body = _params(i)
        body.pop("max_tokens")
        if max_tokens is not None:
            body["max_tokens"] = max_tokens
        lines.append({"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions", "body": body})
    return lines


def test_openai_batch_settles_per_custom_id_and_failed_lines_are_released(tmp_path: Path, stub: BatchStub) -> None:
    """batches.create reserves every line of the uploaded file at the batch price; retrieve of the completed batch
    settles each custom_id from the output file and releases the error file's lines; a second retrieve is a no-op."""
    stub.control.fail_ids = {"r0", "r3", "r4"}
    stub.control.finish_on_create = False
    comptroller = _comptroller(tmp_path, limit_mc=10**9)
    client = _openai(comptroller, stub)
    lines = _openai_lines(LINES)
    file_id = _upload(client, lines)
    batch = client.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h")
    ceilings = {line["custom_id"]: _ceiling_mc(line["body"], CAP, "chat") for line in lines}
    assert _money(comptroller) == (sum(ceilings.values()), 0)
    stub.control.finish(batch.id)
    assert client.batches.retrieve(batch.id).status == "completed"
    expected = {line["custom_id"]: _cost_mc(line["body"], CAP) for line in lines
                if line["custom_id"] not in stub.control.fail_ids}
    assert _costs(comptroller) == expected
    assert _money(comptroller) == (0, sum(expected.values()))
    report = comptroller.batch_report(batch.id)
    assert report is not None and (report["released"], report["missing"]) == (3, 0)
    client.batches.retrieve(batch.id)
    assert _costs(comptroller) == expected and _money(comptroller) == (0, sum(expected.values()))


def test_async_openai_batch_reads_the_file_and_settles_on_retrieve(tmp_path: Path, stub: BatchStub) -> None:
    """With the async client, create downloads the input file to reserve it, and retrieve settles the batch."""
    stub.control.fail_ids = {"r1"}
    comptroller = _comptroller(tmp_path)
    lines = _openai_lines(5)
    client = comptroller.wrap(openai.AsyncOpenAI(base_url=stub.base_url, api_key="k", max_retries=0))

    async def run() -> None:
        content = b"".join(json.dumps(line).encode() + b"\n" for line in lines)
        uploaded = await client.files.create(file=("batch.jsonl", content), purpose="batch")
        batch = await client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                            completion_window="24h")
        await client.batches.retrieve(batch.id)

    asyncio.run(run())
    expected = {line["custom_id"]: _cost_mc(line["body"], CAP) for line in lines if line["custom_id"] != "r1"}
    assert _costs(comptroller) == expected
    assert _money(comptroller) == (0, sum(expected.values()))


def test_openai_batch_over_the_budget_or_uncapped_is_refused_before_it_is_sent(tmp_path: Path,
                                                                             stub: BatchStub) -> None:
    """A batch file over the budget, or with a line whose output limit the cap would lower, creates no batch and
    holds nothing."""
    lines = _openai_lines(8)
    total = sum(_ceiling_mc(line["body"], CAP, "chat") for line in lines)
    comptroller = _comptroller(tmp_path, limit_mc=total - 1)
    client = _openai(comptroller, stub)
    with pytest.raises(BudgetExceededError):
        client.batches.create(input_file_id=_upload(client, lines), endpoint="/v1/chat/completions",
                              completion_window="24h")
    with pytest.raises(BatchInputError, match="max_tokens"):
        client.batches.create(input_file_id=_upload(client, _openai_lines(2, max_tokens=CAP + 1)),
                              endpoint="/v1/chat/completions", completion_window="24h")
    assert stub.control.batches == {}
    assert _money(comptroller) == (0, 0)


def test_a_restarted_process_reconciles_a_batch_from_the_ledger(tmp_path: Path, stub: BatchStub) -> None:
    """A batch created by one Comptroller is settled by another on the same ledger (the sdk_batch state row):
    reconcile_batches leaves a running batch open and reconciles it once it has ended."""
    stub.control.finish_on_create = False
    requests = _requests(5)
    first = _comptroller(tmp_path)
    batch = _anthropic(first, stub).messages.batches.create(requests=requests)
    second = _comptroller(tmp_path)
    raw = anthropic.Anthropic(base_url=stub.base_url.removesuffix("/v1"), api_key="k", max_retries=0)
    assert second.reconcile_batches(raw) == []
    stub.control.finish(batch.id)
    assert second.reconcile_batches(raw) == [batch.id]
    expected = {r["custom_id"]: _cost_mc(r["params"], CAP) for r in requests}
    assert _costs(second) == expected
    assert _money(second) == (0, sum(expected.values()))


def test_beta_message_batches_are_metered_like_message_batches(tmp_path: Path, stub: BatchStub) -> None:
    """beta.messages.batches.create reserves every line and its retrieve settles the ended batch per custom_id."""
    requests = _requests(4)
    comptroller = _comptroller(tmp_path)
    client = _anthropic(comptroller, stub)
    batch = client.beta.messages.batches.create(requests=requests)
    client.beta.messages.batches.retrieve(batch.id)
    expected = {r["custom_id"]: _cost_mc(r["params"], CAP) for r in requests}
    assert _costs(comptroller) == expected
    assert _money(comptroller) == (0, sum(expected.values()))


def test_a_reconcile_cut_short_is_finished_by_the_next_one_without_double_charges(tmp_path: Path,
                                                                                  stub: BatchStub) -> None:
    """Lines settled by a pass that died before marking the batch are not charged again, and the report's cost
    still counts them."""
    requests = _requests(4)
    comptroller = _comptroller(tmp_path)
    client = _anthropic(comptroller, stub)
    batch = client.messages.batches.create(requests=requests)
    stored = comptroller.engine.store.state(StateKey(SDK_BATCH, batch.id))
    assert stored is not None
    reservation = comptroller.engine.store.reservation(json.loads(str(stored.record["lines"]))["r0"])
    assert reservation is not None
    params = requests[0]["params"]
    comptroller.batches.engine.settle(reservation, Usage(input_tokens=stub_input_tokens(params["messages"]),
                                                         output_tokens=min(REPLY_WORDS, CAP)))
    client.messages.batches.retrieve(batch.id)
    expected = {r["custom_id"]: _cost_mc(r["params"], CAP) for r in requests}
    assert _costs(comptroller) == expected
    report = comptroller.batch_report(batch.id)
    assert report is not None and report["cost_mc"] == sum(expected.values())
