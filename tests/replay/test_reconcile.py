"""Reconciliation fits the rates logged costs imply and names the bucket and the side that is more likely wrong."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

from genai_prices import calc_price, types
from typer.testing import CliRunner

from comptroller.cli.main import app
from comptroller.domain.pricing import ModelPrice
from comptroller.reports.reconcile import CallTokens, diagnose

ROOT = Path(__file__).resolve().parents[2]
AT = datetime(2025, 1, 1, tzinfo=UTC)
PRICE = ModelPrice(model="m", input_mtok=Decimal("0.40"), output_mtok=Decimal("1.60"), cache_read_mtok=Decimal("0.10"))
MIX = [(1000, 0, 200), (5000, 2000, 40), (300, 0, 900), (12000, 8000, 150), (800, 100, 3000)]


def _calls(rate_in: Decimal, rate_read: Decimal, rate_out: Decimal, noise: list[Decimal] | None = None) -> list[
        CallTokens]:
    out = []
    for i, (uncached, read, output) in enumerate(MIX):
        usd = (uncached * rate_in + read * rate_read + output * rate_out) / 1_000_000
        out.append(CallTokens(uncached, read, 0, output, usd * (noise[i] if noise else 1), AT))
    return out


def test_chatdev_sample_names_gpt_4o_mini_output_priced_at_the_input_rate(tmp_path: Path) -> None:
    """On the shipped ChatDev sample the gpt-4o-mini run's log is blamed: its output is priced at the input rate."""
    out = tmp_path / "r.json"
    result = CliRunner().invoke(app, ["replay", str(ROOT / "data/traces/chatdev_warehouse.jsonl"),
                                      "--policy", str(ROOT / "policies/chatdev.toml"), "--json", str(out)])
    assert result.exit_code == 0, result.output
    rec = {r["model"]: r for r in json.loads(out.read_text())["reconciliation"]}
    mini = rec["gpt-4o-mini"]["diagnosis"]
    assert mini["side"] == "source"
    assert "the logged output is priced at the input rate" in mini["explanation"]
    published_input = calc_price(types.Usage(input_tokens=1_000_000), "gpt-4o-mini", provider_id="openai",
                                 genai_request_timestamp=AT).input_price
    output = next(b for b in mini["buckets"] if b["bucket"] == "output")
    assert abs(Decimal(output["fitted_mtok"]) - published_input) <= published_input / 50
    assert "priced at the input rate" in " ".join(result.output.split())
    assert all(r["diagnosis"]["side"] == "none" for m, r in rec.items() if not r["disagrees"])


def test_consistent_costs_at_other_rates_blame_the_table() -> None:
    """Logged costs that fit clean rates twice ours say our table is stale, with the override those rates imply."""
    calls = _calls(Decimal("0.80"), Decimal("0.20"), Decimal("3.20"))
    d = diagnose("m", calls, lambda at: PRICE, diff_pct=-50.0, tolerance_pct=1.0)
    assert d.side == "table"
    assert {b.bucket: b.fitted_mtok for b in d.buckets} == {"input": Decimal("0.8"), "cache_read": Decimal("0.2"),
                                                            "output": Decimal("3.2")}
    assert d.override_toml is not None
    assert 'input_mtok = "0.8"' in d.override_toml and 'output_mtok = "3.2"' in d.override_toml


def test_inconsistent_costs_blame_the_source() -> None:
    """Logged costs off any linear price list by more than 2 % are the source's error, not a stale table."""
    noise = [Decimal(x) for x in ("1.3", "0.7", "1.25", "0.8", "1.1")]
    d = diagnose("m", _calls(Decimal("0.80"), Decimal("0.20"), Decimal("3.20"), noise), lambda at: PRICE,
                 diff_pct=-40.0, tolerance_pct=1.0)
    assert d.side == "source"
    assert "no consistent rates" in d.explanation


def test_same_mix_cannot_tell_the_rates_apart() -> None:
    """When every call has the same token mix the fit is singular and the report says the rate cannot be told."""
    calls = [CallTokens(100 * k, 0, 0, 10 * k, Decimal(k) / 1000, AT) for k in range(1, 5)]
    d = diagnose("m", calls, lambda at: PRICE, diff_pct=30.0, tolerance_pct=1.0)
    assert d.side == "unknown"


def test_agreeing_model_needs_no_fit() -> None:
    """A model within tolerance agrees and gets no override."""
    d = diagnose("m", _calls(Decimal("0.40"), Decimal("0.10"), Decimal("1.60")), lambda at: PRICE, diff_pct=0.2,
                 tolerance_pct=1.0)
    assert (d.side, d.override_toml) == ("none", None)
