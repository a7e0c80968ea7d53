"""`comptroller serve` as a real process: graceful SIGTERM, cut-off at the grace period, workers die with serve.

The gateway runs as a subprocess (``--workers 2``) in front of the stub upstream on loopback;
the faults are real signals sent to the ``serve`` parent.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from gateway_kit import MODEL, OUTPUT_CAP, wait_for
from stub_upstream import StubUpstream

from comptroller.gateway.lifecycle import LedgerProbe, Roster, WorkerLife
from comptroller.storage import store_from_url
from comptroller.storage.keys import SQLiteKeyStore, new_key
from comptroller.storage.memory import MemoryStore
from serve_kit import children, serve_process


def port_is_free(port: int) -> bool:
    """True when a new server could bind the port (no orphan holds it)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def running(pid: int) -> bool:
    """True while the process exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


@contextmanager
def serve(tmp_path: Path, stub: StubUpstream, *, workers: int = 2, grace_s: float = 20,
          ledger_timeout_s: float = 2) -> Iterator[tuple[subprocess.Popen[bytes], str, str, str]]:
    """Run `comptroller serve` until healthy: (process, url, api key, ledger url); killed at the end."""
    config, db = tmp_path / "gateway.toml", f"sqlite:///{tmp_path / 'ledger.db'}"
    config.write_text(f"""
namespace = "test"
output_cap_tokens = {OUTPUT_CAP}
[prices."{MODEL}"]
input_mtok = "1000"
output_mtok = "2000"
[gateway]
shutdown_grace_s = {grace_s}
ledger_timeout_s = {ledger_timeout_s}
[gateway.providers.stub]
base_url = "{stub.base_url}"
[gateway.models]
"{MODEL}" = "stub"
""", encoding="utf-8")
    record, key = new_key(tenant="acme")
    keys = SQLiteKeyStore(tmp_path / "ledger.db")
    keys.add(record)
    keys.close()
    with serve_process(config, db, workers=workers, metrics_dir=tmp_path / "metrics") as (process, url):
        yield process, url, key, db


def call_in_thread(url: str, key: str, payload: dict[str, object], out: dict[str, httpx.Response]) -> threading.Thread:
    """POST a chat call from a thread; its response lands in ``out['response']``."""
    def run() -> None:
        out["response"] = httpx.post(f"{url}/v1/chat/completions", json=payload, timeout=60,
                                     headers={"authorization": f"Bearer {key}"})
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


@pytest.mark.slow
def test_sigterm_lets_calls_in_flight_finish_and_settles_their_real_usage(stub: StubUpstream, tmp_path: Path) -> None:
    """A long unary call and a stream in flight at SIGTERM both complete, and each is charged its real usage."""
    stub.control.reset()
    stub.control.latency_s, stub.control.chunk_delay_s, stub.control.reply_words = 2.0, 0.1, 20
    with serve(tmp_path, stub) as (process, url, key, db):
        unary: dict[str, httpx.Response] = {}
        streamed: dict[str, httpx.Response] = {}
        threads = [call_in_thread(url, key, {"model": MODEL, "messages": [{"role": "user", "content": "unary"}]},
                                  unary),
                   call_in_thread(url, key, {"model": MODEL, "stream": True,
                                             "messages": [{"role": "user", "content": "stream"}]}, streamed)]
        wait_for(lambda: len(stub.control.requests) == 2, "both calls to reach the upstream")
        process.send_signal(signal.SIGTERM)
        for thread in threads:
            thread.join(timeout=60)
        assert process.wait(timeout=60) == 0
    assert unary["response"].status_code == 200
    assert unary["response"].json()["usage"]["completion_tokens"] == 20
    assert streamed["response"].status_code == 200 and "[DONE]" in streamed["response"].text
    store = store_from_url(db)
    try:
        outputs = sorted(r.usage.output_tokens for r in store.usage_records())
        assert outputs == [20, 20]
        assert sum(a.reserved_mc for a in store.accounts()) == 0
    finally:
        store.close()


@pytest.mark.slow
def test_a_call_still_running_at_the_deadline_is_charged_its_bound(stub: StubUpstream, tmp_path: Path) -> None:
    """A unary call longer than the grace period gets 503 shutting_down and is charged its ceiling, not released."""
    stub.control.reset()
    stub.control.latency_s = 30.0
    with serve(tmp_path, stub, grace_s=1, ledger_timeout_s=1) as (process, url, key, db):
        out: dict[str, httpx.Response] = {}
        messages = [{"role": "user", "content": "never answered in time"}]
        thread = call_in_thread(url, key, {"model": MODEL, "messages": messages}, out)
        wait_for(lambda: len(stub.control.requests) == 1, "the call to reach the upstream")
        process.send_signal(signal.SIGTERM)
        thread.join(timeout=30)
        assert process.wait(timeout=30) == 0
    assert out["response"].status_code == 503
    assert out["response"].json()["error"]["code"] == "shutting_down"
    store = store_from_url(db)
    try:
        (record,) = store.usage_records()
        assert record.usage.output_tokens == OUTPUT_CAP  # the reserved bound, not the 0 of a release
        assert record.cost_mc == record.ceiling_mc > 0
        assert sum(a.reserved_mc for a in store.accounts()) == 0
    finally:
        store.close()


@pytest.mark.slow
def test_workers_exit_when_serve_is_killed_and_the_port_is_free(stub: StubUpstream, tmp_path: Path) -> None:
    """After SIGKILL of the serve parent its two workers exit by themselves, and the port can be bound again."""
    stub.control.reset()
    with serve(tmp_path, stub, grace_s=2) as (process, url, _key, _db):
        body = httpx.get(f"{url}/healthz", timeout=5).json()
        assert body["workers"] == {"ready": 2, "expected": 2}
        workers = children(process.pid)
        port = int(url.rsplit(":", 1)[1])
        assert len([pid for pid in workers if running(pid)]) >= 2
        process.kill()
        process.wait(timeout=10)
        wait_for(lambda: not any(running(pid) for pid in workers), "the orphaned workers to exit", limit_s=30)
        assert port_is_free(port)


def test_healthz_is_not_ready_until_every_worker_is_listed(tmp_path: Path) -> None:
    """With 2 workers expected and one listed, /healthz says starting (503); with both, ok (200)."""
    store = MemoryStore()
    probe = LedgerProbe(store)
    probe.probe()
    life = WorkerLife(Roster(tmp_path, expected=2), probe, grace_s=1)
    life.roster.join()  # this process: one live worker
    status, body = life.health()
    assert (status, body["status"], body["workers"]) == (503, "starting", {"ready": 1, "expected": 2})
    (tmp_path / str(os.getppid())).write_text("")  # a second live process listed
    assert life.health()[0] == 200
    (tmp_path / "999999999").write_text("")  # a dead pid never counts
    assert life.health()[1]["workers"]["ready"] == 2


def test_a_killed_worker_not_yet_reaped_is_not_counted_ready(tmp_path: Path) -> None:
    """A worker SIGKILLed but not yet reaped by its parent (a zombie) is not counted as a ready worker."""
    roster = Roster(tmp_path, expected=1)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / str(child.pid)).write_text("")
        assert roster.ready() == 1
        os.kill(child.pid, signal.SIGKILL)
        wait_for(lambda: Path(f"/proc/{child.pid}/stat").read_text().rpartition(")")[2].split()[0] == "Z",
                 "the killed child to become a zombie", limit_s=10)
        assert roster.ready() == 0
    finally:
        child.kill()
        child.wait(timeout=10)
