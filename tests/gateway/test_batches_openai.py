"""The OpenAI Batch API through the gateway, driven by the official ``openai`` client against a stub provider.

Expected money is derived here from genai-prices' batch rates (``processing = batch``) or the
policy's discount, times the stub's documented token counts, rounded as the ledger rounds
(half up for a cost, up for a ceiling): never pasted.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import ROUND_CEILING, ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from gateway_kit import wait_for
from genai_prices import data_snapshot
from stub_batches import BatchStub, GatewayUnderTest, start_gateway, stub_input_tokens

from comptroller.batch_config import BatchSection
from comptroller.config import Policy
from comptroller.domain.state import StateKey
from comptroller.domain.tokens import request_input_tokens_max

MODEL = "gpt-4o"          # genai-prices has a batch price for it
LOCAL = "stub-model"      # priced by the policy; batch price from [batch] discount_pct
MAX_TOKENS = 40
REPLY_WORDS = 25
_MC_PER_USD = Decimal(100_000)
_PER = Decimal(1_000_000)


def _batch_rates(model: str) -> tuple[Decimal, Decimal]:
    """genai-prices' batch input and output rates, USD per million tokens, now."""
    _, info = data_snapshot.get_snapshot().find_provider_model(model, None, None, None)
    price = info.get_prices(datetime.now(UTC), {"processing": "batch"})
    assert price != info.get_prices(datetime.now(UTC)), f"genai-prices has no batch price for {model}"
    return Decimal(price.input_mtok), Decimal(price.output_mtok)


def _cost_mc(rates: tuple[Decimal, Decimal], input_tokens: int, output_tokens: int) -> int:
    usd = (rates[0] * input_tokens + rates[1] * output_tokens) / _PER
    return int((usd * _MC_PER_USD).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def _ceiling_mc(rates: tuple[Decimal, Decimal], input_tokens: int, output_tokens: int) -> int:
    usd = (rates[0] * input_tokens + rates[1] * output_tokens) / _PER
    return int((usd * _MC_PER_USD).quantize(Decimal(1), rounding=ROUND_CEILING))


def _body(i: int, model: str = MODEL) -> dict[str, Any]:
    words = " ".join(f"w{i}x{k}" for k in range(5 + i % 17))
    return {"model": model, "messages": [{"role": "user", "content": f"question {i}: {words}"}],
            "max_tokens": MAX_TOKENS}


def _jsonl(bodies: dict[str, dict[str, Any]]) -> bytes:
    rows = [{"custom_id": cid, "method": "POST", "url": "/v1/chat/completions", "body": b} for cid, b in bodies.items()]
    return "\n".join(json.dumps(r) for r in rows).encode()


def _policy(**extra: Any) -> Policy:
    return Policy.model_validate({"namespace": "test", "output_cap_tokens": 64,
                                  "prices": {LOCAL: {"input_mtok": "1000", "output_mtok": "2000"}}, **extra})


@pytest.fixture
def stub() -> Iterator[BatchStub]:
    """A fresh stub provider per test."""
    with BatchStub() as server:
        server.control.reply_words = REPLY_WORDS
        yield server


@pytest.fixture
def make(tmp_path: Path, stub: BatchStub) -> Iterator[Any]:
    """Start a gateway on the stub with a policy (and [batch] section)."""
    started: list[GatewayUnderTest] = []

    def start(policy: Policy | None = None, batch: BatchSection | None = None) -> GatewayUnderTest:
        gw = start_gateway(tmp_path, stub, policy or _policy(), {MODEL: "openai", LOCAL: "openai"}, batch=batch)
        started.append(gw)
        return gw

    yield start
    for gw in started:
        gw.server.__exit__(None, None, None)


def _client(gw: GatewayUnderTest, key: str | None = None) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gw.url}/v1", api_key=key or gw.key, max_retries=0, timeout=30)


