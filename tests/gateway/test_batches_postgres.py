"""Batches on a PostgreSQL ledger: the same whole-batch reserve and per-custom_id reconcile, its state rows there."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from stub_batches import BatchStub, start_gateway, stub_input_tokens
from test_batches_openai import MAX_TOKENS, MODEL, REPLY_WORDS, _batch_rates, _body, _cost_mc, _jsonl, _policy

from comptroller.domain.state import StateKey
from postgres.pg_kit import postgres_store


@pytest.fixture
def stub() -> Iterator[BatchStub]:
    """A fresh stub provider."""
    with BatchStub() as server:
        server.control.reply_words = REPLY_WORDS
        yield server


def test_a_batch_reconciles_once_on_a_postgresql_ledger(tmp_path: Path, stub: BatchStub) -> None:
    """20 lines held at create, settled per custom_id at the batch price on reconcile, one failed released;
    a second retrieve leaves the PostgreSQL ledger unchanged."""
    store = postgres_store()
    gw = start_gateway(tmp_path, stub, _policy(budgets=[{"level": "tenant", "tenant": "acme", "limit_mc": 10**9}]),
                       {MODEL: "openai"}, store=store)
    try:
        stub.control.fail_ids = {"req-5"}
        bodies = {f"req-{i}": _body(i) for i in range(20)}
        client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key=gw.key, max_retries=0, timeout=30)
        file = client.files.create(file=("b.jsonl", _jsonl(bodies)), purpose="batch")
        batch = client.batches.create(input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h")
        assert gw.reserved_mc() > 0

        first = client.batches.retrieve(batch.id).model_extra["comptroller_reconciliation"]
        accounts = [(a.scope, a.settled_mc, a.reserved_mc) for a in store.accounts()]
        second = client.batches.retrieve(batch.id).model_extra["comptroller_reconciliation"]

        rates = _batch_rates(MODEL)
        expected = {cid: _cost_mc(rates, stub_input_tokens(b["messages"]), min(REPLY_WORDS, MAX_TOKENS))
                    for cid, b in bodies.items() if cid != "req-5"}
        assert gw.usage_costs() == expected
        assert first == second and (first["settled"], first["released"]) == (19, 1)
        assert [(a.scope, a.settled_mc, a.reserved_mc) for a in store.accounts()] == accounts
        assert gw.reserved_mc() == 0
        lines = store.state(StateKey("batch_lines", batch.id))
        assert lines is not None and len(json.loads(str(lines.record["reservations"]))) == 20
    finally:
        gw.server.__exit__(None, None, None)
        store.close()
