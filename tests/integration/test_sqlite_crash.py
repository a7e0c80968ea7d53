"""A caller killed with SIGKILL while holding reservations leaks nothing and double-counts nothing.

The child process commits some reservations through SQLiteStore, then opens a raw
write transaction (an unfinished hold) and blocks reading stdin; the test kills it
with SIGKILL. Time is virtual: the store takes ``now`` as a parameter, so the lease
runs out by passing an instant after ``expires_at``, without sleeping.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from comptroller.domain.budgets import Budget
from comptroller.domain.codes import Code
from comptroller.domain.ledger import ReservationState
from comptroller.domain.scopes import Level
from comptroller.storage.sqlite import SQLiteStore
from ledger_kit import T0, USAGE, account_of, attribution, reserve_request

HELD = 3
CEILING_MC = 1_000
TTL_S = 60.0
UNCOMMITTED_MC = 777_777
WHO = attribution("doomed")
AGENT_SCOPE = dict(WHO.scopes())[Level.AGENT]

CHILD = textwrap.dedent("""
    import json, sqlite3, sys
    from datetime import datetime
    from comptroller.domain.ledger import ReserveRequest
    from comptroller.domain.scopes import Attribution
    from comptroller.storage.sqlite import SQLiteStore

    path, now, held, ceiling, ttl = sys.argv[1], datetime.fromisoformat(sys.argv[2]), *map(float, sys.argv[3:6])
    who = Attribution(namespace="ns", tenant="t1", agent="doomed")
    store = SQLiteStore(path)
    ids = []
    for i in range(int(held)):
        result = store.reserve(ReserveRequest(f"doomed-{i}", who, "test-model", int(ceiling), 1000, 100,
                                              ttl_s=ttl), now)
        ids.append(result.reservation.id)
    print(json.dumps(ids), flush=True)
    raw = sqlite3.connect(path, isolation_level=None)
    raw.execute("BEGIN IMMEDIATE")
    raw.execute("UPDATE accounts SET reserved_mc = reserved_mc + ?", (int(sys.argv[6]),))
    print("in-transaction", flush=True)
    sys.stdin.read()
""")


def _run_and_kill(path: Path) -> list[str]:
    """Start the child, wait until it holds reservations and an open write, SIGKILL it; its reservation ids."""
    args = [sys.executable, "-c", CHILD, str(path), T0.isoformat(), str(HELD), str(CEILING_MC), str(TTL_S),
            str(UNCOMMITTED_MC)]
    with subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True) as child:
        try:
            assert child.stdout is not None and child.stderr is not None
            first = child.stdout.readline()
            assert first, f"the child died before reserving: {child.stderr.read()}"
            ids = json.loads(first)
            assert child.stdout.readline().strip() == "in-transaction", child.stderr.read()
            os.kill(child.pid, signal.SIGKILL)
            assert child.wait(timeout=30) == -signal.SIGKILL
        finally:
            if child.poll() is None:
                child.kill()
                child.wait(timeout=30)
    assert len(ids) == HELD
    return list(ids)


@pytest.fixture
def crashed(tmp_path: Path) -> tuple[Path, Budget, list[str]]:
    """A ledger whose only caller was killed holding HELD reservations that fill its agent budget."""
    path = tmp_path / "ledger.db"
    budget = Budget(Level.AGENT, AGENT_SCOPE, HELD * CEILING_MC)
    store = SQLiteStore(path, busy_timeout_s=10)
    store.put_budget(budget)
    store.close()
    return path, budget, _run_and_kill(path)


def _after_expiry(store: SQLiteStore, ids: list[str]) -> datetime:
    """An instant after every lease of ``ids`` has expired."""
    reservations = [store.reservation(i) for i in ids]
    return max(r.expires_at for r in reservations if r is not None) + timedelta(seconds=1)


@pytest.mark.timeout(60)
def test_killed_callers_holds_survive_until_their_lease_ends(crashed: tuple[Path, Budget, list[str]]) -> None:
    """After the kill, the committed holds still count and the unfinished write left no trace."""
    path, budget, ids = crashed
    store = SQLiteStore(path, busy_timeout_s=10)
    try:
        account = account_of(store, budget, AGENT_SCOPE)
        assert (account.settled_mc, account.reserved_mc) == (0, HELD * CEILING_MC)
        refused = store.reserve(reserve_request("survivor", 1, who=WHO), T0 + timedelta(seconds=1))
        assert refused.code is Code.BUDGET_EXCEEDED
        assert all(r is not None and r.state is ReservationState.PENDING for r in map(store.reservation, ids))
    finally:
        store.close()


@pytest.mark.timeout(60)
def test_killed_callers_money_returns_when_the_lease_expires(crashed: tuple[Path, Budget, list[str]]) -> None:
    """Once the leases expire the account holds nothing, nothing was charged, and the budget admits again."""
    path, budget, ids = crashed
    store = SQLiteStore(path, busy_timeout_s=10)
    try:
        later = _after_expiry(store, ids)
        assert later - T0 <= timedelta(seconds=TTL_S + 1)
        assert store.expire(later) == HELD
        assert store.expire(later) == 0
        account = account_of(store, budget, AGENT_SCOPE)
        assert (account.settled_mc, account.reserved_mc) == (0, 0)
        assert list(store.usage_records()) == []
        assert store.reserve(reserve_request("next", budget.limit_mc, who=WHO), later).code is Code.OK
    finally:
        store.close()


@pytest.mark.timeout(60)
def test_settle_for_a_killed_caller_after_expiry_is_late_exactly_once(
        crashed: tuple[Path, Budget, list[str]]) -> None:
    """A settle that arrives for a dead caller's expired lease is recorded once, as settled_late."""
    path, budget, ids = crashed
    store = SQLiteStore(path, busy_timeout_s=10)
    try:
        later = _after_expiry(store, ids)
        cost = CEILING_MC // 2
        first = store.settle(ids[0], USAGE, cost, later)
        again = store.settle(ids[0], USAGE, cost, later + timedelta(seconds=1))
        assert (first.code, again.code) == (Code.SETTLED_LATE, Code.ALREADY_SETTLED)
        assert store.release(ids[0], later).code is Code.ALREADY_SETTLED
        assert store.release(ids[1], later).code is Code.ALREADY_RELEASED
        account = account_of(store, budget, AGENT_SCOPE)
        assert (account.settled_mc, account.reserved_mc) == (cost, 0)
        records = list(store.usage_records())
        assert [(r.reservation_id, r.cost_mc, r.outcome) for r in records] == [(ids[0], cost, "settled_late")]
    finally:
        store.close()
