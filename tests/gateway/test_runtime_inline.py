"""Ledger calls on the event loop when the SQLite ledger is free, in the bounded ledger thread when it is not.

The fault is real: another connection holds SQLite's write lock, so the gateway's attempt on the
loop meets SQLITE_BUSY and the call goes to a worker thread, which waits for the lock (bounded
by ``ledger_timeout_s``). Where each store call ran is read from a recording wrapper.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from gateway_kit import MODEL, GatewayFactory, Harness, wait_for

from comptroller.domain.budgets import ANY_SCOPE, Budget
from comptroller.domain.scopes import Level
from comptroller.gateway.runtime import InlineLedger
from comptroller.storage.memory import MemoryStore
from comptroller.storage.postgres import PostgresStore
from comptroller.storage.sqlite import SQLiteStore

WORKER_THREAD = "AnyIO worker thread"  # the name anyio gives its worker threads


def record_threads(gw: Harness, *names: str) -> list[tuple[str, str]]:
    """Wrap the store's ``names`` methods to record (method, thread name) for each call."""
    seen: list[tuple[str, str]] = []
    store = gw.engine.store
    for name in names:
        method: Callable[..., Any] = getattr(store, name)

        def recording(*args: Any, _method: Callable[..., Any] = method, _name: str = name, **kwargs: Any) -> Any:
            seen.append((_name, threading.current_thread().name))
            return _method(*args, **kwargs)

        setattr(store, name, recording)
    return seen


def chat(client: httpx.Client, text: str) -> httpx.Response:
    """One plain chat call."""
    return client.post("/v1/chat/completions", json={"model": MODEL, "messages": [{"role": "user", "content": text}]})


def test_a_free_ledger_is_written_on_the_event_loop(make_gateway: GatewayFactory) -> None:
    """With nothing holding the ledger, reserve and settle run on the server's loop, not in a worker thread."""
    gw = make_gateway()
    seen = record_threads(gw, "reserve", "settle")
    with httpx.Client(base_url=gw.url, headers={"authorization": f"Bearer {gw.key}"}, timeout=20) as client:
        answers = [chat(client, f"call {i}") for i in range(3)]
    assert [a.status_code for a in answers] == [200, 200, 200]
    assert [name for name, _ in seen] == ["reserve", "settle"] * 3
    assert all(thread != WORKER_THREAD for _, thread in seen)
    assert len(list(gw.engine.store.usage_records())) == 3
    assert gw.reserved_mc() == 0


def test_a_locked_ledger_sends_the_call_to_the_ledger_thread_which_waits_for_the_lock(
        make_gateway: GatewayFactory) -> None:
    """While another connection writes, the reserve goes to a worker thread, gets the lock when freed; charged once."""
    gw = make_gateway(ledger_timeout_s=30.0)  # a lock held briefly, not an outage
    seen = record_threads(gw, "reserve", "settle")
    other = sqlite3.connect(gw.engine.store.path, isolation_level=None, check_same_thread=False)  # type: ignore[attr-defined]
    other.execute("BEGIN IMMEDIATE")
    released = threading.Event()

    def release_when_waiting() -> None:
        wait_for(lambda: len(seen) >= 1, "the reserve to start")
        other.execute("ROLLBACK")
        released.set()

    releaser = threading.Thread(target=release_when_waiting, daemon=True)
    releaser.start()
    with httpx.Client(base_url=gw.url, headers={"authorization": f"Bearer {gw.key}"}, timeout=40) as client:
        answer = chat(client, "behind a writer")
    releaser.join(timeout=15)
    other.close()
    assert released.is_set()
    assert answer.status_code == 200
    assert seen[0] == ("reserve", WORKER_THREAD)
    [record] = list(gw.engine.store.usage_records())
    assert record.outcome == "settled"
    assert gw.reserved_mc() == 0


def test_a_locked_ledger_still_answers_503_within_the_bound(make_gateway: GatewayFactory) -> None:
    """A lock held past ``ledger_timeout_s`` refuses the call with 503 ledger_unavailable; nothing goes upstream."""
    gw = make_gateway(ledger_timeout_s=0.5)
    other = sqlite3.connect(gw.engine.store.path, isolation_level=None)  # type: ignore[attr-defined]
    other.execute("BEGIN IMMEDIATE")
    try:
        with httpx.Client(base_url=gw.url, headers={"authorization": f"Bearer {gw.key}"}, timeout=20) as client:
            answer = chat(client, "refused")
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert answer.status_code == 503
    assert answer.json()["error"]["code"] == "ledger_unavailable"
    assert gw.stub.control.requests == []
    wait_for(lambda: gw.pending() == 0, "the late admission to be released")
    assert gw.reserved_mc() == 0


