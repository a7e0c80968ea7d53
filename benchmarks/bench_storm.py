"""The group-chat storm: replies, tokens and cost per input message vs room size, three ways of dispatching.

Runs :func:`comptroller.simulate.run_storm`, the code behind ``comptroller simulate group``:
rooms of N agents (5 to 221) answer M input messages, each responder reading the whole room
so far, with prompt and message sizes drawn from the shipped ChatDev traces and every call
admitted and settled by the real engine on an in-memory ledger (gpt-4o-mini at genai-prices'
price, its 128k context window capping what a call reads). The ``dispatch`` rows are
``GroupService.dispatch``, the API a gateway route calls.

Usage::

    python benchmarks/bench_storm.py
    python benchmarks/bench_storm.py --markdown BENCHMARKS.md   # also update the block there
    python benchmarks/bench_storm.py --html storm.html          # and write the plot
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

from comptroller.prices import PriceBook
from comptroller.simulate import StormConfig, TokenSizes, markdown_table, render_storm_html, run_storm, story
from markdown_block import update_block

ROOT = Path(__file__).resolve().parent.parent
TRACE = ROOT / "data" / "traces" / "chatdev_warehouse.jsonl"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--agents", default="5,8,13,21,34,55,89,144,221", help="room sizes N, comma-separated")
    p.add_argument("--messages", type=int, default=40, help="input messages M per room")
    p.add_argument("--k", type=int, default=3, help="the dispatcher's most responders per message")
    p.add_argument("--seed", type=int, default=7, help="random seed")
    p.add_argument("--markdown", type=Path, help="update the bench_storm block of this file (BENCHMARKS.md)")
    p.add_argument("--html", type=Path, help="write the plot here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Run the storm, print the table and the story, and optionally update BENCHMARKS.md."""
    args = parse_args(argv)
    config = StormConfig(agents=tuple(int(n) for n in args.agents.split(",")), messages=args.messages, k=args.k,
                         seed=args.seed)
    started = time.perf_counter()
    rows = run_storm(config, TokenSizes.from_traces([TRACE]), PriceBook(),
                     on_progress=lambda s, n: print(f"{s} N={n}", file=sys.stderr, flush=True))
    elapsed = time.perf_counter() - started
    command = ("python benchmarks/bench_storm.py --markdown BENCHMARKS.md"
               + ("" if argv is None or not argv else f"  # with {' '.join(argv)}"))
    text = "\n".join([
        "## Group-chat storm (`comptroller simulate group`)",
        "",
        f"{config.messages} input messages per room, k={config.k}, {config.topics} topics, "
        f"{config.mention_share:.0%} of inputs mention one member, model {config.model}, seed {config.seed}; token "
        f"sizes drawn from `data/traces/chatdev_warehouse.jsonl`; every call admitted and settled by the engine "
        f"on an in-memory ledger; replies are not answered in turn (one round per input, a lower bound for no "
        f"dispatch). Costs per input message are exact millicents rounded to the displayed cent fractions.",
        "",
        markdown_table(rows),
        "",
        *(f"- {line}" for line in story(rows, config)),
        "",
        f"Command: `{command}`; {len(rows)} runs in {elapsed:.0f} s on {platform.python_implementation()} "
        f"{platform.python_version()}, {platform.system()} {platform.machine()}, {os.cpu_count()} CPUs.",
    ])
    print(text)
    if args.markdown is not None:
        update_block(args.markdown, "bench_storm", text)
    if args.html is not None:
        render_storm_html(rows, config, args.html)


if __name__ == "__main__":
    main()
