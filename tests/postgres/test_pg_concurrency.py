"""Racing callers on the PostgreSQL ledger: guards and states, compare-and-set, sweeps, pool and lock limits.

Each race releases its threads together with a barrier, each thread on the store
(and its pool) or on a store of its own (a replica), and checks exact counts that
follow from the limits, never timings.
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from typing import Any

import pytest
from psycopg import sql

from comptroller.domain.budgets import Budget
from comptroller.domain.codes import Code
from comptroller.domain.defenses.verdict import Rule, Verdict
from comptroller.domain.ledger import AccountView, Event
from comptroller.domain.reconcile import reconcile
from comptroller.domain.scopes import Level
from comptroller.domain.state import GuardOutcome, StateKey, StoredState
from comptroller.errors import LedgerUnavailableError
from comptroller.storage.postgres import PostgresStore
from ledger_kit import T0, USAGE, assert_accounts_within_limits, attribution, reserve_request
from postgres.pg_kit import PG_URL, admin, postgres_store

THREADS = 32
CEILING_MC = 100
WHO = attribution("agent", tenant="tenant", task="task-1")


class AtMost:
    """An admit guard allowing ``limit`` calls per task, counted in a ``retry`` state row."""

    def __init__(self, limit: int) -> None:
        self.key = StateKey("retry", "ns|task-1")
        self.limit = limit

    def state_keys(self) -> Sequence[StateKey]:
        return [self.key]

    def apply(self, states: Mapping[StateKey, StoredState], accounts: Sequence[AccountView],
              now: datetime) -> GuardOutcome:
        current = states.get(self.key)
        count = 0 if current is None else int(str(current.record["count"]))
        if count >= self.limit:
            return GuardOutcome(verdict=Verdict(
                code=Code.RETRY_LIMIT, rule=Rule.LOOP, detector="test_limit", level=Level.TASK, scope=self.key.key,
                message=f"at most {self.limit} calls of this task; {count} made"))
        version = 0 if current is None else current.version
        return GuardOutcome(writes=(StoredState(self.key, version + 1, {"count": count + 1}),),
                            events=(Event(now, "test", "counted", detail={"count": count + 1}),))


@pytest.fixture
def store() -> Iterator[PostgresStore]:
    """A fresh PostgreSQL ledger with a pool wide enough for every racing thread."""
    s = postgres_store(max_size=THREADS)
    yield s
    s.close()


def _race(callers: int, call: Callable[[int], Any]) -> list[Any]:
    """Run ``call(i)`` in ``callers`` threads released together; their results in caller order."""
    barrier = threading.Barrier(callers, timeout=60)

    def run(i: int) -> Any:
        barrier.wait()
        return call(i)

    with ThreadPoolExecutor(callers) as pool:
        return list(pool.map(run, range(callers)))


def test_a_guard_counts_exactly_the_admitted_calls_across_racing_threads(store: PostgresStore) -> None:
    """A limit of 3 in a state row that does not exist yet: 3 admitted, the count is 3, the rest refused."""
    store.put_budget(Budget(Level.AGENT, "*", 10**9))
    limit = 3
    codes = _race(THREADS, lambda i: store.reserve(reserve_request(f"k{i}", CEILING_MC, who=WHO), T0,
                                                   AtMost(limit)).code)
    assert Counter(codes) == {Code.OK: limit, Code.RETRY_LIMIT: THREADS - limit}
    state = store.state(StateKey("retry", "ns|task-1"))
    assert state is not None
    assert (state.version, state.record) == (limit, {"count": limit})
    assert sorted(e.detail["count"] for e in store.events("test")) == list(range(1, limit + 1))
    assert len([e for e in store.events("refusal") if e.code == Code.RETRY_LIMIT]) == THREADS - limit


def test_a_budget_refusal_drops_the_guards_writes_under_contention(store: PostgresStore) -> None:
    """Budget room for 2 ceilings, guard room for 5: 2 admitted and the guard counted only those 2."""
    store.put_budget(Budget(Level.TASK, "*", 2 * CEILING_MC))
    codes = _race(THREADS, lambda i: store.reserve(reserve_request(f"k{i}", CEILING_MC, who=WHO), T0,
                                                   AtMost(5)).code)
    assert Counter(codes) == {Code.OK: 2, Code.BUDGET_EXCEEDED: THREADS - 2}
    state = store.state(StateKey("retry", "ns|task-1"))
    assert state is not None
    assert state.record == {"count": 2}
    assert_accounts_within_limits(store.accounts())


def test_compare_and_set_loses_no_increment_between_replicas() -> None:
    """Eight replicas adding 1 to a shared counter 25 times each by compare-and-set: it ends at 200."""
    first = postgres_store()
    schema = first.where.split("(schema ")[1][:-1]
    replicas = [first] + [PostgresStore(PG_URL, schema=schema, min_size=1, max_size=2, durable=False)
                          for _ in range(7)]
    key = StateKey("kill_switch", "ns")

    def bump(i: int) -> int:
        conflicts = 0
        for _ in range(25):
            while True:
                current = replicas[i].state(key)
                version = 0 if current is None else current.version
                count = 0 if current is None else int(str(current.record["n"]))
                if replicas[i].put_state(StoredState(key, version + 1, {"n": count + 1}), version):
                    break
                conflicts += 1
        return conflicts

    try:
        _race(len(replicas), bump)
        final = first.state(key)
        assert final is not None
        assert (final.version, final.record) == (200, {"n": 200})
    finally:
        for r in replicas:
            r.close()


def test_replicas_sweeping_at_once_expire_every_lease_exactly_once() -> None:
    """120 due leases, four replicas sweeping together: the counts add up to 120 and nothing stays held."""
    first = postgres_store()
    schema = first.where.split("(schema ")[1][:-1]
    first.put_budget(Budget(Level.NAMESPACE, "ns", 10**9))
    first.put_budget(Budget(Level.AGENT, "*", 10**9))
    for i in range(120):
        who = attribution(f"a{i % 7}")
        assert first.reserve(reserve_request(f"k{i}", 10 + i, who=who, ttl_s=1), T0).code is Code.OK
    replicas = [first] + [PostgresStore(PG_URL, schema=schema, min_size=1, max_size=2, durable=False)
                          for _ in range(3)]
    try:
        expired = _race(4, lambda i: replicas[i].expire(T0 + timedelta(seconds=2)))
        assert sum(expired) == 120
        assert all(a.reserved_mc == 0 for a in first.accounts())
        assert reconcile(first.ledger_snapshot()) == []
    finally:
        for r in replicas:
            r.close()


def _hold_account_lock(schema: str) -> Any:
    """An outside transaction holding every account row of ``schema`` locked (to stall the store)."""
    conn = admin()
    conn.execute("BEGIN")
    conn.execute(sql.SQL("SELECT id FROM {}.accounts FOR UPDATE").format(sql.Identifier(schema)))
    return conn


def _wait_until_blocked(application_name: str, count: int) -> None:
    """Poll (bounded) until ``count`` sessions of ``application_name`` wait on a row lock."""
    with admin() as conn:
        for _ in range(600):
            row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s "
                               "AND wait_event_type = 'Lock'", (application_name,)).fetchone()
            if row is not None and row[0] >= count:
                return
            time.sleep(0.05)
    raise AssertionError(f"{count} session(s) of {application_name} never blocked on the lock")


def test_an_exhausted_pool_refuses_after_a_bounded_wait_and_recovers() -> None:
    """One connection, held by a stalled reserve: the next call is refused naming the pool; then both work."""
    schema = postgres_store().where.split("(schema ")[1][:-1]
    name = f"ct_pool_{os.getpid()}"
    store = PostgresStore(f"{PG_URL}?application_name={name}", schema=schema, min_size=1, max_size=1, timeout_s=0.5,
                          durable=False)
    try:
        store.put_budget(Budget(Level.AGENT, "*", 10**6))
        assert store.reserve(reserve_request("warm", CEILING_MC), T0).code is Code.OK  # creates the account
        blocker = _hold_account_lock(schema)
        with ThreadPoolExecutor(1) as pool:
            stalled = pool.submit(store.reserve, reserve_request("stalled", CEILING_MC), T0)
            _wait_until_blocked(name, 1)
            with pytest.raises(LedgerUnavailableError, match=r"no database connection within 0\.5 s \(pool of 1"):
                store.reserve(reserve_request("refused", CEILING_MC), T0)
            blocker.execute("ROLLBACK")
            blocker.close()
            assert stalled.result(timeout=30).code is Code.OK
        assert store.reserve(reserve_request("after", CEILING_MC), T0).code is Code.OK
        assert store.reservation("refused") is None
    finally:
        store.close()


def test_a_row_locked_past_the_lock_timeout_fails_the_call_instead_of_hanging(store: PostgresStore) -> None:
    """Another session holds the account: after ``lock_timeout_s`` the reserve fails closed, holding nothing."""
    schema = store.where.split("(schema ")[1][:-1]
    quick = PostgresStore(PG_URL, schema=schema, min_size=1, max_size=1, lock_timeout_s=0.3, durable=False)
    try:
        quick.put_budget(Budget(Level.AGENT, "*", 10**6))
        assert quick.reserve(reserve_request("warm", CEILING_MC), T0).code is Code.OK
        blocker = _hold_account_lock(schema)
        try:
            with pytest.raises(LedgerUnavailableError, match="stayed locked"):
                quick.reserve(reserve_request("blocked", CEILING_MC), T0)
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        assert [a.reserved_mc for a in quick.accounts()] == [CEILING_MC]
        held = quick.reserve(reserve_request("after", CEILING_MC), T0).reservation
        assert held is not None
        assert quick.settle(held.id, USAGE, 10, T0).code is Code.SETTLED
    finally:
        quick.close()


def test_a_store_heals_when_the_accounts_it_remembers_are_gone(store: PostgresStore) -> None:
    """Accounts emptied behind the store's back (a restored ledger): the next reserve recreates them."""
    store.put_budget(Budget(Level.AGENT, "*", 10 * CEILING_MC))
    assert store.reserve(reserve_request("k1", CEILING_MC), T0).code is Code.OK
    with admin() as conn:
        schema = store.where.split("(schema ")[1][:-1]
        conn.execute(sql.SQL("TRUNCATE {}.accounts").format(sql.Identifier(schema)))
    assert store.reserve(reserve_request("k2", CEILING_MC), T0).code is Code.OK
    assert [a.reserved_mc for a in store.accounts()] == [CEILING_MC]