def _submit(gw: GatewayUnderTest, bodies: dict[str, dict[str, Any]], key: str | None = None) -> Any:
    client = _client(gw, key)
    file = client.files.create(file=("batch.jsonl", _jsonl(bodies)), purpose="batch")
    return client.batches.create(input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h")


def _ledger(gw: GatewayUnderTest) -> tuple[Any, ...]:
    """Everything a reconcile could change: accounts, usage rows, reservations' states, events."""
    snapshot = gw.engine.store.ledger_snapshot()
    return (sorted((a.scope, a.settled_mc, a.reserved_mc) for a in gw.engine.store.accounts()),
            sorted((r.reservation_id, r.cost_mc, r.outcome) for r in gw.engine.store.usage_records()),
            repr(snapshot), len(gw.engine.store.events()))


def test_a_batch_of_100_is_reserved_whole_and_settled_per_custom_id_at_batch_prices(make: Any, stub: BatchStub) -> None:
    """100 lines are all held at create; at the end each custom_id is charged its usage at the batch rate,
    3 failed lines are released, a missing one is charged its bound and reported, a duplicate reported."""
    rates = _batch_rates(MODEL)
    budget = 10**9
    gw = make(_policy(budgets=[{"level": "tenant", "tenant": "acme", "limit_mc": budget}]))
    bodies = {f"req-{i}": _body(i) for i in range(100)}
    failed, dropped, twice = {"req-3", "req-50", "req-97"}, "req-10", "req-7"
    stub.control.fail_ids, stub.control.drop_ids, stub.control.duplicate_ids = failed, {dropped}, {twice}
    bounds = {cid: request_input_tokens_max(b, api="chat") for cid, b in bodies.items()}
    ceiling = sum(_ceiling_mc(rates, bounds[cid], MAX_TOKENS) for cid in bodies)

    batch = _submit(gw, bodies)

    assert batch.model_extra["comptroller_reconciliation"] == {"status": "open", "lines": 100, "ceiling_mc": ceiling}
    assert gw.reserved_mc() == ceiling
    report = _client(gw).batches.retrieve(batch.id).model_extra["comptroller_reconciliation"]
    expected = {}
    for cid, body in bodies.items():
        if cid in failed:
            continue
        tokens = stub_input_tokens(body["messages"]), min(REPLY_WORDS, MAX_TOKENS)
        if cid == dropped:
            tokens = bounds[cid], MAX_TOKENS
        if cid == twice:
            tokens = 2 * tokens[0], 2 * tokens[1]
        expected[cid] = _cost_mc(rates, *tokens)
    assert gw.usage_costs() == expected
    assert gw.reserved_mc() == 0
    assert gw.settled_mc() == sum(expected.values())
    assert report["cost_mc"] == sum(expected.values())
    assert (report["settled"], report["released"]) == (97, 3)
    assert (report["missing_custom_ids"], report["duplicate_custom_ids"]) == ([dropped], [twice])
    events = [e for e in gw.engine.store.events("batch")]
    assert [(e.code, e.detail["batch_id"], e.detail["missing_custom_ids"]) for e in events] == \
        [("batch_mismatch", batch.id, [dropped])]


def test_reconciling_again_changes_nothing(make: Any, stub: BatchStub) -> None:
    """A second retrieve of an ended batch answers the same report and leaves the ledger as it was."""
    gw = make(_policy(budgets=[{"level": "tenant", "tenant": "acme", "limit_mc": 10**9}]))
    stub.control.fail_ids = {"req-2"}
    batch = _submit(gw, {f"req-{i}": _body(i) for i in range(10)})
    client = _client(gw)
    first = client.batches.retrieve(batch.id).model_extra["comptroller_reconciliation"]
    before = _ledger(gw)

    second = client.batches.retrieve(batch.id).model_extra["comptroller_reconciliation"]

    assert second == first
    assert _ledger(gw) == before


def test_a_batch_larger_than_the_budget_is_refused_whole_and_never_sent(make: Any, stub: BatchStub) -> None:
    """With money for only part of the lines, create is refused (429, the first refused line named), no line
    stays held and the provider sees no batch."""
    rates = _batch_rates(MODEL)
    bodies = {f"req-{i}": _body(i) for i in range(100)}
    ceilings = [_ceiling_mc(rates, request_input_tokens_max(b, api="chat"), MAX_TOKENS) for b in bodies.values()]
    limit = sum(ceilings[:60])  # exactly the first 60 lines fit
    gw = make(_policy(budgets=[{"level": "tenant", "tenant": "acme", "limit_mc": limit}]))

    with pytest.raises(openai.RateLimitError) as refused:
        _submit(gw, bodies)

    error = refused.value.body
    assert isinstance(error, dict)
    assert error["code"] == "budget_exceeded"
    assert "'req-60'" in error["message"]
    assert refused.value.response.headers.get("x-should-retry") == "false"
    assert stub.control.batches == {}
    assert gw.reserved_mc() == 0
    assert not list(gw.engine.store.usage_records())


def test_a_tenant_cannot_see_another_tenants_batch_or_files(make: Any, stub: BatchStub) -> None:
    """Tenant B's key gets 404 for A's batch, its files, their contents and a batch on A's file; A reads its own."""
    gw = make()
    batch = _submit(gw, {f"req-{i}": _body(i) for i in range(3)})
    done = _client(gw).batches.retrieve(batch.id)
    other = _client(gw, gw.new_key("globex"))

    with pytest.raises(openai.NotFoundError):
        other.batches.retrieve(batch.id)
    with pytest.raises(openai.NotFoundError):
        other.batches.cancel(batch.id)
    for file_id in (batch.input_file_id, done.output_file_id):
        with pytest.raises(openai.NotFoundError):
            other.files.content(file_id)
        with pytest.raises(openai.NotFoundError):
            other.files.retrieve(file_id)
    with pytest.raises(openai.NotFoundError):
        other.batches.create(input_file_id=batch.input_file_id, endpoint="/v1/chat/completions",
                             completion_window="24h")
    own = _client(gw).files.content(done.output_file_id).content
    assert {json.loads(row)["custom_id"] for row in own.splitlines()} == {"req-0", "req-1", "req-2"}
    assert len(stub.control.batches) == 1


def test_the_background_reconciler_settles_a_batch_nobody_retrieves(make: Any, stub: BatchStub) -> None:
    """A batch that ends after create is reconciled by the gateway's own task within its interval."""
    gw = make(batch=BatchSection(reconcile_interval_s=0.1))
    stub.control.finish_on_create = False
    batch = _submit(gw, {f"req-{i}": _body(i) for i in range(5)})
    assert not list(gw.engine.store.usage_records())

    stub.control.finish(batch.id)

    def reconciled() -> bool:
        stored = gw.engine.store.state(StateKey("batch", batch.id))
        return stored is not None and stored.record["status"] == "reconciled"

    wait_for(reconciled, "the reconciler to mark the batch reconciled")
    assert len(list(gw.engine.store.usage_records())) == 5


def test_a_retried_create_with_the_same_idempotency_key_answers_the_same_batch(make: Any, stub: BatchStub) -> None:
    """Two creates under one Idempotency-Key make one provider batch and hold its lines once; the key reused
    for another file is a 409."""
    gw = make(_policy(budgets=[{"level": "tenant", "tenant": "acme", "limit_mc": 10**9}]))
    stub.control.finish_on_create = False
    client = _client(gw)
    file = client.files.create(file=("b.jsonl", _jsonl({f"req-{i}": _body(i) for i in range(4)})), purpose="batch")
    args = {"input_file_id": file.id, "endpoint": "/v1/chat/completions", "completion_window": "24h"}
    first = client.batches.create(**args, extra_headers={"Idempotency-Key": "create-1"})
    held = gw.reserved_mc()

    again = client.batches.create(**args, extra_headers={"Idempotency-Key": "create-1"})

    assert again.id == first.id
    assert len(stub.control.batches) == 1
    assert gw.reserved_mc() == held > 0
    other = client.files.create(file=("c.jsonl", _jsonl({"x": _body(9)})), purpose="batch")
    with pytest.raises(openai.ConflictError):
        client.batches.create(**{**args, "input_file_id": other.id}, extra_headers={"Idempotency-Key": "create-1"})
    assert len(stub.control.batches) == 1 and gw.reserved_mc() == held


def test_a_create_retried_without_a_key_answers_the_files_batch_and_a_new_key_runs_it_again(
        make: Any, stub: BatchStub) -> None:
    """Without Idempotency-Key a create is keyed by its input file (a client retry makes no second batch);
    a new key runs the file again, held again."""
    gw = make(_policy(budgets=[{"level": "tenant", "tenant": "acme", "limit_mc": 10**9}]))
    stub.control.finish_on_create = False
    client = _client(gw)
    file = client.files.create(file=("b.jsonl", _jsonl({f"req-{i}": _body(i) for i in range(3)})), purpose="batch")
    args = {"input_file_id": file.id, "endpoint": "/v1/chat/completions", "completion_window": "24h"}
    first = client.batches.create(**args)
    held = gw.reserved_mc()

    assert client.batches.create(**args).id == first.id
    assert gw.reserved_mc() == held and len(stub.control.batches) == 1
    rerun = client.batches.create(**args, extra_headers={"Idempotency-Key": "run-2"})
    assert rerun.id != first.id
    assert gw.reserved_mc() == 2 * held and len(stub.control.batches) == 2


def test_a_line_with_n_choices_holds_n_outputs_and_keeps_each_within_the_bound(make: Any, stub: BatchStub) -> None:
    """n = 3 reserves input + 3 x the output bound; the line goes upstream with the per-choice bound."""
    rates = _batch_rates(MODEL)
    gw = make(_policy(budgets=[{"level": "tenant", "tenant": "acme", "limit_mc": 10**9}]))
    stub.control.finish_on_create = False
    body = {**_body(4), "n": 3, "max_tokens": 500}  # above the cap of 64
    batch = _submit(gw, {"three": body})

    assert gw.reserved_mc() == _ceiling_mc(rates, request_input_tokens_max(body, api="chat"), 3 * 64)
    sent = json.loads(stub.control.files[batch.input_file_id][1])
    assert (sent["body"]["n"], sent["body"]["max_tokens"]) == (3, 64)


def test_without_a_genai_prices_batch_price_the_policy_discount_applies(make: Any, stub: BatchStub) -> None:
    """A model priced by the policy is reserved and settled at [batch] discount_pct off its price."""
    gw = make(batch=BatchSection(discount_pct=50))
    batch = _submit(gw, {"only": _body(1, LOCAL)})
    _client(gw).batches.retrieve(batch.id)
    rates = (Decimal("1000") / 2, Decimal("2000") / 2)
    body = _body(1, LOCAL)
    assert gw.usage_costs() == {"only": _cost_mc(rates, stub_input_tokens(body["messages"]),
                                                 min(REPLY_WORDS, MAX_TOKENS))}


def test_a_cancelled_batch_releases_its_unfinished_lines(make: Any, stub: BatchStub) -> None:
    """Cancelled before it ran, every line is released and reported missing; nothing is charged."""
    gw = make(_policy(budgets=[{"level": "tenant", "tenant": "acme", "limit_mc": 10**9}]))
    stub.control.finish_on_create = False
    batch = _submit(gw, {f"req-{i}": _body(i) for i in range(4)})
    client = _client(gw)

    client.batches.cancel(batch.id)
    report = client.batches.retrieve(batch.id).model_extra["comptroller_reconciliation"]

    assert (report["batch_status"], report["released"], report["settled"]) == ("cancelled", 4, 0)
    assert gw.reserved_mc() == 0 and gw.settled_mc() == 0


@pytest.mark.parametrize(("row", "param"), [
    ({"method": "POST", "url": "/v1/chat/completions", "body": _body(0)}, "line 1.custom_id"),
    ({"custom_id": "a", "method": "POST", "url": "/v1/responses", "body": _body(0)}, "line 1.url"),
    ({"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": {**_body(0), "n": 0}},
     "line 1: body.n"),
])
def test_a_bad_input_file_is_refused_naming_the_line_and_nothing_is_uploaded(make: Any, stub: BatchStub,
                                                                           row: dict[str, Any], param: str) -> None:
    """A line without custom_id, on an unmetered url, or with n < 1 is a 400 naming it; the provider gets nothing."""
    gw = make()
    with pytest.raises(openai.BadRequestError) as bad:
        _client(gw).files.create(file=("b.jsonl", json.dumps(row).encode()), purpose="batch")
    assert isinstance(bad.value.body, dict) and bad.value.body["param"] == param
    assert stub.control.files == {}


def test_the_reconciler_renews_the_leases_of_a_batch_still_running(make: Any, stub: BatchStub) -> None:
    """While a batch runs, its lines' leases are extended before they could run out (they outlive the batch)."""
    gw = make(batch=BatchSection(reconcile_interval_s=0.1, lease_s=600))
    stub.control.finish_on_create = False
    batch = _submit(gw, {"req-0": _body(0)})
    stored = gw.engine.store.state(StateKey("batch_lines", batch.id))
    assert stored is not None
    reservation_id = json.loads(str(stored.record["reservations"]))["req-0"]
    first = gw.engine.store.reservation(reservation_id)
    assert first is not None

    def renewed() -> bool:
        now = gw.engine.store.reservation(reservation_id)
        return now is not None and now.expires_at > first.expires_at

    wait_for(renewed, "the reconciler to renew the line's lease")


def test_a_line_served_by_another_model_or_over_its_bound_is_charged_what_ran_and_reported(
        make: Any, stub: BatchStub) -> None:
    """A result naming another model settles at that model's batch price (a served_model event); output above
    the line's bound is charged in full and listed in the report's usage_anomalies."""
    gw = make(_policy(budgets=[{"level": "tenant", "tenant": "acme", "limit_mc": 10**9}]))
    stub.control.served_model, stub.control.output_tokens = "gpt-4o-mini", MAX_TOKENS + 7
    body = _body(2)
    batch = _submit(gw, {"only": body})

    report = _client(gw).batches.retrieve(batch.id).model_extra["comptroller_reconciliation"]

    cost = _cost_mc(_batch_rates("gpt-4o-mini"), stub_input_tokens(body["messages"]), MAX_TOKENS + 7)
    assert gw.usage_costs() == {"only": cost} and report["cost_mc"] == cost
    assert report["usage_anomalies"] == [{"custom_id": "only", "bucket": "output_tokens", "bound_tokens": MAX_TOKENS,
                                          "reported_tokens": MAX_TOKENS + 7}]
    assert [e.detail["served"] for e in gw.engine.store.events("served_model")] == ["gpt-4o-mini"]


def test_an_upload_that_is_not_a_batch_file_is_refused(make: Any, stub: BatchStub) -> None:
    """Another purpose, or a body that is not a multipart form with a file, is a 400; nothing reaches the provider."""
    gw = make()
    with pytest.raises(openai.BadRequestError) as other_purpose:
        _client(gw).files.create(file=("f.jsonl", _jsonl({"a": _body(0)})), purpose="fine-tune")
    assert isinstance(other_purpose.value.body, dict) and other_purpose.value.body["param"] == "purpose"
    broken = httpx.post(f"{gw.url}/v1/files", headers={"Authorization": f"Bearer {gw.key}",
                        "Content-Type": "multipart/form-data; boundary=x"}, content=b"--x\r\nnot a part", timeout=10)
    assert broken.status_code == 400 and broken.json()["error"]["param"] == "file"
    assert stub.control.files == {}


def test_a_batch_is_held_to_the_tenants_message_quota_all_lines_or_none(make: Any, stub: BatchStub) -> None:
    """Quotas apply to batch lines as to calls: 12 lines on a quota of 10 messages are refused whole
    (quota_exceeded, nothing held, nothing sent); 10 lines fit exactly."""
    gw = make(_policy(budgets=[{"level": "tenant", "tenant": "acme", "limit_mc": 10**9}],
                      quotas=[{"unit": "messages", "level": "tenant", "tenant": "acme", "limit": 10}]))
    with pytest.raises(openai.RateLimitError) as refused:
        _submit(gw, {f"req-{i}": _body(i) for i in range(12)})
    error = refused.value.body
    assert isinstance(error, dict) and error["code"] == "quota_exceeded", error
    assert stub.control.batches == {}
    assert gw.reserved_mc() == 0
    batch = _submit(gw, {f"ok-{i}": _body(i) for i in range(10)})
    assert batch.id in stub.control.batches
