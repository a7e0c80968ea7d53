"""SIGKILL of a `comptroller serve` worker with 32 calls in flight (issue 12; DESIGN.md rule 12).

The gateway runs as a real subprocess (``--workers 2``, SQLite ledger, 3 s leases) in front
of the stub upstream on loopback. While every call is upstream, one worker is killed with
SIGKILL. After a restart and ``comptroller db check`` (which sweeps expired leases), every
call the stub served has exactly one usage row: its real cost when its worker lived, its
ceiling as ``unknown_outcome`` when its worker died; no account ever exceeds its limit.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
from gateway_kit import MODEL, OUTPUT_CAP, wait_for
from stub_upstream import StubUpstream
from test_resilience_serve import children, free_port
from typer.testing import CliRunner

from comptroller.cli.main import app as cli
from comptroller.domain.budgets import ANY_SCOPE, Budget
from comptroller.domain.scopes import Level
from comptroller.storage import store_from_url
from comptroller.storage.keys import SQLiteKeyStore, new_key

CALLS = 32
TTL_S = 3.0
LIMIT_MC = 10**8  # room for every ceiling: the check is that spend never passes it, not a refusal


@contextmanager
def _serve(tmp_path: Path, stub: StubUpstream) -> Iterator[tuple[str, int]]:
    """Run `comptroller serve --workers 2` until healthy: (URL, pid). SIGKILLed with its workers at the end."""
    config, db = tmp_path / "gateway.toml", f"sqlite:///{tmp_path / 'ledger.db'}"
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
[gateway.providers.stub]
base_url = "{stub.base_url}"
[gateway.models]
"{MODEL}" = "stub"
""", encoding="utf-8")
    port = free_port()
    metrics = tmp_path / f"metrics-{port}"
    metrics.mkdir()
    command = [sys.executable, "-c", "from comptroller.cli.main import app; app()", "serve", "--config", str(config),
               "--db", db, "--port", str(port), "--workers", "2", "--log-level", "warning"]
    process = subprocess.Popen(command, env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(metrics)})
    url = f"http://127.0.0.1:{port}"
    try:
        def healthy() -> bool:
            assert process.poll() is None, f"serve exited with {process.returncode}"
            try:
                return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False
        wait_for(healthy, "serve to be ready", limit_s=90)
        yield url, process.pid
    finally:
        for pid in children(process.pid) if process.poll() is None else []:
            os.kill(pid, signal.SIGKILL)
        if process.poll() is None:
            process.kill()
        process.wait(timeout=30)


def _busiest_worker(pid: int) -> int:
    """The worker process of `serve` ``pid`` holding the most sockets (client connections and upstream ones)."""
    def sockets(worker: int) -> int:
        fds = Path(f"/proc/{worker}/fd")
        return sum(1 for fd in fds.iterdir() if os.readlink(fd).startswith("socket:"))
    workers = [c for c in children(pid) if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes()
               and b"resource_tracker" not in Path(f"/proc/{c}/cmdline").read_bytes()]
    assert workers, f"no worker process under serve {pid}"
    return max(workers, key=sockets)


def test_sigkill_of_a_worker_leaves_every_served_call_charged_once(stub: StubUpstream, tmp_path: Path) -> None:
    """Calls of the killed worker are charged their ceiling as unknown_outcome, the others their cost, once each."""
    stub.control.reset()
    db = f"sqlite:///{tmp_path / 'ledger.db'}"
    ledger = store_from_url(db)
    ledger.put_budget(Budget(Level.TENANT, ANY_SCOPE, LIMIT_MC))
    record, key = new_key(tenant="acme")
    keys = SQLiteKeyStore(tmp_path / "ledger.db")
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
        with _serve(tmp_path, stub) as (url, pid):
            stub.control.latency_s = 4.0
            threads = [threading.Thread(target=call, args=(i, url), daemon=True) for i in range(CALLS)]
            for thread in threads:
                thread.start()
            wait_for(lambda: len(stub.control.requests) == CALLS, "every call to reach the stub", 60)
            os.kill(_busiest_worker(pid), signal.SIGKILL)
            for thread in threads:
                thread.join(timeout=60)
        stub.control.latency_s = 0.0
        with _serve(tmp_path, stub):  # a restarted gateway drains what the dead worker left
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
