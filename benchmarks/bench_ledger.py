"""Reserve + settle throughput of the ledger, through the engine and on the store alone.

One *pair* is one reservation and its settle: ``Engine.admit`` + ``Engine.settle``
(pricing, output cap, ceiling, reserve, settle), or ``store.reserve`` +
``store.settle`` with a precomputed request (the storage cost alone).

Every call is attributed to a namespace, one of 10 tenants, one of 5 agents per
tenant and one of 40 conversations, and four budget levels apply to each call
(namespace total, tenant month, agent day by default ``*``, conversation total by
default ``*``), so each pair touches four accounts. Limits are high enough that
nothing is refused; a virtual clock moves 10 ms per pair, so no lease expires.

Configurations: memory (1 process), SQLite in one process, and SQLite with
``--procs`` processes (multiprocessing spawn) on one file, each process with its
own store and engine, reporting the aggregate pairs/s over the span from the first
start to the last end. Each configuration runs ``--repeats`` times on a fresh
database and the median is reported (the machine may be shared and noisy). Beside
wall-clock pairs/s the table gives pairs per CPU-second (``time.process_time``,
summed over the processes), which other load on the machine disturbs less.

Usage::

    python benchmarks/bench_ledger.py                      # table on stdout
    python benchmarks/bench_ledger.py --markdown BENCHMARKS.md   # also update the table there
    python benchmarks/bench_ledger.py --profile sqlite-engine    # cProfile one run instead
"""

from __future__ import annotations

import argparse
import cProfile
import multiprocessing as mp
import pstats
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from multiprocessing.synchronize import Barrier
from pathlib import Path

from comptroller.clock import VirtualClock
from comptroller.domain.budgets import ANY_SCOPE, Budget, Period
from comptroller.domain.codes import Code
from comptroller.domain.ledger import ReserveRequest
from comptroller.domain.scopes import Attribution, Level
from comptroller.domain.usage import Usage
from comptroller.engine import CallRequest, Engine
from comptroller.ports import LedgerStore
from comptroller.prices import PriceBook
from comptroller.storage.memory import MemoryStore
from comptroller.storage.sqlite import SQLiteStore
from markdown_block import update_block

MODEL = "gpt-4o-mini"
NAMESPACE = "bench"
TENANTS = 10
AGENTS_PER_TENANT = 5
CONVERSATIONS = 40
STEP_S = 0.01
START = datetime(2025, 3, 10, 9, 0, tzinfo=UTC)
CONFIGS = ("memory-store", "memory-engine", "sqlite-store", "sqlite-engine", "sqlite-store-N",
           "sqlite-engine-N")


def budgets() -> list[Budget]:
    """Four levels: a namespace cap, every tenant per month, every agent per day, every group chat."""
    return [
        Budget(level=Level.NAMESPACE, scope=NAMESPACE, limit_mc=10**15),
        Budget(level=Level.TENANT, scope=ANY_SCOPE, limit_mc=10**14, period=Period.MONTH),
        Budget(level=Level.AGENT, scope=ANY_SCOPE, limit_mc=10**13, period=Period.DAY,
               timezone="Europe/Paris"),
        Budget(level=Level.CONVERSATION, scope=ANY_SCOPE, limit_mc=10**13),
    ]


def attributions() -> list[Attribution]:
    """Every (tenant, agent, conversation) combination a run cycles through."""
    out = []
    for c in range(CONVERSATIONS):
        tenant = c % TENANTS
        for a in range(AGENTS_PER_TENANT):
            out.append(Attribution(namespace=NAMESPACE, tenant=f"t{tenant}", agent=f"agent-{a}",
                                   conversation=f"conv-{c}", phase="Coding"))
    return out


def open_store(kind: str, path: Path) -> LedgerStore:
    """A fresh store of ``kind`` (``memory`` or ``sqlite``) with the budgets installed."""
    store: LedgerStore = MemoryStore() if kind == "memory" else SQLiteStore(path)
    for budget in budgets():
        store.put_budget(budget)
    return store


def run_engine(store: LedgerStore, pairs: int, tag: str) -> None:
    """``pairs`` admit + settle through the engine."""
    clock = VirtualClock(START)
    engine = Engine(store=store, prices=PriceBook(), clock=clock, ttl_s=3600.0)
    attrs = attributions()
    usage = Usage(input_tokens=1200, output_tokens=350)
    for i in range(pairs):
        admission = engine.admit(CallRequest(attribution=attrs[i % len(attrs)], model=MODEL,
                                             input_tokens_max=1200, max_tokens=1024,
                                             idempotency_key=f"{tag}-{i}"))
        if admission.reservation is None:
            raise SystemExit(f"benchmark call refused: {admission.refusal}")
        clock.advance(STEP_S)
        if engine.settle(admission.reservation, usage).code is not Code.SETTLED:
            raise SystemExit("benchmark settle failed")


def run_store(store: LedgerStore, pairs: int, tag: str) -> None:
    """``pairs`` reserve + settle on the store alone (ceiling and cost precomputed)."""
    clock = VirtualClock(START)
    attrs = attributions()
    usage = Usage(input_tokens=1200, output_tokens=350)
    for i in range(pairs):
        request = ReserveRequest(idempotency_key=f"{tag}-{i}", attribution=attrs[i % len(attrs)], model=MODEL,
                                 ceiling_mc=80, input_tokens_max=1200, output_tokens_max=1024, ttl_s=3600.0)
        result = store.reserve(request, clock.now())
        if result.reservation is None:
            raise SystemExit(f"benchmark call refused: {result.refusal}")
        clock.advance(STEP_S)
        if store.settle(result.reservation.id, usage, 39, clock.now()).code is not Code.SETTLED:
            raise SystemExit("benchmark settle failed")


