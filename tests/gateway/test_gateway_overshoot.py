"""Overshoot: two gateway worker processes on one SQLite ledger, 64 concurrent clients, one budget.

``comptroller serve --workers 2`` runs as a real subprocess; the budget holds exactly K
ceilings. However the 128 calls interleave across the two processes, the ledger must
never let settled spend pass the limit, and the upstream must see exactly the calls the
gateway admitted (no refused call leaks through, no admitted call is lost).
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from gateway_kit import MODEL, OUTPUT_CAP, stub_policy
from stub_upstream import StubUpstream

from comptroller.bootstrap import price_book
from comptroller.domain.pricing import ceiling_mc
from comptroller.domain.tokens import request_input_tokens_max
from comptroller.storage import store_from_url
from comptroller.storage.keys import SQLiteKeyStore, new_key

K = 20
CLIENTS = 64
CALLS_PER_CLIENT = 2


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def messages(i: int) -> list[dict[str, str]]:
    """A distinct request per call (so no loop detector fires), all of the same size (same ceiling)."""
    return [{"role": "user", "content": f"Request number {i:06d}."}]


def write_config(path: Path, stub: StubUpstream, limit_mc: int) -> None:
    path.write_text(f"""
namespace = "over"
output_cap_tokens = {OUTPUT_CAP}
[prices."{MODEL}"]
input_mtok = "1000"
output_mtok = "2000"
[[budgets]]
level = "tenant"
tenant = "acme"
limit_mc = {limit_mc}
period = "total"
[gateway]
read_timeout_s = 30
# this test races for money, not outages: on 2 shared cores a queue of 32 reserves on one hot row can
# outlast the default 2 s ledger bound (a fail-closed 503, tested in test_resilience_*)
ledger_timeout_s = 30
[gateway.providers.stub]
base_url = "{stub.base_url}"
[gateway.models]
"{MODEL}" = "stub"
""", encoding="utf-8")


def wait_healthy(url: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"comptroller serve exited with {process.returncode}")
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError("comptroller serve did not become healthy within 60 s")


async def drive(url: str, key: str) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=CLIENTS)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60,
                                 headers={"authorization": f"Bearer {key}"}) as client:
        async def one_client(c: int) -> list[httpx.Response]:
            return [await client.post("/v1/chat/completions", json={"model": MODEL,
                                                                      "messages": messages(c * 100 + j)})
                    for j in range(CALLS_PER_CLIENT)]
        results = await asyncio.gather(*(one_client(c) for c in range(CLIENTS)))
    return [r for batch in results for r in batch]


@pytest.mark.slow
def test_two_workers_never_overshoot_and_forward_exactly_the_admitted(stub: StubUpstream, tmp_path: Path) -> None:
    """Spend stays within the budget, and the upstream sees exactly the admitted calls."""
    stub.control.reset()
    stub.control.latency_s = 0.2  # keep many calls in flight at once, so the K holds bind
    policy = stub_policy()
    price = price_book(policy).price(MODEL, datetime.now(UTC))
    input_max = request_input_tokens_max({"model": MODEL, "messages": messages(0)}, api="chat")
    ceiling = ceiling_mc(price, input_tokens_max=input_max, output_tokens_max=OUTPUT_CAP)
    limit_mc = K * ceiling
    config, db = tmp_path / "gateway.toml", tmp_path / "ledger.db"
    write_config(config, stub, limit_mc)
    record, key = new_key(tenant="acme")
    keys = SQLiteKeyStore(db)
    keys.add(record)
    keys.close()
    port = free_port()
    metrics_dir = tmp_path / "metrics"  # its own directory: the collector reads every *.db file in it
    metrics_dir.mkdir()
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir), "COMPTROLLER_ADMIN_KEY": "ck-admin-scrape"}
    command = [sys.executable, "-c", "from comptroller.cli.main import app; app()", "serve", "--config", str(config),
               "--db", f"sqlite:///{db}", "--port", str(port), "--workers", "2", "--log-level", "warning"]
    process = subprocess.Popen(command, env=env)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url, process)
        responses = asyncio.run(drive(url, key))
        metrics = httpx.get(f"{url}/metrics", timeout=10, headers={"authorization": "Bearer ck-admin-scrape"}).text
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=60)
    statuses = Counter(r.status_code for r in responses)
    assert set(statuses) <= {200, 429}, statuses
    refused = [r.json()["error"] for r in responses if r.status_code == 429]
    assert all(e["code"] == "budget_exceeded" and e["param"] == "tenant" for e in refused)
    store = store_from_url(f"sqlite:///{db}")
    try:
        records = list(store.usage_records())
        accounts = [a for a in store.accounts() if a.budget.level == "tenant"]
    finally:
        store.close()
    assert statuses[200] >= K  # the first K ceilings always fit
    assert statuses[429] > 0  # the budget did bind
    assert len(stub.control.requests) == statuses[200] == len(records)
    settled = sum(r.cost_mc for r in records)
    assert settled <= limit_mc
    assert [(a.settled_mc, a.reserved_mc) for a in accounts] == [(settled, 0)]
    # /metrics sums both workers' samples (prometheus multiprocess mode)
    assert f'comptroller_requests_total{{endpoint="chat",status="200"}} {float(statuses[200])}' in metrics
    assert f'comptroller_refusals_total{{code="budget_exceeded",level="tenant"}} {float(statuses[429])}' in metrics
