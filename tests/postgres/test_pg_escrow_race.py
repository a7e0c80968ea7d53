"""Escrow shards under a real race: 4 replica processes x 16 threads on one PostgreSQL ledger.

The namespace budget holds exactly K ceilings and is split into shards (so is every
tenant's); every thread reserves until it is refused. Exactly K holds must be admitted,
whatever the interleaving. A monitor thread in the test process samples the namespace
account's totals and every shard in one statement (one snapshot) throughout, and checks
settled + reserved <= limit, caps summing to at most the limit and no shard past its cap.
The second race churns: half the threads first reserve and release again and again,
returning money to whichever shard it came from, so shards run dry and rebalance while
others reserve; exactly K holds still remain at the end.

Every wait is bounded (barriers, joins, queue reads, the monitor's stop). Skipped with
the reason when PostgreSQL is unreachable.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.queues
import multiprocessing.synchronize
import queue
import threading
from dataclasses import dataclass, field

import pytest

from comptroller.domain.budgets import ANY_SCOPE, Budget
from comptroller.domain.scopes import Level, scope_key
from comptroller.storage.postgres import PostgresStore
from ledger_kit import T0, attribution, reserve_request
from postgres.pg_kit import PG_URL, admin, new_schema

PROCESSES = 4
THREADS = 16
SHARDS = 8
K = 100
CEILING_MC = 1_000
CHURN = 6
"""Reserve-and-release cycles of each churning thread before it reserves to keep."""
WAIT_S = 240.0

_MONITOR = """
SELECT b.limit_mc, a.settled_mc + coalesce(sum(s.settled_mc), 0), a.reserved_mc + coalesce(sum(s.reserved_mc), 0),
       coalesce(sum(s.cap_mc), 0), coalesce(bool_and(s.settled_mc + s.reserved_mc <= s.cap_mc), true),
       array_agg(s.cap_mc ORDER BY s.shard)
FROM accounts a JOIN budgets b ON b.id = a.budget_id LEFT JOIN account_shards s ON s.account_id = a.id
WHERE b.level = 'namespace' GROUP BY a.id, b.limit_mc"""


def _replica(schema: str, process: int, churn: bool, barrier: multiprocessing.synchronize.Barrier,
             out: multiprocessing.queues.Queue[tuple[int, int, str]]) -> None:
    """One replica: its own store and pool, 16 threads reserving until refused; reports (kept, released, error)."""
    store = PostgresStore(PG_URL, schema=schema, min_size=1, max_size=THREADS, timeout_s=60, lock_timeout_s=60,
                          escrow_shards=SHARDS)
    kept, released, failures = [0] * THREADS, [0] * THREADS, []
    start = threading.Barrier(THREADS, timeout=WAIT_S)

    def caller(t: int) -> None:
        who = attribution(f"a{t}", tenant=f"t{process}")
        try:
            start.wait()
            if churn and t % 2 == 0:
                for n in range(CHURN):
                    r = store.reserve(reserve_request(f"p{process}t{t}c{n}", CEILING_MC, who=who), T0)
                    if r.reservation is not None:
                        store.release(r.reservation.id, T0)
                        released[t] += 1
            for n in range(K + 2):  # reserve to keep until refused (at most K can ever be held)
                r = store.reserve(reserve_request(f"p{process}t{t}k{n}", CEILING_MC, who=who), T0)
                if not r.admitted:
                    return
                kept[t] += 1
        except BaseException as exc:  # reported to the test process: a failed caller fails the race
            failures.append(repr(exc))

    threads = [threading.Thread(target=caller, args=(t,)) for t in range(THREADS)]
    barrier.wait(timeout=WAIT_S)
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=WAIT_S)
    store.close()
    hung = sum(th.is_alive() for th in threads)
    out.put((sum(kept), sum(released), "; ".join(failures) + (f"{hung} threads still running" if hung else "")))


@dataclass
class _Monitor:
    """Samples the namespace account and its shards until stopped; keeps every violation it sees."""

    schema: str
    samples: int = 0
    violations: list[str] = field(default_factory=list)
    caps_seen: set[tuple[int, ...]] = field(default_factory=set)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        with admin() as conn:
            conn.execute(f"SET search_path TO {self.schema}")
            while not self.stop.wait(0.002):
                for limit, settled, reserved, caps, within, per_shard in conn.execute(_MONITOR).fetchall():
                    self.samples += 1
                    self.caps_seen.add(tuple(c or 0 for c in per_shard))
                    if settled + reserved > limit or caps > limit or not within:
                        self.violations.append(f"limit {limit}, settled {settled}, reserved {reserved}, "
                                               f"caps {caps} {per_shard}, shards within caps: {within}")


def _race(churn: bool) -> tuple[list[tuple[int, int, str]], _Monitor, PostgresStore]:
    """Run the race on a fresh schema; the replicas' reports, the monitor, and a store to read the result."""
    schema = new_schema()
    store = PostgresStore(PG_URL, schema=schema, max_size=2, escrow_shards=SHARDS)
    store.put_budget(Budget(Level.NAMESPACE, scope_key("ns"), K * CEILING_MC))
    store.put_budget(Budget(Level.TENANT, ANY_SCOPE, 10**12))
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(PROCESSES + 1)
    out: multiprocessing.queues.Queue[tuple[int, int, str]] = ctx.Queue()
    replicas = [ctx.Process(target=_replica, args=(schema, p, churn, barrier, out)) for p in range(PROCESSES)]
    monitor = _Monitor(schema)
    watcher = threading.Thread(target=monitor.run)
    for p in replicas:
        p.start()
    watcher.start()
    try:
        barrier.wait(timeout=WAIT_S)
        reports = [out.get(timeout=WAIT_S) for _ in replicas]
    except (queue.Empty, threading.BrokenBarrierError) as exc:
        pytest.fail(f"a replica did not report within {WAIT_S:.0f} s: {exc!r}")
    finally:
        monitor.stop.set()
        watcher.join(timeout=30)
        for p in replicas:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    return reports, monitor, store


@pytest.mark.parametrize("churn", [False, True], ids=["reserve-only", "churn-and-rebalance"])
def test_exactly_k_ceilings_are_admitted_across_4_processes_x_16_threads(churn: bool) -> None:
    """64 racing callers on a sharded budget of K ceilings hold exactly K, and the monitor never sees
    settled + reserved past the limit, caps past the limit or a shard past its cap."""
    reports, monitor, store = _race(churn)
    try:
        assert [r[2] for r in reports] == [""] * PROCESSES, "a caller failed"
        assert sum(r[0] for r in reports) == K
        [namespace] = [a for a in store.accounts() if a.budget.level is Level.NAMESPACE]
        assert (namespace.settled_mc, namespace.reserved_mc) == (0, K * CEILING_MC)
        assert monitor.violations == []
        assert monitor.samples >= 3, "the monitor did not sample during the race"
        if churn:
            assert sum(r[1] for r in reports) > 0  # money went back to shards while others reserved
            assert len(monitor.caps_seen) >= 3, "the shards were never rebalanced under load"
    finally:
        store.close()
