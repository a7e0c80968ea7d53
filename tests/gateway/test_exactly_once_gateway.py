"""Exactly-once money through the gateway under real faults (issue 12; DESIGN.md rule 12).

* A SQLite ledger locked by another connection (``BEGIN EXCLUSIVE``) while 32 calls are in
  flight: the settles go to the durable outbox and are delivered after the lock goes, so the
  usage rows are the calls the stub served, each once, and ``db check`` is clean; the
  ``comptroller_outbox_*`` metrics show them waiting, then delivered.
* Streams lasting more than three leases: the upkeep task renews the lease, a monitor
  samples ``settled + reserved <= limit`` throughout, a second call cannot take the held
  money meanwhile, and the stream settles on time (not ``settled_late``).

Each gateway is the real app on its own SQLite ledger (short busy timeout, so a locked file
fails a ledger call within 0.25 s), served by uvicorn on loopback in a thread.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import openai
import pytest
from gateway_kit import INPUT_MC_PER_TOKEN, MODEL, OUTPUT_MC_PER_TOKEN, engine_namespace, stub_policy, wait_for
from loopback import LoopbackServer
from prometheus_client.parser import text_string_to_metric_families
from stub_upstream import StubUpstream
from typer.testing import CliRunner

from comptroller.bootstrap import build_engine
from comptroller.cli.main import app as cli
from comptroller.config import Policy
from comptroller.domain.budgets import ANY_SCOPE, Budget
from comptroller.domain.scopes import Level
from comptroller.engine import Engine
from comptroller.gateway.app import create_app
from comptroller.gateway.config import GatewayConfig, ProviderConfig
from comptroller.storage.keys import SQLiteKeyStore, new_key
from comptroller.storage.outbox import Outbox
from comptroller.storage.sqlite import SQLiteStore

CALLS = 32


def _messages(i: int) -> list[dict[str, str]]:
    """A distinct prompt per call (the same request repeated would trip the loop detector)."""
    return [{"role": "user", "content": f"count the coins in chest {i}"}]


class Running:
    """A gateway on its own SQLite ledger, and what the tests inspect."""

    def __init__(self, tmp: Path, stub: StubUpstream, policy: Policy, **gateway: Any) -> None:
        self.db = tmp / "ledger.db"
        self.store = SQLiteStore(self.db, busy_timeout_s=0.25)
        self.engine: Engine = build_engine(db_url="", policy=policy, store=self.store)
        self.keys = SQLiteKeyStore(self.db)
        config = GatewayConfig(providers={"stub": ProviderConfig(base_url=stub.base_url)}, models={MODEL: "stub"},
                               admin_key_env=None, **gateway)
        self.app = create_app(engine=self.engine, keys=self.keys, config=config, namespace=engine_namespace(policy))
        self.server = LoopbackServer(self.app, grace_s=5.0).__enter__()
        record, self.key = new_key(tenant="acme")
        self.keys.add(record)
        self.outbox_path = Path(f"{self.db}.outbox")

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.server.url}/v1", api_key=self.key, max_retries=0, timeout=60)

    def outbox_waiting(self) -> int:
        outbox = Outbox(self.outbox_path)
        try:
            return outbox.count()
        finally:
            outbox.close()

    def outbox_metrics(self) -> dict[str, float]:
        """The outbox samples of the gateway's Prometheus exposition, by sample name."""
        text = self.app.state.gateway.metrics.exposition().decode()
        return {sample.name: sample.value for family in text_string_to_metric_families(text)
                for sample in family.samples
                if sample.name.startswith("comptroller_outbox_") and not sample.name.endswith("_created")}

    def tenant_metrics(self) -> dict[str, float]:
        """The tenant samples of the exposition (``comptroller_tenant_*``), by sample name, for tenant acme."""
        text = self.app.state.gateway.metrics.exposition().decode()
        return {sample.name: sample.value for family in text_string_to_metric_families(text)
                for sample in family.samples
                if sample.name.startswith("comptroller_tenant_") and sample.labels.get("tenant") == "acme"}

    def close(self) -> None:
        self.server.__exit__(None, None, None)


@pytest.fixture
def running(stub: StubUpstream, tmp_path: Path) -> Iterator[list[Running]]:
    """Gateways started by a test, stopped after it."""
    stub.control.reset()
    started: list[Running] = []
    yield started
    for gateway in started:
        gateway.close()
    stub.control.reset()


def _policy(**overrides: Any) -> Policy:
    """The stub policy without loop detectors and breakers (many distinct calls at once are no loop here)."""
    return stub_policy(loops={"enabled": False}, breakers={"enabled": False}, **overrides)


def _warm(gw: Running, stub: StubUpstream) -> None:
    """One call first, so the key is verified and cached before the burst; then forget the stub's log."""
    gw.client().chat.completions.create(model=MODEL, messages=_messages(-1), max_tokens=16)
    stub.control.requests.clear()


def _expected_cost_mc(input_tokens: int, output_tokens: int) -> int:
    return input_tokens * INPUT_MC_PER_TOKEN + output_tokens * OUTPUT_MC_PER_TOKEN


