"""SIGKILL of a `comptroller serve` worker with 32 calls in flight (issue 12; DESIGN.md rule 12).

The gateway runs as a real subprocess (SQLite ledger with ``--workers 2``, PostgreSQL with
``--workers 4``; 3 s leases) in front of the stub upstream on loopback. While every call is
upstream, one worker is killed with SIGKILL. uvicorn's supervisor restarts it (``/healthz``
is ready again only when every worker is up), the restarted worker drains the shared outbox,
and after ``comptroller db check`` (which sweeps expired leases) every call the stub served
has exactly one usage row: its real cost when its worker lived, its ceiling as
``unknown_outcome`` when its worker died; no account ever exceeds its limit.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from gateway_kit import MODEL, OUTPUT_CAP, wait_for
from stub_upstream import StubUpstream
from typer.testing import CliRunner

from comptroller.cli.main import app as cli
from comptroller.domain.budgets import ANY_SCOPE, Budget
from comptroller.domain.scopes import Level
from comptroller.storage import store_from_url
from comptroller.storage.keys import KeyStore, SQLiteKeyStore, new_key
from comptroller.storage.postgres import PostgresKeyStore
from postgres.pg_kit import PG_URL, new_schema
from serve_kit import children, ready, serve_process

pytestmark = pytest.mark.slow

CALLS = 32
TTL_S = 3.0
LATENCY_S = 4.0  # upstream time of each call: the kill lands while all are in flight
LIMIT_MC = 10**8  # room for every ceiling: the check is that spend never passes it, not a refusal


@dataclass(frozen=True)
class Backend:
    """A ledger for `serve`: its URL, the worker count, and a key store on it."""

    db: str
    workers: int
    schema: str | None = None

    def keys(self, tmp_path: Path) -> KeyStore:
        """The key store `serve` reads (the ledger's own)."""
        if self.schema is None:
            return SQLiteKeyStore(tmp_path / "ledger.db")
        return PostgresKeyStore(PG_URL, schema=self.schema)


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    """SQLite with 2 workers, PostgreSQL (a fresh schema) with 4 (issue 12's two set-ups)."""
    if request.param == "sqlite":
        return Backend(f"sqlite:///{tmp_path / 'ledger.db'}", 2)
    schema = new_schema()
    return Backend(f"{PG_URL}?options=-csearch_path%3D{schema}", 4, schema)


@contextmanager
def _serve(tmp_path: Path, stub: StubUpstream,
           backend: Backend) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """Run `comptroller serve` until healthy: (URL, process). SIGKILLed with its workers at the end."""
    config, db = tmp_path / "gateway.toml", backend.db
    config.write_text(f"""
namespace = "test"
output_cap_tokens = {OUTPUT_CAP}
ttl_s = {TTL_S}
[prices."{MODEL}"]
input_mtok = "1000"
output_mtok = "2000"
[loops]
enabled = false
[breakers]
enabled = false
[gateway]
shutdown_grace_s = 1
outbox_path = "{tmp_path / 'outbox.db'}"
[gateway.providers.stub]
base_url = "{stub.base_url}"
[gateway.models]
"{MODEL}" = "stub"
""", encoding="utf-8")
    with serve_process(config, db, workers=backend.workers, ready_s=120) as (process, url):
        yield url, process


def _workers(pid: int) -> list[int]:
    """The worker processes of `serve` ``pid`` (uvicorn's spawned children, not its resource tracker)."""
    return [c for c in children(pid) if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes()
            and b"resource_tracker" not in Path(f"/proc/{c}/cmdline").read_bytes()]


def _busiest_worker(pid: int) -> int:
    """The worker process of `serve` ``pid`` holding the most sockets (client connections and upstream ones)."""
    def sockets(worker: int) -> int:
        fds = Path(f"/proc/{worker}/fd")
        return sum(1 for fd in fds.iterdir() if os.readlink(fd).startswith("socket:"))
    workers = _workers(pid)
    assert workers, f"no worker process under serve {pid}"
    return max(workers, key=sockets)


def test_sigkill_of_a_worker_leaves_every_served_call_charged_once(stub: StubUpstream, tmp_path: Path,
                                                                   backend: Backend) -> None:
    """Calls of the killed worker are charged their ceiling as unknown_outcome, the others their cost, once each."""
    stub.control.reset()
    db = backend.db
    ledger = store_from_url(db)
    ledger.put_budget(Budget(Level.TENANT, ANY_SCOPE, LIMIT_MC))
    record, key = new_key(tenant="acme")
    keys = backend.keys(tmp_path)
    keys.add(record)
    keys.close()
    answers: dict[int, int] = {}

    def call(i: int, url: str) -> None:
        try:
            response = httpx.post(f"{url}/v1/chat/completions", timeout=60, headers={"authorization": f"Bearer {key}"},
                                  json={"model": MODEL, "max_tokens": 16,
                                        "messages": [{"role": "user", "content": f"tally chest {i}"}]})
            answers[i] = response.status_code
        except httpx.HTTPError:
            answers[i] = 0  # the worker died under it
    try:
        with _serve(tmp_path, stub, backend) as (url, process):
            pid = process.pid
            stub.control.latency_s = LATENCY_S
            threads = [threading.Thread(target=call, args=(i, url), daemon=True) for i in range(CALLS)]
            for thread in threads:
                thread.start()
            wait_for(lambda: len(stub.control.requests) == CALLS, "every call to reach the stub", 60)
            killed = _busiest_worker(pid)
            os.kill(killed, signal.SIGKILL)
            for thread in threads:
                thread.join(timeout=60)
            # uvicorn restarts the dead worker; it drains the outbox the workers share
            def restarted() -> bool:  # a new worker in the dead one's place, and every worker up
                workers = _workers(pid)
                return killed not in workers and len(workers) == backend.workers and ready(url, process)
            wait_for(restarted, "the killed worker's restart", 120)
            time.sleep(TTL_S + 1)  # every lease of the dead worker runs out
        checked = CliRunner().invoke(cli, ["db", "check", "--db", db])
        assert checked.exit_code == 0, checked.output
        records = list(ledger.usage_records())
        served = len(stub.control.requests)
        assert served == CALLS == len(answers)
        assert len(records) == served == len({r.reservation_id for r in records})
        lost = [r for r in records if r.outcome == "unknown_outcome"]
        assert all(r.cost_mc == r.ceiling_mc for r in lost)
        assert all(r.outcome == "settled" for r in records if r.outcome != "unknown_outcome")
        assert len(lost) == sum(1 for status in answers.values() if status != 200) > 0
        assert checked.output.count("unknown_outcome:") == len(lost)
        for account in ledger.accounts():
            assert account.settled_mc + account.reserved_mc <= account.budget.limit_mc
            assert account.reserved_mc == 0
    finally:
        ledger.close()
        stub.control.reset()
