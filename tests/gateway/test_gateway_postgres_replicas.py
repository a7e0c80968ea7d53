"""Four gateway processes on one PostgreSQL ledger, 64 concurrent clients, one budget of exactly K ceilings.

Issue 7's must-show: ``comptroller serve --workers 4 --db postgresql://...`` as a real
subprocess (four worker processes, each with its own engine and connection pool on the
same schema). However the 128 calls interleave, settled spend stays within the budget at
every level, and the upstream sees exactly the calls the gateway admitted. Skipped, with
the reason, when PostgreSQL is unreachable (CI starts it).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pytest
from gateway_kit import MODEL, OUTPUT_CAP, stub_policy
from stub_upstream import StubUpstream
from test_gateway_overshoot import K, drive, free_port, messages, wait_healthy, write_config

from comptroller.bootstrap import price_book
from comptroller.domain.pricing import ceiling_mc
from comptroller.domain.tokens import request_input_tokens_max
from comptroller.storage import store_from_url
from comptroller.storage.key_stores import keys_from_url
from comptroller.storage.keys import new_key
from postgres.pg_kit import PG_URL, new_schema

WORKERS = 4


@pytest.mark.slow
def test_four_gateway_workers_on_postgres_never_overshoot(stub: StubUpstream, tmp_path: Path) -> None:
    """Spend <= budget at every level; exactly the admitted calls reach the upstream; no hold is left."""
    url = f"{PG_URL}?options=-csearch_path%3D{new_schema()}"
    stub.control.reset()
    stub.control.latency_s = 0.3  # long enough that the 64 clients are in flight at once: the K holds bind
    price = price_book(stub_policy()).price(MODEL, datetime.now(UTC))
    input_max = request_input_tokens_max({"model": MODEL, "messages": messages(0)}, api="chat")
    ceiling = ceiling_mc(price, input_tokens_max=input_max, output_tokens_max=OUTPUT_CAP)
    limit_mc = K * ceiling
    config = tmp_path / "gateway.toml"
    write_config(config, stub, limit_mc)
    record, key = new_key(tenant="acme")
    keys = keys_from_url(url)
    keys.add(record)
    keys.close()
    port = free_port()
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
    command = [sys.executable, "-c", "from comptroller.cli.main import app; app()", "serve", "--config", str(config),
               "--db", url, "--port", str(port), "--workers", str(WORKERS), "--log-level", "warning"]
    process = subprocess.Popen(command, env=env)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_healthy(base, process)
        responses = asyncio.run(drive(base, key))
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=60)
    statuses = Counter(r.status_code for r in responses)
    assert set(statuses) <= {200, 429}, statuses
    refused = [r.json()["error"] for r in responses if r.status_code == 429]
    assert all(e["code"] == "budget_exceeded" and e["param"] == "tenant" for e in refused)
    store = store_from_url(url)
    try:
        records = list(store.usage_records())
        accounts = store.accounts()
    finally:
        store.close()
    assert statuses[200] >= K and statuses[429] > 0
    assert len(stub.control.requests) == statuses[200] == len(records)
    settled = sum(r.cost_mc for r in records)
    assert settled <= limit_mc
    assert all(a.settled_mc <= a.budget.limit_mc and a.reserved_mc == 0 for a in accounts)
