"""Replay prices from a --prices-data snapshot, and bounds a call with no cap at the documented default."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import pytest
from typer.testing import CliRunner

from comptroller.cli.main import app
from comptroller.domain.pricing import TieredRate
from comptroller.prices.book import PriceBook, PricesDataError, load_prices_data
from comptroller.replay.runner import DEFAULT_OUTPUT_TOKENS_MAX

CALLS = [(1200, 300), (5000, 40), (777, 4321)]


def _trace(path: Path, model: str) -> Path:
    lines = [json.dumps({"run_id": "acme/r1", "seq": i, "ts": f"2025-06-01T10:00:0{i}Z", "agent": "writer",
                         "model": model, "input_tokens": tokens_in, "output_tokens": tokens_out})
             for i, (tokens_in, tokens_out) in enumerate(CALLS, start=1)]
    path.write_text("\n".join(lines) + "\n")
    return path


def _mc(usd: Decimal) -> int:
    return int((usd * 100_000).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def _snapshot(path: Path, input_mtok: str, output_mtok: str) -> Path:
    path.write_text(json.dumps([{
        "id": "openai", "name": "OpenAI", "api_pattern": "https://api\\.openai\\.com",
        "model_match": {"starts_with": "gpt-"},
        "models": [{"id": "gpt-4o-mini", "match": {"equals": "gpt-4o-mini"}, "context_window": 128000,
                    "prices": {"input_mtok": float(input_mtok), "output_mtok": float(output_mtok)}}],
    }]))
    return path


def test_prices_data_snapshot_changes_the_price(tmp_path: Path) -> None:
    """A snapshot pricing gpt-4o-mini at $7/$11 per million makes the replay cost exactly that, not the bundled rate."""
    rate_in, rate_out = Decimal(7), Decimal(11)
    snapshot = _snapshot(tmp_path / "data.json", str(rate_in), str(rate_out))
    out = tmp_path / "r.json"
    result = CliRunner().invoke(app, ["replay", str(_trace(tmp_path / "t.jsonl", "gpt-4o-mini")),
                                      "--prices-data", str(snapshot), "--json", str(out)])
    assert result.exit_code == 0, result.output
    want = sum(_mc((tokens_in * rate_in + tokens_out * rate_out) / 1_000_000) for tokens_in, tokens_out in CALLS)
    assert json.loads(out.read_text())["cost_mc"] == want
    bundled = PriceBook().price("gpt-4o-mini", datetime(2025, 6, 1, 10, tzinfo=UTC))
    assert (bundled.input_mtok, bundled.output_mtok) != (rate_in, rate_out)


def test_prices_data_rejects_a_file_that_is_not_one(tmp_path: Path) -> None:
    """A JSON file that is not genai-prices' provider list is an error naming the file."""
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"gpt-4o-mini": 1}))
    with pytest.raises(PricesDataError, match=r"bad\.json"):
        load_prices_data(bad)
    bad.write_text(json.dumps([{"id": "x"}]))
    with pytest.raises(PricesDataError, match="not a genai-prices data file"):
        load_prices_data(bad)


def test_no_max_tokens_and_no_known_maximum_uses_the_default(tmp_path: Path) -> None:
    """A model priced by override (no known maximum output), no max_tokens, no cap: replayed at the default, said so."""
    policy = tmp_path / "p.toml"
    policy.write_text('[prices."my-local-llama"]\ninput_mtok = "0.20"\noutput_mtok = "0.60"\n')
    out = tmp_path / "r.json"
    result = CliRunner().invoke(app, ["replay", str(_trace(tmp_path / "t.jsonl", "my-local-llama")),
                                      "--policy", str(policy), "--json", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["default_bound_calls"] == len(CALLS)
    assert report["default_bound_models"] == ["my-local-llama"]
    assert f"default output bound of {DEFAULT_OUTPUT_TOKENS_MAX:,} tokens" in " ".join(result.output.split())
    assert report["ceiling_misses"] == sum(1 for _, tokens_out in CALLS if tokens_out > DEFAULT_OUTPUT_TOKENS_MAX)


def test_prices_show_reads_tiers_and_a_snapshot(tmp_path: Path) -> None:
    """`prices show` prints a tiered rate as words, and looks prices up in a --prices-data file when given."""
    price = PriceBook().price("gemini-2.5-pro", datetime.now(UTC))
    assert isinstance(price.input_mtok, TieredRate)
    start, above = price.input_mtok.tiers[0]
    result = CliRunner(env={"COLUMNS": "200"}).invoke(app, ["prices", "show", "gemini-2.5-pro"])
    assert result.exit_code == 0, result.output
    assert f"${price.input_mtok.base} up to {start:,} input tokens; ${above} above" in result.output
    assert "TieredRate(" not in result.output
    snapshot = _snapshot(tmp_path / "data.json", "7", "11")
    shown = CliRunner(env={"COLUMNS": "200"}).invoke(app, ["prices", "show", "gpt-4o-mini", "--prices-data",
                                                           str(snapshot)])
    assert shown.exit_code == 0, shown.output
    assert "$7" in shown.output and "$11" in shown.output and "data.json" in shown.output