def test_the_store_is_held_for_the_operation_and_let_go_after(tmp_path: Any) -> None:
    """``uncontended`` yields True on a free file, False while another connection writes, and leaves no lock behind."""
    store = SQLiteStore(tmp_path / "ledger.db")
    with store.uncontended() as free:
        assert free
        assert store.budgets() == []  # the store's own calls go through inside (its lock is reentrant)
    other = sqlite3.connect(store.path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    with store.uncontended() as free:
        assert not free
    other.execute("ROLLBACK")
    other.execute("BEGIN IMMEDIATE")  # the free hold above was let go: another writer gets the lock at once
    other.execute("ROLLBACK")
    other.close()
    store.close()


def test_a_later_write_of_the_block_waits_briefly_for_another_writer_then_fails(tmp_path: Any) -> None:
    """A second write transaction inside the hold waits for another writer up to ``later_wait_s``, no longer."""
    store = SQLiteStore(tmp_path / "ledger.db")
    other = sqlite3.connect(store.path, isolation_level=None, check_same_thread=False)
    with store.uncontended(later_wait_s=10.0) as free:
        assert free
        store.put_budget(Budget(Level.TENANT, ANY_SCOPE, 1_000))  # the first write: the lock taken at entry
        other.execute("BEGIN IMMEDIATE")
        threading.Timer(0.05, other.execute, ("ROLLBACK",)).start()
        store.put_budget(Budget(Level.TENANT, ANY_SCOPE, 2_000))  # waits for the other writer to finish
    with store.uncontended(later_wait_s=0.05) as free:
        assert free
        store.put_budget(Budget(Level.TENANT, ANY_SCOPE, 3_000))
        other.execute("BEGIN IMMEDIATE")
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            store.put_budget(Budget(Level.TENANT, ANY_SCOPE, 4_000))
        other.execute("ROLLBACK")
    assert [b.limit_mc for b in store.budgets()] == [3_000]
    other.close()
    store.close()


def test_a_write_after_the_hold_waits_for_another_writer_again(tmp_path: Any) -> None:
    """The hold's busy_timeout of 0 does not outlive it: a write made outside one waits for a writer as before."""
    store = SQLiteStore(tmp_path / "ledger.db", busy_timeout_s=10.0)
    with store.uncontended() as free:
        assert free
        store.put_budget(Budget(Level.TENANT, ANY_SCOPE, 1_000))
    other = sqlite3.connect(store.path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    threading.Timer(0.05, other.execute, ("ROLLBACK",)).start()
    store.put_budget(Budget(Level.TENANT, ANY_SCOPE, 2_000))  # waits for the other writer, then writes
    assert [b.limit_mc for b in store.budgets()] == [2_000]
    other.close()
    store.close()


def test_only_sqlite_runs_ledger_calls_on_the_loop() -> None:
    """PostgreSQL (a network round trip) and the memory store keep the thread path; SQLite can hold itself."""
    assert isinstance(SQLiteStore(":memory:"), InlineLedger)
    assert not isinstance(MemoryStore(), InlineLedger)
    assert not hasattr(PostgresStore, "uncontended")


def test_a_call_meeting_the_store_held_by_a_ledger_thread_waits_for_it_on_the_loop(
        make_gateway: GatewayFactory) -> None:
    """Another thread of the worker holds the store (as an operation sent to a thread does): the next call's
    reserve and settle wait for it on the loop and run there, not in a thread of their own; charged once."""
    gw = make_gateway(ledger_timeout_s=30.0)
    seen = record_threads(gw, "reserve", "settle")
    store = gw.engine.store
    assert isinstance(store, SQLiteStore)
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        with store.uncontended() as free:
            assert free
            holding.set()
            release.wait(15)

    holder = threading.Thread(target=hold, daemon=True)
    holder.start()
    assert holding.wait(15)
    assert store.held_here()
    threading.Timer(0.05, release.set).start()  # the call arrives while it is held, then it is let go
    with httpx.Client(base_url=gw.url, headers={"authorization": f"Bearer {gw.key}"}, timeout=40) as client:
        answer = chat(client, "behind a ledger thread")
    holder.join(timeout=15)
    assert answer.status_code == 200, answer.text
    assert [name for name, _ in seen] == ["reserve", "settle"]
    assert all(thread != WORKER_THREAD for _, thread in seen)
    assert not store.held_here()
    assert len(list(store.usage_records())) == 1 and gw.reserved_mc() == 0


def test_a_call_behind_another_connections_brief_write_waits_on_the_loop(make_gateway: GatewayFactory) -> None:
    """Another connection holds SQLite's write lock for a moment (as another worker's write does): the reserve
    waits for it on the loop and runs there, not in a worker thread; charged once."""
    gw = make_gateway(ledger_timeout_s=30.0)
    seen = record_threads(gw, "reserve", "settle")
    other = sqlite3.connect(gw.engine.store.path, isolation_level=None, check_same_thread=False)  # type: ignore[attr-defined]
    other.execute("BEGIN IMMEDIATE")
    threading.Timer(0.03, lambda: other.execute("ROLLBACK")).start()  # well within the loop's wait (0.1 s)
    with httpx.Client(base_url=gw.url, headers={"authorization": f"Bearer {gw.key}"}, timeout=40) as client:
        answer = chat(client, "behind a brief writer")
    other.close()
    assert answer.status_code == 200, answer.text
    assert [name for name, _ in seen] == ["reserve", "settle"]
    assert all(thread != WORKER_THREAD for _, thread in seen)
    assert len(list(gw.engine.store.usage_records())) == 1 and gw.reserved_mc() == 0
