"""What a gateway's ledger call costs on the event loop vs in a worker thread, in one process.

The same admit + settle pairs (a SQLite ledger, a namespace and a tenant budget, the default
defenses, every call distinct) run from an event loop three ways, in alternating rounds:

* ``engine``: :meth:`Engine.admit` / :meth:`Engine.settle` called directly (the floor);
* ``loop``: inside :meth:`SQLiteStore.uncontended`, as :meth:`Gateway.run` runs them when the
  ledger is free;
* ``thread``: through ``anyio.to_thread.run_sync``, as :meth:`Gateway.run` runs them when the
  ledger is held (and as every call ran before issue 14).

Reported per pair: CPU (user + system of the process, every thread) and wall time, microseconds.
CPU is less sensitive than wall time to other processes on the machine, but a loaded machine
still inflates both (caches, wake-ups): compare the rows of one run.

    python benchmarks/bench_ledger_hop.py --pairs 2000 --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio.to_thread

from comptroller.bootstrap import build_engine
from comptroller.config import Policy
from comptroller.domain.scopes import Attribution
from comptroller.domain.usage import Usage
from comptroller.engine import CallRequest, Engine
from comptroller.storage.sqlite import SQLiteStore

MODEL = "bench-model"
POLICY = {
    "namespace": "bench", "output_cap_tokens": 64,
    "prices": {MODEL: {"input_mtok": "0.15", "output_mtok": "0.60"}},
    "budgets": [{"level": "namespace", "limit_usd": "100000", "period": "month"},
                {"level": "tenant", "tenant": "bench", "limit_usd": "100000", "period": "month"}],
}


def _call(i: int) -> CallRequest:
    return CallRequest(attribution=Attribution(namespace="bench", tenant="bench", agent="bench-agent"), model=MODEL,
                       input_tokens_max=300, max_tokens=64, sends=True, text=f"Benchmark request {i:09d}.")


async def _round(mode: str, engine: Engine, store: SQLiteStore, first: int, pairs: int) -> tuple[float, float]:
    """``pairs`` admit + settle pairs run the ``mode`` way: (CPU s, wall s)."""
    usage = Usage(input_tokens=20, output_tokens=16)

    async def run(operation: Callable[..., Any], *args: Any) -> Any:
        if mode == "thread":
            return await anyio.to_thread.run_sync(operation, *args)
        if mode == "loop":
            with store.uncontended() as free:
                assert free, "nothing else uses this ledger"
                return operation(*args)
        return operation(*args)

    cpu, wall = time.process_time(), time.perf_counter()
    for i in range(first, first + pairs):
        admission = await run(engine.admit, _call(i))
        assert admission.reservation is not None, admission
        await run(engine.settle, admission.reservation, usage)
    return time.process_time() - cpu, time.perf_counter() - wall


async def _measure(engine: Engine, store: SQLiteStore, pairs: int, rounds: int) -> dict[str, list[tuple[float, float]]]:
    modes = ("engine", "loop", "thread")
    results: dict[str, list[tuple[float, float]]] = {m: [] for m in modes}
    next_id = 0
    for mode in modes:  # warm-up: caches, the thread pool
        await _round(mode, engine, store, next_id, min(pairs, 200))
        next_id += pairs
    for _ in range(rounds):
        for mode in modes:
            results[mode].append(await _round(mode, engine, store, next_id, pairs))
            next_id += pairs
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=2000, help="admit + settle pairs per round and mode")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        store = SQLiteStore(Path(tmp) / "ledger.db")
        engine = build_engine(db_url="", policy=Policy.model_validate(POLICY), store=store)
        results = asyncio.run(_measure(engine, store, args.pairs, args.rounds))
        store.close()
    load = os.getloadavg()
    print(f"load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}; {args.pairs} pairs x {args.rounds} rounds per mode")
    print("| mode | CPU µs per pair (median of rounds) | wall µs per pair |")
    print("|---|---:|---:|")
    for mode, rows in results.items():
        cpu_us = statistics.median(c for c, _ in rows) / args.pairs * 1e6
        wall_us = statistics.median(w for _, w in rows) / args.pairs * 1e6
        print(f"| {mode} | {cpu_us:,.0f} | {wall_us:,.0f} |")


if __name__ == "__main__":
    main()
