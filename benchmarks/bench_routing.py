"""Routing speed: gate checks per second, and cascade requests per second through the engine.

* ``gates``: the four deterministic gates of ``eval-cascade`` (final number, arithmetic,
  final agrees, question numbers) on the 1,307 shipped Mixtral answers (``data/routing``).
* ``cascade-memory`` / ``cascade-sqlite``: :func:`comptroller.routing.run_cascade` with
  two tiers (the cheap one gated by non-empty and a JSON schema) and a stub provider that
  answers instantly; every other request's cheap answer is invalid JSON, so half the
  requests escalate (1.5 attempts, each an admit and a settle, per request on average).

Each configuration runs ``--repeats`` times; the median is reported, with the rate per
CPU-second (``time.process_time``) beside the wall-clock rate.

Usage::

    python benchmarks/bench_routing.py
    python benchmarks/bench_routing.py --markdown BENCHMARKS.md   # also update the table there
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

from comptroller.clock import VirtualClock
from comptroller.domain.caps import OutputCaps
from comptroller.domain.pricing import ModelPrice
from comptroller.domain.routing import Answer, Cascade, JsonSchemaGate, NonEmptyGate, Tier
from comptroller.domain.scopes import Attribution
from comptroller.domain.usage import Usage
from comptroller.engine import Engine
from comptroller.evaluation.cascade_eval import ALL_GATES
from comptroller.evaluation.gsm8k import load_gsm8k
from comptroller.prices import PriceBook
from comptroller.routing import CascadeRequest, TierCall, TierReply, run_cascade
from comptroller.storage.memory import MemoryStore
from comptroller.storage.sqlite import SQLiteStore
from markdown_block import update_block

ROOT = Path(__file__).resolve().parent.parent
PRICES = {m: ModelPrice(model=m, input_mtok=Decimal(1), output_mtok=Decimal(2), source="bench") for m in ("s", "b")}
CASCADE = Cascade("bench", (Tier("cheap", ("s",), 1, (NonEmptyGate(), JsonSchemaGate({"type": "object"}))),
                            Tier("strong", ("b",))))


def bench_gates(answers: list[Answer]) -> int:
    """Run every gate on every answer; the number of answers checked."""
    for answer in answers:
        for gate in ALL_GATES:
            gate.check(answer)
    return len(answers)


def bench_cascade(backend: str, requests: int, workdir: Path) -> int:
    """Run ``requests`` cascades (half escalating) into a fresh ledger; the number run."""
    store = MemoryStore() if backend == "memory" else SQLiteStore(workdir / f"r-{time.monotonic_ns()}.db")
    clock = VirtualClock(datetime(2025, 1, 1, tzinfo=UTC))
    engine = Engine(store=store, prices=PriceBook(overrides=PRICES), clock=clock, caps=OutputCaps(default_tokens=256))
    usage = Usage(500, 100)
    for i in range(requests):
        def call(tc: TierCall, bad: bool = i % 2 == 1) -> TierReply:
            return TierReply("{oops" if bad and tc.tier == "cheap" else '{"answer": 1}', usage)
        run_cascade(engine, CASCADE, CascadeRequest(Attribution(agent=f"a{i % 8}"), 500, request_id=f"r{i}"), call)
    store.close()
    return requests


def _measure(run: Callable[[], int], repeats: int) -> tuple[float, float, list[float]]:
    rates, cpu_rates = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        done = run()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        rates.append(done / wall)
        cpu_rates.append(done / cpu if cpu > 0 else float("nan"))
    return statistics.median(rates), statistics.median(cpu_rates), rates


def main() -> None:
    """Run the benchmarks, print a markdown table, optionally write it into BENCHMARKS.md."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--requests", type=int, default=2_000)
    parser.add_argument("--markdown", type=Path, help="BENCHMARKS.md to update")
    args = parser.parse_args()
    dataset = load_gsm8k(ROOT / "data" / "routing")
    answers = [Answer(i.cheap_answer, None, prompt=i.question) for i in dataset.items]
    lines = ["| configuration | unit | median per s | median per CPU-s | runs (per s) |", "|---|---|---:|---:|---|"]
    with tempfile.TemporaryDirectory() as tmp:
        configs: list[tuple[str, str, Callable[[], int]]] = [
            ("gates (4 on each of 1,307 answers)", "answers", lambda: bench_gates(answers)),
            *[(f"cascade-{b} ({args.requests:,} requests, half escalate)", "requests",
               (lambda b=b: bench_cascade(b, args.requests, Path(tmp)))) for b in ("memory", "sqlite")],
        ]
        for name, unit, run in configs:
            median, cpu, rates = _measure(run, args.repeats)
            lines.append(f"| {name} | {unit} | {median:,.0f} | {cpu:,.0f} | {', '.join(f'{r:,.0f}' for r in rates)} |")
    machine = (f"Command: `python benchmarks/bench_routing.py --markdown BENCHMARKS.md` ({args.repeats} repeats); "
               f"CPython {platform.python_version()}, {platform.system()} {platform.machine()}, {os.cpu_count()} CPUs. "
               "A stub provider answers instantly, so the cascade rows are comptroller's own cost per request.")
    table = "\n".join(lines) + "\n\n" + machine
    print(table)
    if args.markdown is not None:
        update_block(args.markdown, "bench_routing", "## Routing (`benchmarks/bench_routing.py`)\n\n" + table)


if __name__ == "__main__":
    main()
