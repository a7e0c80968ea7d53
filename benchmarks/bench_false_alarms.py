"""Both rates of the default defenses: false alarms on legitimate work, and runaways caught (issue 13).

Every workload runs through the engine in virtual time with the DEFAULT policy (no policy file, no
budget), the workloads of ``tests/e2e/test_false_alarms.py`` and the stories of
``tests/e2e/test_runaway_stories.py``:

* false alarms: (a) the shipped ChatDev traces replayed (``comptroller replay``, the chatdev policy's
  aliases and prices, no budget); (b) a benchmark sending one request N times; (c) a classifier filling
  one template with different numbers. Small calls are 300 input and 3 output tokens on gpt-4o, one a
  second; "story-sized" calls are the stories' 20,000 + 800 tokens.
* runaways: each story's 11 days at one call a minute: paid calls, spend, first refusal, detectors.

Usage::

    python benchmarks/bench_false_alarms.py                          # table on stdout (~40 s)
    python benchmarks/bench_false_alarms.py --markdown BENCHMARKS.md # also update the block there
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "e2e"))

from test_false_alarms import repeated, run, templated  # noqa: E402  (the workloads the tests assert on)
from test_runaway_stories import (  # noqa: E402
    START,
    Outcome,
    error_line,
    ping_pong,
    simulate,
    story_request,
)
from typer.testing import CliRunner  # noqa: E402

from comptroller.cli.main import app  # noqa: E402
from comptroller.domain.money import MC_PER_USD  # noqa: E402
from comptroller.domain.scopes import Attribution  # noqa: E402
from comptroller.engine import CallRequest  # noqa: E402
from markdown_block import update_block  # noqa: E402  (benchmarks/ is the script's own directory)

TRACE = ROOT / "data" / "traces" / "chatdev_warehouse.jsonl"


def replay_refusals() -> tuple[int, int]:
    """(calls, refused calls) of the shipped traces replayed with the default defenses and no budget."""
    shipped = (ROOT / "policies" / "chatdev.toml").read_text(encoding="utf-8")
    with tempfile.TemporaryDirectory() as tmp:
        policy, out = Path(tmp) / "no-budgets.toml", Path(tmp) / "report.json"
        policy.write_text(shipped[:shipped.index("[[budgets]]")], encoding="utf-8")
        done = CliRunner().invoke(app, ["replay", str(TRACE), "--policy", str(policy), "--db", "memory://",
                                        "--json", str(out)])
        if done.exit_code != 0:
            raise SystemExit(done.output)
        report = json.loads(out.read_text(encoding="utf-8"))
    return int(report["calls"]), int(report["refused_calls"])


def _retry_loop(minute: int) -> CallRequest:
    who = Attribution(tenant="acme", agent="worker", task="sync-42")
    return story_request(who, [{"role": "system", "content": "You are a data sync agent."},
                               {"role": "user", "content": error_line(minute)}])


def _identical(_: int) -> CallRequest:
    return story_request(Attribution(tenant="acme", agent="retrier"),
                         [{"role": "user", "content": "Fetch the quarterly numbers and summarise them."}])


STORIES: dict[str, Callable[[int], CallRequest]] = {
    "retry loop, varying error line": _retry_loop,
    "identical retry": _identical,
    "ping-pong in a conversation": ping_pong("room-7"),
    "ping-pong without a conversation": ping_pong(None),
}
FALSE_ALARMS: list[tuple[str, Callable[[int], CallRequest], int, bool]] = [
    ("(b) one small request, 200 times", repeated(), 200, False),
    ("(b) one small request, 1,000 times", repeated(), 1_000, False),
    ("(b) one story-sized request, 200 times", repeated(large=True), 200, True),
    ("(c) small template, different numbers, 1,000 calls", templated(), 1_000, False),
    ("(c) small template whose line says \"failed\", 1,000 calls", templated(failed=True), 1_000, False),
    ("(c) story-sized template, different numbers, 200 calls", templated(large=True), 200, True),
]


def _detectors(outcome: Outcome) -> str:
    return ", ".join(f"{name} {n:,}" for name, n in sorted(outcome.detectors.items())) or "-"


def tables() -> str:
    """The two markdown tables (false alarms, runaways) with the machine and the command."""
    calls, refused = replay_refusals()
    lines = [
        f"Machine: {platform.machine()}, {platform.system()} {platform.release()}, Python "
        f"{platform.python_version()}, {os.cpu_count()} CPUs (virtual time: the results do not depend on it).",
        "Command: `python benchmarks/bench_false_alarms.py --markdown BENCHMARKS.md`",
        "",
        "| legitimate workload (default policy, no budget) | calls | refused | false alarms | refused by |",
        "|---|---:|---:|---:|---|",
        f"| (a) shipped ChatDev traces, replayed | {calls:,} | {refused:,} | {100 * refused / calls:.1f} % | - |",
    ]
    for name, workload, n, large in FALSE_ALARMS:
        outcome = run(workload, n, large=large)
        refused = sum(outcome.refused.values())
        lines.append(f"| {name} | {n:,} | {refused:,} | {100 * refused / n:.1f} % | {_detectors(outcome)} |")
    lines += ["", "| runaway story (11 days, one call a minute) | paid calls | spend | first refusal after | "
              "refused by |", "|---|---:|---:|---:|---|"]
    for name, story in STORIES.items():
        outcome = simulate(story)
        first = "never" if outcome.first_refused_at is None else f"{outcome.first_refused_at - START}"
        lines.append(f"| {name} | {len(outcome.admitted_at):,} | ${outcome.spent_mc / MC_PER_USD:,.2f} | {first} | "
                     f"{_detectors(outcome)} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--markdown", type=Path, help="update the false-alarms block of this file")
    args = parser.parse_args()
    text = tables()
    print(text)
    if args.markdown is not None:
        update_block(args.markdown, "bench-false-alarms", text)


if __name__ == "__main__":
    main()
