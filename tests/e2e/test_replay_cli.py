"""End-to-end: the README's main command on the shipped sample, checked against independent sums."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import tomllib
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import genai_prices
import pytest

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "data" / "traces" / "chatdev_warehouse.jsonl"
POLICY = ROOT / "policies" / "chatdev.toml"


def _records() -> list[dict[str, object]]:
    return [json.loads(line) for line in SAMPLE.read_text(encoding="utf-8").splitlines() if line.strip()]


def _readme_main_command() -> list[str]:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"```bash\n(.*?)```", readme, re.S)
    assert block is not None, "README must start with a bash block holding the two set-up commands"
    first = block.group(1).splitlines()[0]
    steps = [step.strip() for step in first.split("&&")]
    assert steps[0].startswith("python3 -m venv ") and steps[1].startswith(". "), "the first command makes a venv"
    assert "pip install -e ." in steps and "[dev]" not in first, "replay installs no [dev] extra"
    replay = steps[-1]
    assert replay.startswith("comptroller replay ")
    return shlex.split(replay)


def _independent_cost_mc(record: dict[str, object], policy: dict[str, object]) -> int:
    """Price one record with genai-prices' own calculator (or the policy's rate), rounded half up."""
    aliases: dict[str, str] = policy["aliases"]  # type: ignore[assignment]
    label, resolved = record["model"], record["x_model_resolved"]
    model = (label if label in aliases else resolved if resolved in aliases else resolved or label
             or policy["default_model"])
    while model in aliases:
        model = aliases[model]  # type: ignore[index]
    prices: dict[str, dict[str, str]] = policy["prices"]  # type: ignore[assignment]
    if model in prices:
        usd = (Decimal(prices[model]["input_mtok"]) * record["input_tokens"]  # type: ignore[operator]
               + Decimal(prices[model]["output_mtok"]) * record["output_tokens"]) / 1_000_000  # type: ignore[operator]
    else:
        ts = datetime.fromisoformat(str(record["ts"])).replace(tzinfo=UTC)
        usd = genai_prices.calc_price(
            genai_prices.Usage(input_tokens=record["input_tokens"], output_tokens=record["output_tokens"]),
            str(model), genai_request_timestamp=ts).total_price
    return int((usd * 100_000).to_integral_value(rounding=ROUND_HALF_UP))


@pytest.fixture(scope="module")
def readme_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, object], Path, str]:
    """Run the README's main command once, adding JSON output."""
    out = tmp_path_factory.mktemp("replay")
    argv = _readme_main_command()
    argv = [a if not a.endswith(".html") else str(out / "replay.html") for a in argv]
    exe = Path(sys.executable).with_name("comptroller")
    proc = subprocess.run([str(exe), *argv[1:], "--json", str(out / "replay.json")], cwd=ROOT,
                          capture_output=True, text=True, timeout=240, check=False,
                          env={"COLUMNS": "120", "PATH": "/usr/bin"})
    assert proc.returncode == 0, proc.stderr
    return json.loads((out / "replay.json").read_text()), out / "replay.html", proc.stdout


def test_readme_main_command_reports_tokens_equal_to_the_sample(readme_run: tuple[dict[str, object], Path, str]
                                                                  ) -> None:
    """Admitted plus refused calls are every line of the sample, and each breakdown sums to the totals."""
    report, _, stdout = readme_run
    records = _records()
    assert report["calls"] == len(records)
    assert report["admitted_calls"] + report["refused_calls"] == len(records)  # type: ignore[operator]
    for breakdown in ("by_agent", "by_model", "by_phase", "by_run"):
        groups: list[dict[str, int]] = report[breakdown]  # type: ignore[assignment]
        assert sum(g["input_tokens"] for g in groups) == report["input_tokens"]
        assert sum(g["cost_mc"] for g in groups) == report["cost_mc"]
    assert "Summary" in stdout and "Cost by agent" in stdout


def test_replay_without_budgets_admits_every_call_and_counts_every_token(tmp_path: Path) -> None:
    """With the budgets removed, every call settles and token totals equal the sums over the file."""
    text = POLICY.read_text(encoding="utf-8").split("[[budgets]]", 1)[0]
    policy = tmp_path / "no-budgets.toml"
    policy.write_text(text, encoding="utf-8")
    exe = Path(sys.executable).with_name("comptroller")
    out = tmp_path / "r.json"
    proc = subprocess.run([str(exe), "replay", str(SAMPLE), "--policy", str(policy), "--json", str(out)],
                          capture_output=True, text=True, timeout=240, check=False)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    records = _records()
    assert report["refused_calls"] == 0
    assert report["input_tokens"] == sum(int(r["input_tokens"]) for r in records)  # type: ignore[call-overload]
    assert report["output_tokens"] == sum(int(r["output_tokens"]) for r in records)  # type: ignore[call-overload]
    assert report["runs"] == len({r["run_id"] for r in records})


def test_readme_main_command_total_cost_equals_an_independent_sum(
        readme_run: tuple[dict[str, object], Path, str]) -> None:
    """Total settled cost plus prevented spend equals genai-prices' own per-call prices, rounded and summed."""
    report, _, _ = readme_run
    policy = tomllib.loads(POLICY.read_text(encoding="utf-8"))
    expected = sum(_independent_cost_mc(r, policy) for r in _records())
    assert report["cost_mc"] + report["prevented_mc"] == expected  # type: ignore[operator]


def test_readme_main_command_writes_a_self_contained_html_report(
        readme_run: tuple[dict[str, object], Path, str]) -> None:
    """The HTML report embeds plotly and holds the three required charts, with no external script."""
    _, html_path, _ = readme_run
    page = html_path.read_text(encoding="utf-8")
    for title in ("Cost by agent", "Cumulative spend over time", "Cost per run"):
        assert title in page
    assert "<script src=\"http" not in page
    assert "plotly" in page.lower()
