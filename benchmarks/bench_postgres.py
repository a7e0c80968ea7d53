"""Reserve + settle throughput of the PostgreSQL ledger, 1 process and 4 processes on one database.

The shape of ``bench_ledger.py`` (same budgets, attributions, pairs and runners, so the
numbers compare): a *pair* is ``Engine.admit`` + ``Engine.settle`` (``engine``) or
``store.reserve`` + ``store.settle`` with a precomputed request (``store``). Every call
touches four accounts (namespace, tenant, agent, conversation), so every pair locks the
one namespace account twice: the hot row every call of a namespace shares.

Each process opens its own :class:`PostgresStore` (its own pool) on one fresh schema
and runs ``--threads`` caller threads (a gateway replica serves many calls at once;
PostgreSQL commits concurrent transactions with one WAL flush, but a transaction keeps
its row locks until its commit is flushed, so the hot row admits at most one commit
per flush). Processes start together at a barrier; the rate is all pairs over the span
from the first start to the last end, the median of ``--repeats`` runs, with pairs per
CPU-second of the client processes, and the CPU of every ``postgres`` process over the run
(:func:`server_cpu_s`; other sessions on the same server count too), both as milliseconds per pair.

Both commit modes are measured: ``durable`` (``synchronous_commit = on``, the default:
each commit waits for the WAL flush) and ``async`` (``synchronous_commit = off``: a
server crash may lose the last fraction of a second of commits, never corrupt them).

Usage::

    python benchmarks/bench_postgres.py                              # table on stdout
    python benchmarks/bench_postgres.py --markdown BENCHMARKS.md     # also update the block there
    COMPTROLLER_BENCH_PG_URL=postgresql://user@host/db python benchmarks/bench_postgres.py
"""

from __future__ import annotations

import argparse
import itertools
import multiprocessing as mp
import os
import statistics
import sys
import threading
import time
from dataclasses import dataclass
from multiprocessing.synchronize import Barrier
from pathlib import Path

import psycopg
from psycopg import sql

from bench_ledger import RUNNERS, START, STEP_S, attributions, budgets
from comptroller.clock import VirtualClock
from comptroller.domain.codes import Code
from comptroller.domain.ledger import ReserveRequest
from comptroller.domain.scopes import Level
from comptroller.domain.usage import Usage
from comptroller.storage.migrations import upgrade
from comptroller.storage.postgres import PostgresStore
from markdown_block import update_block

URL = os.environ.get("COMPTROLLER_BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
CONFIGS = ("store-1", "engine-1", "store-N", "engine-N")
"""The default configurations; ``spread-1`` and ``spread-N`` run the store with each caller on its own
attributions (``run_store_spread``)."""
Span = tuple[float, float, float, int, int]
"""One process's run: wall-clock start and end (``perf_counter``), CPU seconds, and the batches and calls its
store's group commits sent (0, 0 without group commit)."""


def fresh_schema(levels: str) -> str:
    """A new schema at the latest ledger version with the budgets installed; its name.

    ``levels``: ``all`` (bench_ledger's four levels) or ``no-namespace`` (without the namespace
    cap, so no account is shared by every call: the hot row is gone).
    """
    name = f"bench_{os.getpid()}_{time.monotonic_ns()}"
    with psycopg.connect(URL, autocommit=True) as conn:
        upgrade(conn, schema=name)
    store = PostgresStore(URL, schema=name, max_size=1)
    for budget in budgets():
        if levels == "all" or budget.level is not Level.NAMESPACE:
            store.put_budget(budget)
    store.close()
    return name


def drop_schema(name: str) -> None:
    """Drop a benchmark schema."""
    with psycopg.connect(URL, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(name)))


def run_store_spread(store: PostgresStore, pairs: int, tag: str, offset: int) -> None:
    """``run_store`` with the caller starting at its own place in the attribution cycle (``offset``), as
    independent agents do, instead of every caller on the same agent and conversation rows at once."""
    clock = VirtualClock(START)
    attrs = attributions()
    usage = Usage(input_tokens=1200, output_tokens=350)
    for i in range(offset, offset + pairs):
        request = ReserveRequest(idempotency_key=f"{tag}-{i}", attribution=attrs[i % len(attrs)], model="gpt-4o-mini",
                                 ceiling_mc=80, input_tokens_max=1200, output_tokens_max=1024, ttl_s=3600.0)
        result = store.reserve(request, clock.now())
        if result.reservation is None:
            raise SystemExit(f"benchmark call refused: {result.refusal}")
        clock.advance(STEP_S)
        if store.settle(result.reservation.id, usage, 39, clock.now()).code is not Code.SETTLED:
            raise SystemExit("benchmark settle failed")


