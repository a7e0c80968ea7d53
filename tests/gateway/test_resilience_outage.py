"""Ledger outage: a locked SQLite file answers 503 JSON within the bound, streams keep flowing, recovery is quick.

The fault is real: another connection holds SQLite's write lock (``BEGIN EXCLUSIVE``; in WAL
mode readers go on, every writer waits), so the gateway's reserve waits on the lock exactly
as it would behind a stuck writer.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
from gateway_kit import MODEL, GatewayFactory, Harness, wait_for

from comptroller.gateway.lifecycle import LedgerProbe

BOUND_S = 1.0  # [gateway] ledger_timeout_s in these tests
RECOVERY_S_MAX = 2.0  # issue 12: after the ledger returns, the first call succeeds within 2 s


@contextmanager
def locked(gw: Harness) -> Iterator[None]:
    """Hold SQLite's write lock on the gateway's ledger from another connection."""
    conn = sqlite3.connect(gw.engine.store.path, isolation_level=None)  # type: ignore[attr-defined]
    conn.execute("BEGIN EXCLUSIVE")
    try:
        yield
    finally:
        conn.execute("ROLLBACK")
        conn.close()


def chat(client: httpx.Client, text: str) -> httpx.Response:
    """One plain chat call."""
    return client.post("/v1/chat/completions", json={"model": MODEL, "messages": [{"role": "user", "content": text}]})


def test_locked_ledger_is_503_json_and_a_stream_keeps_flowing(make_gateway: GatewayFactory) -> None:
    """While the ledger is locked, calls answer 503 ledger_unavailable (JSON) and a stream on the worker flows on."""
    gw = make_gateway(ledger_timeout_s=BOUND_S)
    gw.stub.control.reply_words, gw.stub.control.chunk_delay_s = 60, 0.05
    headers = {"authorization": f"Bearer {gw.key}"}
    arrivals: list[float] = []
    streamed = threading.Event()

    def stream() -> None:
        with httpx.Client(base_url=gw.url, headers=headers, timeout=30) as client, client.stream(
                "POST", "/v1/chat/completions",
                json={"model": MODEL, "messages": [{"role": "user", "content": "go"}], "stream": True}) as answer:
            for line in answer.iter_lines():
                if line.startswith("data:"):
                    arrivals.append(time.monotonic())
        streamed.set()

    reader = threading.Thread(target=stream, daemon=True)
    reader.start()
    wait_for(lambda: len(arrivals) >= 3, "the stream to start")
    with httpx.Client(base_url=gw.url, headers=headers, timeout=BOUND_S + 10) as client, locked(gw):
        locked_at = time.monotonic()
        refused = [chat(client, f"refused {i}") for i in range(2)]
        unlocked_at = time.monotonic()
    assert [r.status_code for r in refused] == [503, 503]
    assert all(r.json()["error"]["code"] == "ledger_unavailable" for r in refused)
    assert all(r.headers["content-type"].startswith("application/json") for r in refused)
    assert any(locked_at < t < unlocked_at for t in arrivals)  # chunks arrived while calls waited on the lock
    reader.join(timeout=30)
    assert streamed.is_set()
    wait_for(lambda: gw.pending() == 0, "late admissions to be released")
    assert gw.reserved_mc() == 0
    assert len(gw.stub.control.requests) == 1  # nothing refused went upstream


def test_first_call_after_the_lock_is_released_succeeds_quickly(make_gateway: GatewayFactory) -> None:
    """Once the lock goes, the next call is served within 2 s, even with timed-out calls still queued behind it."""
    gw = make_gateway(ledger_timeout_s=BOUND_S)
    headers = {"authorization": f"Bearer {gw.key}"}
    with httpx.Client(base_url=gw.url, headers=headers, timeout=30) as client:
        assert chat(client, "warm").status_code == 200
        recoveries = []
        for attempt in range(2):  # two outages, as the report had
            with locked(gw):
                assert chat(client, f"during {attempt}").status_code == 503
            released = time.monotonic()
            answer = chat(client, f"after {attempt}")
            recoveries.append(time.monotonic() - released)
            assert answer.status_code == 200, answer.text
    assert max(recoveries) < RECOVERY_S_MAX, recoveries
    wait_for(lambda: gw.pending() == 0, "late admissions to be released")
    assert len(list(gw.engine.store.usage_records())) == 3


def test_healthz_answers_from_memory_and_names_the_unreachable_ledger(make_gateway: GatewayFactory) -> None:
    """/healthz says ledger unreachable (503) while the write lock is held, answering at once, then ok again."""
    gw = make_gateway(ledger_timeout_s=BOUND_S)
    with httpx.Client(base_url=gw.url, timeout=BOUND_S + 5) as client:
        wait_for(lambda: client.get("/healthz").status_code == 200, "the first probe")
        with locked(gw):
            wait_for(lambda: client.get("/healthz").status_code == 503, "the probe to notice the lock")
            body = client.get("/healthz").json()
            assert (body["status"], body["ledger"]["reachable"]) == ("ledger_unavailable", False)
        wait_for(lambda: client.get("/healthz").status_code == 200, "the probe to see the ledger back")


def test_probe_reports_a_probe_stuck_past_its_timeout() -> None:
    """A probe that has not returned within its timeout counts as unreachable (virtual clock)."""
    entered, leave = threading.Event(), threading.Event()

    class StuckStore:
        def put_state(self, *args: object, **kwargs: object) -> bool:
            entered.set()
            leave.wait(10)
            return False

    now = [100.0]
    probe = LedgerProbe(StuckStore(), timeout_s=2.0, clock=lambda: now[0])  # type: ignore[arg-type]
    assert probe.reachable() == (False, "not probed yet")
    stuck = threading.Thread(target=probe.probe, daemon=True)
    stuck.start()
    assert entered.wait(10)
    now[0] += 2.5
    reachable, why = probe.reachable()
    assert not reachable and why is not None and "2.5 s" in why
    leave.set()
    stuck.join(10)
    assert probe.reachable() == (True, None)
