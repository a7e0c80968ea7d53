"""Contract: every backend's snapshot reconciles after real traffic, and a tampered balance is reported."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

from comptroller.domain.budgets import ANY_SCOPE, Budget
from comptroller.domain.reconcile import reconcile
from comptroller.domain.scopes import Level
from comptroller.ports import LedgerStore
from comptroller.storage.sqlite import SQLiteStore
from ledger_kit import T0, USAGE, reserve_request


def _traffic(store: LedgerStore) -> None:
    """Settled, settled late, released, expired and still pending reservations on two budget levels."""
    store.put_budget(Budget(Level.AGENT, ANY_SCOPE, 100_000))
    store.put_budget(Budget(Level.TENANT, ANY_SCOPE, 100_000))
    held = [store.reserve(reserve_request(f"r{i}", 1_000, ttl_s=60), T0).reservation for i in range(5)]
    assert all(held)
    ids = [r.id for r in held if r is not None]
    store.settle(ids[0], USAGE, 700, T0)
    store.release(ids[1], T0)
    store.expire(T0 + timedelta(seconds=61))  # r2, r3, r4 expire
    store.settle(ids[2], USAGE, 400, T0 + timedelta(seconds=62))  # settled late
    store.reserve(reserve_request("pending", 500), T0 + timedelta(seconds=62))


def test_real_traffic_reconciles(store: LedgerStore) -> None:
    """After settles, releases, expiries and a late settle, balances equal usage plus open holds."""
    _traffic(store)
    snapshot = store.ledger_snapshot()
    assert reconcile(snapshot) == []
    assert sorted(c.cost_mc for c in snapshot.charges) == [400, 700]
    assert {b.reserved_mc for b in snapshot.balances} == {500}


def test_db_check_finds_a_tampered_sqlite_row(tmp_path: Path) -> None:
    """`comptroller db check` passes on a clean SQLite ledger and names a balance edited behind its back."""
    path = tmp_path / "ledger.db"
    store = SQLiteStore(path)
    _traffic(store)
    store.close()
    command = [str(Path(sys.executable).parent / "comptroller"), "db", "check", "--db", f"sqlite:///{path}"]
    clean = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE accounts SET settled_mc = settled_mc + 5 WHERE id = 1")
    dirty = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert dirty.returncode == 1
    assert "settled money differs" in dirty.stdout and "expected 1,100, found 1,105" in dirty.stdout