def test_settles_survive_a_locked_sqlite_ledger_and_are_charged_once(
        stub: StubUpstream, tmp_path: Path, running: list[Running]) -> None:
    """32 calls finish while another connection holds the ledger's write lock; each is charged once after."""
    gw = Running(tmp_path, stub, _policy())
    running.append(gw)
    _warm(gw, stub)
    before = {r.reservation_id for r in gw.store.usage_records()}
    stub.control.latency_s = 6.0  # every call is upstream when the lock is taken (checked below)
    locker = sqlite3.connect(gw.db, timeout=30, isolation_level=None)
    client = gw.client()  # one client (and connection pool) for every thread
    with ThreadPoolExecutor(CALLS) as pool:
        calls = [pool.submit(client.chat.completions.create, model=MODEL, messages=_messages(i), max_tokens=16)
                 for i in range(CALLS)]
        wait_for(lambda: len(stub.control.requests) == CALLS, "every call to reach the stub", 30)
        locker.execute("BEGIN EXCLUSIVE")  # the ledger is now unwritable for the gateway
        try:
            assert not any(c.done() for c in calls), "a call ended before the lock: raise the stub's latency"
            answers = [c.result(timeout=60) for c in calls]
            wait_for(lambda: gw.outbox_waiting() == CALLS, "every settle to be kept in the outbox", 60)
            assert {r.reservation_id for r in gw.store.usage_records()} == before  # nothing reached the ledger
            waiting = gw.outbox_metrics()
            assert waiting["comptroller_outbox_pending"] == CALLS
            assert waiting["comptroller_outbox_oldest_pending_age_seconds"] > 0
        finally:
            locker.execute("ROLLBACK")
            locker.close()
    wait_for(lambda: gw.outbox_waiting() == 0, "the outbox to be delivered after the lock went", 60)
    assert gw.outbox_metrics() == {"comptroller_outbox_pending": 0, "comptroller_outbox_oldest_pending_age_seconds": 0,
                                   "comptroller_outbox_delivered_total": CALLS}
    # the delivered charges count in the tenant's metrics as charges on the call path do (the warm call too)
    every = list(gw.store.usage_records())
    tenant = gw.tenant_metrics()
    assert (tenant["comptroller_tenant_cost_mc"], tenant["comptroller_tenant_calls"]) == (
        sum(r.cost_mc for r in every), CALLS + 1)
    records = [r for r in every if r.reservation_id not in before]
    assert len(answers) == CALLS == len(stub.control.requests)
    assert len(records) == CALLS == len({r.reservation_id for r in records})
    for record in records:
        assert record.outcome == "settled", record
        assert record.cost_mc == _expected_cost_mc(record.usage.input_tokens, record.usage.output_tokens)
    assert sum(a.reserved_mc for a in gw.store.accounts()) == 0
    checked = CliRunner().invoke(cli, ["db", "check", "--db", f"sqlite:///{gw.db}"])
    assert checked.exit_code == 0, checked.output
    assert "ledger consistent" in checked.output and "unknown_outcome:" not in checked.output


def test_a_stream_outliving_three_leases_keeps_its_hold_and_settles_on_time(
        stub: StubUpstream, tmp_path: Path, running: list[Running]) -> None:
    """A 4 s stream with 1 s leases is renewed: the hold never lapses, no second call takes it, settle on time."""
    ttl_s = 1.0
    policy = _policy(ttl_s=ttl_s)
    gw = Running(tmp_path, stub, policy)
    running.append(gw)
    _warm(gw, stub)
    words, delay_s = 16, 0.25  # 16 chunks x 0.25 s = 4 s > 3 x ttl_s
    stub.control.reply_words, stub.control.chunk_delay_s = words, delay_s
    gw.store.put_budget(Budget(Level.TENANT, ANY_SCOPE, 10**9))  # the limit is lowered once the ceiling is known
    limits: list[str] = []
    stop = threading.Event()
    samples = [0]

    def monitor() -> None:
        while not stop.is_set():
            for account in gw.store.accounts():
                if account.settled_mc + account.reserved_mc > account.budget.limit_mc:
                    limits.append(f"{account}")
            samples[0] += 1
            stop.wait(0.05)

    client = gw.client()
    stream = client.chat.completions.create(model=MODEL, messages=_messages(0), max_tokens=words * 2, stream=True)
    next(iter(stream))
    [reservation] = list(_pending(gw.db))
    ceiling = reservation[1]
    gw.store.put_budget(Budget(Level.TENANT, ANY_SCOPE, ceiling + ceiling // 2))  # room for this call only
    watcher = threading.Thread(target=monitor, daemon=True)
    watcher.start()
    refused = 0
    try:
        for i in range(1, 4):
            stop.wait(ttl_s)
            with pytest.raises(openai.APIStatusError) as info:
                client.chat.completions.create(model=MODEL, messages=_messages(i), max_tokens=words * 2)
            assert info.value.status_code == 429 and "budget_exceeded" in str(info.value)
            refused += 1
            assert [r[0] for r in _pending(gw.db)] == [reservation[0]]  # still held, never expired
        for _ in stream:
            pass
    finally:
        stop.set()
        watcher.join(timeout=10)
    assert refused == 3 and samples[0] > 0 and limits == []
    [record] = [r for r in gw.store.usage_records() if r.reservation_id == reservation[0]]
    assert record.reservation_id == reservation[0] and record.outcome == "settled"
    assert (record.resolved_at - record.reserved_at).total_seconds() > 3 * ttl_s
    assert gw.store.events("unknown_outcome") == []


def _pending(db: Path) -> list[tuple[str, int]]:
    with sqlite3.connect(db) as conn:
        return [(r[0], int(r[1])) for r in conn.execute(
            "SELECT id, ceiling_mc FROM reservations WHERE state = 'pending' ORDER BY id")]
