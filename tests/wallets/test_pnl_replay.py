"""The shipped ChatDev replay with a fee schedule and a GPU node: the P&L equals an independent computation.

The expected figures come from the trace file and genai-prices' own ``calc_price`` (not our
pricing code), the fee formula written with Decimal (not the code's integer fractions), and
the infra cost as the day rate times the number of distinct UTC days with calls.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import tomllib
from datetime import UTC, datetime
from decimal import ROUND_CEILING, ROUND_HALF_UP, Decimal
from pathlib import Path

import genai_prices
import pytest

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "data" / "traces" / "chatdev_warehouse.jsonl"
POLICY = ROOT / "policies" / "chatdev.toml"
BASE_FEE_USD, MARGIN, TASK_FEE_USD, GPU_USD_PER_DAY = "0.002", "0.25", "0.05", "3.46"
ECONOMICS = f"""
[fees]
base_fee_usd = "{BASE_FEE_USD}"
margin = "{MARGIN}"
task_fee_usd = "{TASK_FEE_USD}"
margin_floor = "0.30"

[[infra]]
name = "gpu-node"
cost_usd = "{GPU_USD_PER_DAY}"
period = "day"
"""


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(Path(sys.executable).with_name("comptroller")), *args], capture_output=True,
                          text=True, timeout=240, check=False, cwd=ROOT, env={"COLUMNS": "200", "PATH": "/usr/bin"})


def _records() -> list[dict[str, object]]:
    return [json.loads(line) for line in SAMPLE.read_text(encoding="utf-8").splitlines() if line.strip()]


def _cost_mc(record: dict[str, object], policy: dict[str, object]) -> int:
    """One call's cost by genai-prices' calculator (or the policy's own rate), half up to millicents."""
    aliases: dict[str, str] = policy["aliases"]  # type: ignore[assignment]
    label, resolved = record["model"], record["x_model_resolved"]
    model = (label if label in aliases else resolved if resolved in aliases else resolved or label
             or policy["default_model"])
    while model in aliases:
        model = aliases[model]  # type: ignore[index]
    prices: dict[str, dict[str, str]] = policy["prices"]  # type: ignore[assignment]
    tokens_in, tokens_out = int(record["input_tokens"]), int(record["output_tokens"])  # type: ignore[call-overload]
    if model in prices:
        usd = (Decimal(prices[model]["input_mtok"]) * tokens_in
               + Decimal(prices[model]["output_mtok"]) * tokens_out) / 1_000_000
    else:
        ts = datetime.fromisoformat(str(record["ts"])).replace(tzinfo=UTC)
        usd = genai_prices.calc_price(genai_prices.Usage(input_tokens=tokens_in, output_tokens=tokens_out),
                                      str(model), genai_request_timestamp=ts).total_price
    return int((usd * 100_000).to_integral_value(rounding=ROUND_HALF_UP))


def _expected_totals() -> dict[str, int]:
    policy = tomllib.loads(POLICY.read_text(encoding="utf-8"))
    records = _records()
    costs = [_cost_mc(r, policy) for r in records]
    base_mc = int(Decimal(BASE_FEE_USD) * 100_000)
    fees = [max(base_mc, int((c * (1 + Decimal(MARGIN))).to_integral_value(rounding=ROUND_CEILING))) for c in costs]
    task_fees = len({(r["run_id"], r["agent"]) for r in records}) * int(Decimal(TASK_FEE_USD) * 100_000)
    days = len({datetime.fromisoformat(str(r["ts"])).date() for r in records})
    infra = days * int(Decimal(GPU_USD_PER_DAY) * 100_000)
    revenue = sum(fees) + task_fees
    return {"revenue_mc": revenue, "llm_cost_mc": sum(costs), "infra_mc": infra,
            "margin_mc": revenue - sum(costs) - infra}


@pytest.fixture(scope="module")
def ledger(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path, Path]:
    """Replay the sample (the shipped policy without its budgets, plus fees and a GPU node) into a SQLite ledger."""
    out = tmp_path_factory.mktemp("pnl")
    policy = out / "policy.toml"
    policy.write_text(POLICY.read_text(encoding="utf-8").split("[[budgets]]", 1)[0] + ECONOMICS, encoding="utf-8")
    db = f"sqlite:///{out / 'ledger.db'}"
    done = _cli("replay", str(SAMPLE), "--policy", str(policy), "--db", db)
    assert done.returncode == 0, done.stderr
    return db, policy, out


@pytest.mark.parametrize("by", ["agent", "tenant"])
def test_pnl_totals_equal_an_independent_computation(ledger: tuple[str, Path, Path], by: str) -> None:
    """Revenue, LLM cost, infra and margin totals by agent and by tenant equal the trace priced independently."""
    db, policy, out = ledger
    report = out / f"pnl-{by}.json"
    done = _cli("pnl", "--policy", str(policy), "--db", db, "--by", by, "--period", "month", "--json", str(report))
    assert done.returncode == 0, done.stderr
    data = json.loads(report.read_text())
    expected = _expected_totals()
    assert {k: data["total"][k] for k in expected} == expected
    for name in expected:
        assert sum(r[name] for r in data["rows"]) == expected[name]


def test_pnl_is_idempotent_and_balances_sum_to_zero(ledger: tuple[str, Path, Path]) -> None:
    """A second pnl posts nothing new (same CSV), and every wallet balance sums to zero."""
    db, policy, out = ledger
    first, second = out / "a.csv", out / "b.csv"
    for path in (first, second):
        done = _cli("pnl", "--policy", str(policy), "--db", db, "--period", "total", "--csv", str(path))
        assert done.returncode == 0, done.stderr
    assert first.read_text() == second.read_text()
    rows = list(csv.DictReader(first.open()))
    assert len(rows) == len({r["agent"] for r in _records()})
    assert any(r["flagged"] == "True" for r in rows)
    for row in rows:
        margin, revenue = int(row["margin_mc"]), int(row["revenue_mc"])
        assert (row["flagged"] == "True") == (margin < Decimal("0.30") * revenue)
    posted = _cli("wallet", "post", "--policy", str(policy), "--db", db)
    assert posted.returncode == 0 and "0 transfers applied" in posted.stdout, posted.stdout + posted.stderr
    balances = _cli("wallet", "balance", "--db", db)
    assert "sum of balances: $0.00000" in balances.stdout, balances.stdout