RUNNERS: dict[str, Callable[[LedgerStore, int, str], None]] = {"engine": run_engine, "store": run_store}


Span = tuple[float, float, float]
"""One timed run: wall-clock start and end (``perf_counter``, seconds) and CPU seconds used."""


def timed(mode: str, store: LedgerStore, pairs: int, tag: str) -> Span:
    """Run ``pairs`` pairs of ``mode`` on ``store`` and time them."""
    cpu, start = time.process_time(), time.perf_counter()
    RUNNERS[mode](store, pairs, tag)
    return start, time.perf_counter(), time.process_time() - cpu


def _worker(*, mode: str, path: str, pairs: int, tag: str, barrier: Barrier, out: mp.SimpleQueue[Span]) -> None:
    """One of the processes on a shared SQLite file: its own store, started with the others."""
    store = SQLiteStore(path)
    barrier.wait()
    out.put(timed(mode, store, pairs, tag))
    store.close()


def one_process(kind: str, mode: str, pairs: int, workdir: Path) -> tuple[float, float]:
    """Pairs per wall-clock second and per CPU-second of one run in this process on a fresh store."""
    store = open_store(kind, workdir / f"one-{time.monotonic_ns()}.db")
    start, end, cpu = timed(mode, store, pairs, "p0")
    store.close()
    return pairs / (end - start), pairs / cpu


def many_processes(mode: str, pairs: int, procs: int, workdir: Path) -> tuple[float, float]:
    """Aggregate pairs per wall-clock second and per CPU-second of ``procs`` processes on one SQLite file."""
    path = workdir / f"many-{time.monotonic_ns()}.db"
    open_store("sqlite", path).close()
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(procs)
    out: mp.SimpleQueue[Span] = ctx.SimpleQueue()
    workers = [ctx.Process(target=_worker, kwargs={"mode": mode, "path": str(path), "pairs": pairs,
                                                   "tag": f"p{n}", "barrier": barrier, "out": out})
               for n in range(procs)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
        if w.exitcode != 0:
            raise SystemExit(f"worker exited with {w.exitcode}")
    spans = [out.get() for _ in workers]
    wall = max(end for _, end, _ in spans) - min(start for start, _, _ in spans)
    return pairs * procs / wall, pairs * procs / sum(cpu for _, _, cpu in spans)


@dataclass(frozen=True)
class Result:
    """The runs of one configuration."""

    config: str
    procs: int
    pairs: int
    rates: list[float]
    cpu_rates: list[float]

    @property
    def median(self) -> float:
        """Median pairs per wall-clock second."""
        return statistics.median(self.rates)

    @property
    def cpu_median(self) -> float:
        """Median pairs per CPU-second."""
        return statistics.median(self.cpu_rates)


def measure(config: str, args: argparse.Namespace, workdir: Path) -> Result:
    """Run one configuration ``args.repeats`` times."""
    kind, mode, *many = config.split("-")
    procs = args.procs if many else 1
    pairs = args.pairs if kind == "sqlite" else args.pairs * 4
    runs = [many_processes(mode, pairs, procs, workdir) if many else one_process(kind, mode, pairs, workdir)
            for _ in range(args.repeats)]
    return Result(config, procs, pairs, [wall for wall, _ in runs], [cpu for _, cpu in runs])


def table(results: list[Result]) -> str:
    """A markdown table of the medians and the spread."""
    lines = ["| configuration | processes | pairs per process | median pairs/s | median pairs/CPU-s "
             "| runs (pairs/s) |", "|---|---:|---:|---:|---:|---|"]
    for r in results:
        runs = ", ".join(f"{x:,.0f}" for x in r.rates)
        lines.append(f"| {r.config.removesuffix('-N')} | {r.procs} | {r.pairs:,} | {r.median:,.0f} "
                     f"| {r.cpu_median:,.0f} | {runs} |")
    return "\n".join(lines)


def profile(config: str, pairs: int, workdir: Path, top: int) -> None:
    """cProfile one single-process run and print the top functions by own and cumulative time."""
    kind, mode = config.split("-")[:2]
    store = open_store(kind, workdir / "profile.db")
    profiler = cProfile.Profile()
    profiler.enable()
    RUNNERS[mode](store, pairs, "prof")
    profiler.disable()
    stats = pstats.Stats(profiler, stream=sys.stdout).strip_dirs()
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", type=int, default=5000, help="pairs per process on SQLite (x4 in memory)")
    p.add_argument("--procs", type=int, default=4, help="processes for the -N configurations")
    p.add_argument("--repeats", type=int, default=5, help="runs per configuration; the median is reported")
    p.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated subset of {CONFIGS}")
    p.add_argument("--dir", type=Path, default=None, help="where database files go (default: a temp dir)")
    p.add_argument("--markdown", type=Path, default=None, help="update the table in this markdown file")
    p.add_argument("--profile", choices=[c for c in CONFIGS if not c.endswith("-N")], default=None,
                   help="profile one run of this configuration instead of benchmarking")
    p.add_argument("--top", type=int, default=30, help="functions shown per profile listing")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print the table."""
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        workdir = Path(tmp)
        if args.profile:
            profile(args.profile, args.pairs, workdir, args.top)
            return
        results = []
        for config in args.configs.split(","):
            results.append(measure(config, args, workdir))
            print(f"{config}: median {results[-1].median:,.0f} pairs/s", file=sys.stderr, flush=True)
    text = table(results)
    print(text)
    if args.markdown is not None:
        update_block(args.markdown, "bench_ledger", text)


if __name__ == "__main__":
    main()
