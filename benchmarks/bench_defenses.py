"""The added cost of the runtime defenses: admit + settle with every layer on vs budgets only.

The workload is ``bench_ledger``'s (four budget levels per call, 10 tenants, 5 agents
per tenant, 40 conversations, a virtual clock moving 10 ms per pair). With every
layer on, each call also names its task attempt and carries a request fingerprint
and a 200-character turn text, so every layer does its work: kill switches of all
five scopes read, a default model pin checked, the task's attempt counted, the
conversation's loop history (up to 32 entries) searched for repeats, alternation and
near-duplicates and rewritten, two breakers (agent, conversation) admitted and
counted at settle, the automatic namespace kill switch counted at settle, and the
month budget paced. Thresholds are set so nothing is refused.

Runs alternate (budgets only, all layers, budgets only, ...) on fresh databases and
the medians are compared in one run, since this machine is shared and noisy.

Usage::

    python benchmarks/bench_defenses.py                          # table on stdout
    python benchmarks/bench_defenses.py --markdown BENCHMARKS.md # also update the block there
    python benchmarks/bench_defenses.py --profile                # cProfile one all-layers SQLite run
    valgrind --tool=callgrind --instr-atstart=no python benchmarks/bench_defenses.py \
        --callgrind "all layers" --skip 1000 --pairs 300            # instructions of pairs 1,001-1,300 only
    ... --callgrind "all layers" --without loops ...              # the same with one layer off (its share)
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import os
import platform
import pstats
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench_ledger import MODEL, START, STEP_S, attributions, open_store
from comptroller.clock import VirtualClock
from comptroller.domain.breaker import BreakerConfig
from comptroller.domain.codes import Code
from comptroller.domain.defenses.breaker_policy import BreakerPolicy
from comptroller.domain.defenses.chain import Defenses
from comptroller.domain.defenses.killswitch import KillSwitchConfig
from comptroller.domain.defenses.loops import LoopConfig
from comptroller.domain.defenses.pacing import PacingConfig
from comptroller.domain.defenses.pinning import AgentPin, PinningPolicy
from comptroller.domain.defenses.retries import RetryPolicy
from comptroller.domain.defenses.similarity import fingerprint
from comptroller.domain.scopes import Level
from comptroller.domain.usage import Usage
from comptroller.engine import CallRequest, Engine
from comptroller.ports import LedgerStore
from comptroller.prices import PriceBook
from markdown_block import update_block

HUGE = 10**12
ALL_LAYERS = Defenses(
    breakers=BreakerPolicy(levels={Level.AGENT: BreakerConfig(threshold_mc=HUGE),
                                   Level.CONVERSATION: BreakerConfig(threshold_mc=HUGE)}),
    kill_switches={Level.NAMESPACE: KillSwitchConfig(window_spend_mc_max=HUGE)},
    pinning=PinningPolicy(default=AgentPin(models=(MODEL,))),
    retries=RetryPolicy(),
    loops=LoopConfig(),
    pacing=PacingConfig(slack_pct=1_000, burst_pct=100),
)
LAYERS = {"budgets only": Defenses.budgets_only(), "all layers": ALL_LAYERS}
OFF: dict[str, object] = {"breakers": None, "kill_switches": {}, "pinning": None, "retries": None, "loops": None,
                          "pacing": None}  # --without: what switches each layer off
WORDS = ("plan", "review", "patch", "test", "deploy", "refactor", "explain", "summarise", "check", "merge")


def _text(i: int) -> str:
    """A distinct 200-character turn (no loop detector fires)."""
    words = [WORDS[(i >> k) % len(WORDS)] + str((i * 7 + k) % 97) for k in range(30)]
    return " ".join(words)[:200]


def run(store: LedgerStore, defenses: Defenses, pairs: int, tag: str,
        on_pair: Callable[[int], object] | None = None) -> None:
    """``pairs`` admit + settle through an engine with ``defenses`` (``on_pair(i)`` before pair ``i``)."""
    clock = VirtualClock(START)
    engine = Engine(store=store, prices=PriceBook(), clock=clock, ttl_s=3600.0, defenses=defenses)
    attrs = attributions()
    usage = Usage(input_tokens=1200, output_tokens=350)
    for i in range(pairs):
        if on_pair is not None:
            on_pair(i)
        who = attrs[i % len(attrs)]
        text = _text(i)
        admission = engine.admit(CallRequest(
            attribution=who, model=MODEL, input_tokens_max=1200, max_tokens=1024, idempotency_key=f"{tag}-{i}",
            attempt_id=f"{who.conversation}-attempt", fingerprint=fingerprint(MODEL, [{"role": "user",
                                                                                        "content": text}]),
            text=text))
        if admission.reservation is None:
            raise SystemExit(f"benchmark call refused: {admission.verdict}")
        clock.advance(STEP_S)
        if engine.settle(admission.reservation, usage).code is not Code.SETTLED:
            raise SystemExit("benchmark settle failed")


def timed(kind: str, layers: str, pairs: int, workdir: Path, n: int) -> tuple[float, float]:
    """Wall-clock and CPU microseconds per pair of one run on a fresh store."""
    store = open_store(kind, workdir / f"{kind}-{n}.db")
    try:
        wall, cpu = time.perf_counter(), time.process_time()
        run(store, LAYERS[layers], pairs, f"r{n}")
        return ((time.perf_counter() - wall) / pairs * 1e6, (time.process_time() - cpu) / pairs * 1e6)
    finally:
        store.close()


def measure(kind: str, pairs: int, repeats: int, workdir: Path) -> dict[str, tuple[float, float]]:
    """Median (wall, CPU) µs per pair for each layer setting, runs interleaved."""
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in LAYERS}
    n = 0
    for _ in range(repeats):
        for name in LAYERS:
            samples[name].append(timed(kind, name, pairs, workdir, n))
            n += 1
    return {name: (statistics.median(v[0] for v in values), statistics.median(v[1] for v in values))
            for name, values in samples.items()}


def table(results: dict[str, dict[str, tuple[float, float]]], pairs: int, repeats: int) -> str:
    """A markdown table: wall and CPU µs per pair with budgets only and all layers, and the added share."""
    lines = [
        f"Machine: {platform.machine()}, {platform.system()} {platform.release()}, Python "
        f"{platform.python_version()}, {os.cpu_count()} CPUs; {pairs:,} pairs per run, median of {repeats} "
        "interleaved runs.",
        "Command: `python benchmarks/bench_defenses.py --markdown BENCHMARKS.md`",
        "",
        "| store | clock | budgets only (µs/pair) | all layers (µs/pair) | added (µs/pair) | added |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for kind, r in results.items():
        for i, clock in enumerate(("wall", "CPU")):
            base, full = r["budgets only"][i], r["all layers"][i]
            lines.append(f"| {kind} | {clock} | {base:,.0f} | {full:,.0f} | {full - base:,.0f} | "
                         f"{100 * (full - base) / base:+.0f} % |")
    return "\n".join(lines)


def _callgrind_run(layers: str, skip: int, pairs: int, workdir: Path) -> None:
    """Run ``skip + pairs`` pairs; callgrind counts only the last ``pairs`` (``callgrind_control -i``)."""
    def instrument(on: bool) -> None:
        subprocess.run(["callgrind_control", "-i", "on" if on else "off", str(os.getpid())], check=True,
                       capture_output=True, timeout=60)

    store = open_store("sqlite", workdir / "callgrind.db")
    try:
        run(store, LAYERS[layers], skip + pairs, "cg", on_pair=lambda i: instrument(True) if i == skip else None)
        instrument(False)
    finally:
        store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=2_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--markdown", type=Path, help="update the defenses block of this file")
    parser.add_argument("--profile", action="store_true", help="profile one all-layers SQLite run")
    parser.add_argument("--callgrind", choices=tuple(LAYERS),
                        help="under valgrind --tool=callgrind --instr-atstart=no: one SQLite run of this "
                             "setting, instrumented from pair --skip for --pairs pairs (instruction counts do "
                             "not depend on the machine's load)")
    parser.add_argument("--skip", type=int, default=1_000, help="--callgrind: pairs run before instrumenting")
    parser.add_argument("--without", choices=tuple(OFF), action="append", default=[],
                        help="--callgrind: switch this layer off in the setting measured (repeatable)")
    args = parser.parse_args()
    if args.without and args.callgrind is None:
        parser.error("--without applies to the --callgrind setting; name one")
    for layer in args.without:
        LAYERS[args.callgrind] = dataclasses.replace(LAYERS[args.callgrind], **{layer: OFF[layer]})
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        if args.callgrind is not None:
            _callgrind_run(args.callgrind, args.skip, args.pairs, workdir)
            return
        if args.profile:
            store = open_store("sqlite", workdir / "profile.db")
            profiler = cProfile.Profile()
            profiler.runcall(run, store, ALL_LAYERS, args.pairs, "p")
            sort = "tottime"
            pstats.Stats(profiler).sort_stats(sort).print_stats(30)
            return
        results = {kind: measure(kind, args.pairs, args.repeats, workdir) for kind in ("memory", "sqlite")}
    text = table(results, args.pairs, args.repeats)
    print(text)
    if args.markdown is not None:
        update_block(args.markdown, "bench-defenses", text)


if __name__ == "__main__":
    main()
