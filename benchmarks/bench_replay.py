"""Replay throughput: recorded calls per second through ``comptroller.replay.replay``.

Replays the shipped sample (``data/traces/chatdev_warehouse.jsonl``, 1,909 calls) with
the shipped policy (``policies/chatdev.toml``: a conversation budget and a daily
namespace budget, an output cap, aliases and two configured prices) into a fresh
ledger, in memory and in a SQLite file, the way ``comptroller replay`` does (the
engine from :func:`comptroller.bootstrap.build_engine`, a virtual clock set to each
record's timestamp). Each call is one admit and, when admitted, one settle.

Reading and parsing the trace is timed apart (``read`` row); the ``memory`` and
``sqlite`` rows time :func:`~comptroller.replay.replay` alone (preflight included),
and the ``+ read`` rows both. Each configuration runs ``--repeats`` times; the
median is reported, with calls per CPU-second (``time.process_time``) beside the
wall-clock rate, since the machine may be shared and noisy.

Usage::

    python benchmarks/bench_replay.py
    python benchmarks/bench_replay.py --markdown BENCHMARKS.md   # also update the table there
    python benchmarks/bench_replay.py --profile memory            # cProfile one replay instead
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from comptroller.bootstrap import build_engine
from comptroller.clock import VirtualClock
from comptroller.config import Policy, load_policy
from comptroller.replay import read_traces, replay
from comptroller.replay.trace import TraceRecord
from markdown_block import update_block

ROOT = Path(__file__).resolve().parent.parent
TRACE = ROOT / "data" / "traces" / "chatdev_warehouse.jsonl"
POLICY = ROOT / "policies" / "chatdev.toml"
BACKENDS = ("memory", "sqlite")


def run_replay(backend: str, records: list[TraceRecord], policy: Policy, workdir: Path) -> int:
    """Replay every record into a fresh ledger; the number of calls replayed."""
    url = "memory://" if backend == "memory" else f"sqlite:///{workdir / f'r-{time.monotonic_ns()}.db'}"
    clock = VirtualClock(records[0].ts)
    engine = build_engine(db_url=url, policy=policy, clock=clock)
    result = replay(records, engine=engine, clock=clock, policy=policy)
    engine.store.close()
    return len(result.outcomes)


def read_and_replay(backend: str, trace: Path, policy: Policy, workdir: Path) -> int:
    """Read the trace, then replay it into a fresh ledger; the number of calls replayed."""
    return run_replay(backend, read_all(trace), policy, workdir)


def read_all(trace: Path) -> list[TraceRecord]:
    """The trace's records, sorted for replay."""
    records, _ = read_traces([trace])
    return records


def timed(fn: Callable[[], int]) -> tuple[float, float]:
    """Calls per wall-clock second and per CPU-second of one run of ``fn`` (which returns the calls)."""
    cpu, start = time.process_time(), time.perf_counter()
    calls = fn()
    return calls / (time.perf_counter() - start), calls / (time.process_time() - cpu)


@dataclass(frozen=True)
class Result:
    """The runs of one configuration: (wall, CPU) calls per second each."""

    config: str
    runs: list[tuple[float, float]]

    def median(self, i: int) -> float:
        """Median of the wall-clock (0) or CPU (1) rates."""
        return statistics.median(r[i] for r in self.runs)


def measure(args: argparse.Namespace, workdir: Path) -> list[Result]:
    """Every configuration, ``args.repeats`` times each."""
    policy = load_policy(args.policy)
    records = read_all(args.trace)
    fns: dict[str, Callable[[], int]] = {"read": lambda: len(read_all(args.trace))}
    for backend in BACKENDS:
        fns[backend] = partial(run_replay, backend, records, policy, workdir)
        fns[f"{backend} + read"] = partial(read_and_replay, backend, args.trace, policy, workdir)
    results = []
    for config, fn in fns.items():
        results.append(Result(config, [timed(fn) for _ in range(args.repeats)]))
        print(f"{config}: median {results[-1].median(0):,.0f} calls/s", file=sys.stderr, flush=True)
    return results


def table(results: list[Result], calls: int) -> str:
    """A markdown table of the medians and the spread."""
    lines = [f"| configuration ({calls:,} calls) | median calls/s | median calls/CPU-s | runs (calls/s) |",
             "|---|---:|---:|---|"]
    for r in results:
        runs = ", ".join(f"{w:,.0f}" for w, _ in r.runs)
        lines.append(f"| {r.config} | {r.median(0):,.0f} | {r.median(1):,.0f} | {runs} |")
    return "\n".join(lines)


def profile(backend: str, args: argparse.Namespace, workdir: Path) -> None:
    """cProfile ``args.repeats`` replays and print the top functions by own and cumulative time."""
    policy = load_policy(args.policy)
    records = read_all(args.trace)
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(args.repeats):
        run_replay(backend, records, policy, workdir)
    profiler.disable()
    stats = pstats.Stats(profiler, stream=sys.stdout).strip_dirs()
    stats.sort_stats("tottime").print_stats(args.top)
    stats.sort_stats("cumulative").print_stats(args.top)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trace", type=Path, default=TRACE, help="JSONL trace to replay")
    p.add_argument("--policy", type=Path, default=POLICY, help="policy TOML")
    p.add_argument("--repeats", type=int, default=7, help="runs per configuration; the median is reported")
    p.add_argument("--dir", type=Path, default=None, help="where database files go (default: a temp dir)")
    p.add_argument("--markdown", type=Path, default=None, help="update the table in this markdown file")
    p.add_argument("--profile", choices=BACKENDS, default=None, help="profile replays instead of benchmarking")
    p.add_argument("--top", type=int, default=30, help="functions shown per profile listing")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print the table."""
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        if args.profile:
            profile(args.profile, args, Path(tmp))
            return
        results = measure(args, Path(tmp))
    text = table(results, len(read_all(args.trace)))
    print(text)
    if args.markdown is not None:
        update_block(args.markdown, "bench_replay", text)


if __name__ == "__main__":
    main()