def _process(*, mode: str, schema: str, durable: bool, pairs: int, threads: int, tag: str, shards: int,
             batch: int, barrier: Barrier, out: mp.SimpleQueue[Span]) -> None:
    """One replica: its own store, ``threads`` callers splitting ``pairs`` pairs."""
    options = {} if batch < 0 else {"batch_max": batch}  # -1: the store's default (a tree without the option)
    store = PostgresStore(URL, schema=schema, min_size=threads, max_size=threads, durable=durable,
                          escrow_shards=shards, **options)
    share = [pairs // threads + (1 if t < pairs % threads else 0) for t in range(threads)]
    failures: list[BaseException] = []

    def caller(t: int) -> None:
        try:
            if mode == "spread":
                run_store_spread(store, share[t], f"{tag}t{t}", offset=(int(tag[1:]) * threads + t) * 37)
            else:
                RUNNERS[mode](store, share[t], f"{tag}t{t}")
        except BaseException as exc:  # reported below: a run with a failed caller is no measurement
            failures.append(exc)

    workers = [threading.Thread(target=caller, args=(t,)) for t in range(threads)]
    barrier.wait()
    cpu, start = time.process_time(), time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    end = time.perf_counter()
    sent = [(b.batches, b.items) for b in getattr(store, "batchers", ()) if b is not None]
    store.close()
    if failures:
        raise SystemExit(f"a caller failed, so this run measures nothing: {failures[0]!r}")
    out.put((start, end, time.process_time() - cpu, sum(b for b, _ in sent), sum(i for _, i in sent)))


def server_cpu_s() -> float:
    """CPU seconds used so far by every PostgreSQL process on this host (Linux ``/proc``).

    Live ``postgres`` processes count their own user + system time, and the postmaster
    (the one whose parent is not ``postgres``) adds that of the backends it has reaped, so the
    difference of two readings is the server's CPU between them, whatever sessions came and
    went. Other clients' sessions are included: run on an otherwise idle server. 0 without ``/proc``.
    """
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for entry in Path("/proc").iterdir() if Path("/proc/self/stat").exists() else ():
        try:
            text = (entry / "stat").read_text() if entry.name.isdigit() else ""
        except OSError:
            continue
        if "(postgres)" not in text:
            continue
        fields = text.rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
        parent = Path(f"/proc/{fields[1]}/stat")
        if not (parent.exists() and "(postgres)" in parent.read_text()):
            total += int(fields[13]) + int(fields[14])  # cutime, cstime: reaped backends
    return total / tick


def run_once(mode: str, *, procs: int, threads: int, pairs: int, durable: bool, levels: str,
             shards: int = 16, batch: int = -1) -> tuple[float, float, float, float]:
    """Aggregate pairs per wall-clock second, per client CPU-second and per server CPU-second (every
    ``postgres`` process, :func:`server_cpu_s`) of one run on a fresh schema, and the mean calls per group
    commit batch (0: none) (``shards``: escrow shards of each namespace and tenant account, 0 for none;
    ``batch``: the store's ``batch_max``, -1 its default)."""
    schema = fresh_schema(levels)
    server_before = server_cpu_s()
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(procs)
    out: mp.SimpleQueue[Span] = ctx.SimpleQueue()
    workers = [ctx.Process(target=_process, kwargs={
        "mode": mode, "schema": schema, "durable": durable, "pairs": pairs, "threads": threads, "tag": f"p{n}",
        "shards": shards, "batch": batch,
        "barrier": barrier, "out": out}) for n in range(procs)]
    try:
        for w in workers:
            w.start()
        for w in workers:
            w.join()
            if w.exitcode != 0:
                raise SystemExit(f"benchmark process exited with {w.exitcode}")
        spans = [out.get() for _ in workers]
        time.sleep(0.5)  # the backends of the closed pools exit and are reaped
        server = server_cpu_s() - server_before
    finally:
        drop_schema(schema)
    wall = max(s[1] for s in spans) - min(s[0] for s in spans)
    total = pairs * procs
    batches = sum(s[3] for s in spans)
    return (total / wall, total / sum(s[2] for s in spans), total / server if server > 0 else 0.0,
            sum(s[4] for s in spans) / batches if batches else 0.0)


@dataclass(frozen=True)
class Result:
    """The runs of one configuration."""

    mode: str
    levels: str
    shards: int
    batch: int
    commit: str
    procs: int
    threads: int
    pairs: int
    rates: list[float]
    cpu_rates: list[float]
    server_rates: list[float]
    batch_sizes: list[float]


def commit_latency_ms(samples: int = 50) -> float:
    """Median time of one durable single-row commit on the server, milliseconds (the WAL flush)."""
    with psycopg.connect(URL, autocommit=True) as conn:
        conn.execute("CREATE TEMP TABLE IF NOT EXISTS probe (n int) ON COMMIT PRESERVE ROWS")
        conn.execute("CREATE TABLE IF NOT EXISTS bench_commit_probe (n int)")
        times = []
        for i in range(samples):
            start = time.perf_counter()
            conn.execute("INSERT INTO bench_commit_probe VALUES (%s)", (i,))
            times.append(time.perf_counter() - start)
        conn.execute("DROP TABLE bench_commit_probe")
    return statistics.median(times) * 1000


def table(results: list[Result], flush_ms: float) -> str:
    """A markdown table of the medians and the spread."""
    lines = [f"Durable single-row commit on this server: {flush_ms:.1f} ms (median of 50).", "",
             "| configuration | budgets | shards | batch_max | commit | processes | threads each | pairs per process "
             "| median pairs/s | client CPU ms/pair | server CPU ms/pair | calls per batch | runs (pairs/s) |",
             "|---|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in results:
        runs = ", ".join(f"{x:,.0f}" for x in r.rates)
        server = statistics.median(r.server_rates)
        batch = "default" if r.batch < 0 else r.batch
        lines.append(f"| postgres-{r.mode} | {r.levels} | {r.shards} | {batch} | {r.commit} | {r.procs} | {r.threads} "
                     f"| {r.pairs:,} | {statistics.median(r.rates):,.0f} | {1000 / statistics.median(r.cpu_rates):.2f} "
                     f"| {1000 / server if server else float('nan'):.2f} | {statistics.median(r.batch_sizes):.2f} "
                     f"| {runs} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", type=int, default=1500, help="pairs per process")
    p.add_argument("--procs", type=int, default=4, help="processes for the -N configurations")
    p.add_argument("--threads", type=int, default=4, help="caller threads per process")
    p.add_argument("--repeats", type=int, default=3, help="runs per configuration; the median is reported")
    p.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated subset of {CONFIGS}")
    p.add_argument("--commits", default="durable,async", help="commit modes: durable, async or both")
    p.add_argument("--levels", default="all", help="budget sets: all, no-namespace or both (comma-separated)")
    p.add_argument("--shards", default="16", help="escrow shards per namespace/tenant account, comma-separated "
                   "(0: none, every reserve locks the account row)")
    p.add_argument("--batch", default="-1", help="the stores' batch_max (group commit), comma-separated "
                   "(0: off; -1: the store's default)")
    p.add_argument("--markdown", type=Path, default=None, help="update the block in this markdown file")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print the table."""
    args = parse_args(argv)
    results = []
    for levels, shards, batch, commit, config in itertools.product(
            args.levels.split(","), [int(x) for x in args.shards.split(",")], [int(x) for x in args.batch.split(",")],
            args.commits.split(","), args.configs.split(",")):
        mode, n = config.split("-")
        procs = args.procs if n == "N" else 1
        runs = [run_once(mode, procs=procs, threads=args.threads, pairs=args.pairs, durable=commit == "durable",
                         levels=levels, shards=shards, batch=batch) for _ in range(args.repeats)]
        results.append(Result(mode, levels, shards, batch, commit, procs, args.threads, args.pairs,
                              [r[0] for r in runs], [r[1] for r in runs], [r[2] for r in runs],
                              [r[3] for r in runs]))
        print(f"{config} {levels} shards={shards} batch={batch} {commit}: "
              f"median {statistics.median(results[-1].rates):,.0f} pairs/s", file=sys.stderr, flush=True)
    text = table(results, commit_latency_ms())
    print(text)
    if args.markdown is not None:
        update_block(args.markdown, "bench_postgres", text)


if __name__ == "__main__":
    main()
