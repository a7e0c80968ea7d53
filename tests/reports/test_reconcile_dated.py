"""Reconciliation checks a logged cost against the older prices genai-prices dates, before blaming the log.

genai-prices keeps dated price changes (o3: a cut on 2025-06-10; mistral-large-4: 2026-10-20 and
2026-10-29). A source that logged its calls at the price in force before the change is not wrong:
the report says "the log used an older price (...)" and suggests no override. Logged costs in
these tests are computed with genai-prices' own ``calc_price`` at the older date, independently
of our price book.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

from genai_prices import calc_price, types
from typer.testing import CliRunner

from comptroller.cli.main import app
from comptroller.domain.pricing import cost_usd
from comptroller.prices import PriceBook
from comptroller.reports.reconcile import CallTokens, diagnose, older_prices

MIX = [(1000, 200), (5000, 40), (300, 900), (12000, 150), (800, 3000)]  # (input, output) tokens
BOOK = PriceBook()


def _published_usd(model: str, provider: str, inp: int, out: int, at: datetime) -> Decimal:
    price = calc_price(types.Usage(input_tokens=inp, output_tokens=out), model, provider_id=provider,
                       genai_request_timestamp=at)
    return Decimal(price.total_price)


def _calls(model: str, provider: str, call_day: datetime, priced_on: datetime, factor: Decimal = Decimal(1)
           ) -> list[CallTokens]:
    return [CallTokens(inp, 0, 0, out, _published_usd(model, provider, inp, out, priced_on) * factor,
                       call_day + timedelta(minutes=i)) for i, (inp, out) in enumerate(MIX)]


def _diagnose(model: str, calls: list[CallTokens]) -> tuple[float, str, str]:
    ours = sum((cost_usd(BOOK.price(model, c.ts), c.usage()) for c in calls), Decimal(0))
    logged = sum((c.logged_usd for c in calls), Decimal(0))
    diff = float((ours - logged) * 100 / logged)
    d = diagnose(model, calls, lambda at: BOOK.price(model, at), diff, 1.0)
    return diff, d.side, d.explanation


def test_o3_calls_logged_at_the_price_before_its_cut_name_the_older_price() -> None:
    """o3 calls of 2025-08 logged at the pre-2025-06-10 price: the log used an older price, not a wrong one."""
    calls = _calls("o3", "openai", datetime(2025, 8, 1, 9, tzinfo=UTC), datetime(2025, 6, 1, 12, tzinfo=UTC))
    diff, side, explanation = _diagnose("o3", calls)
    assert diff < -50  # at today's table the log looks 5x too expensive
    assert side == "older_price"
    assert "the log used an older price (in force until 2025-06-10" in explanation
    assert "keep the table" in explanation


def test_a_middle_price_is_named_with_its_start_date() -> None:
    """mistral-large-4 calls of 2026-11 logged at the price of 2026-10-20..29 name that span's start date."""
    calls = _calls("mistral-large-4", "mistral", datetime(2026, 11, 5, 9, tzinfo=UTC),
                   datetime(2026, 10, 24, 12, tzinfo=UTC))
    _, side, explanation = _diagnose("mistral-large-4", calls)
    assert side == "older_price"
    assert "the log used an older price (from 2026-10-20 until 2026-10-29" in explanation


def test_costs_matching_no_published_price_are_not_called_older() -> None:
    """Logged costs 1.5x any price o3 ever had are diagnosed as before (table or source), not as an older price."""
    calls = _calls("o3", "openai", datetime(2025, 8, 1, 9, tzinfo=UTC), datetime(2025, 8, 1, 12, tzinfo=UTC),
                   Decimal("1.5"))
    _, side, _ = _diagnose("o3", calls)
    assert side in ("table", "source")


def test_a_model_without_history_has_no_older_price() -> None:
    """gpt-4o-mini has one price in genai-prices: no older price to match, whatever the logged costs."""
    calls = _calls("gpt-4o-mini", "openai", datetime(2025, 8, 1, 9, tzinfo=UTC), datetime(2025, 8, 1, 12, tzinfo=UTC))
    assert older_prices(lambda at: BOOK.price("gpt-4o-mini", at), calls) == []


def test_replay_of_a_trace_logged_at_the_old_price_reports_it(tmp_path: Path) -> None:
    """Through `comptroller replay`: the reconciliation's verdict and explanation name the older price."""
    trace = tmp_path / "o3.jsonl"
    day = datetime(2025, 8, 1, 9, tzinfo=UTC)
    lines = []
    for i, (inp, out) in enumerate(MIX):
        usd = _published_usd("o3", "openai", inp, out, datetime(2025, 6, 1, 12, tzinfo=UTC))
        lines.append(json.dumps({"run_id": "acme/run-1", "seq": i + 1, "ts": (day + timedelta(minutes=i)).isoformat(),
                                 "agent": "writer", "model": "o3", "input_tokens": inp, "output_tokens": out,
                                 "max_tokens": 4096, "x_logged_cost_usd": str(usd)}))
    trace.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "r.json"
    result = CliRunner().invoke(app, ["replay", str(trace), "--json", str(out)])
    assert result.exit_code == 0, result.output
    (rec,) = json.loads(out.read_text(encoding="utf-8"))["reconciliation"]
    assert rec["disagrees"] and rec["diagnosis"]["side"] == "older_price"
    assert "the log used an older price" in " ".join(result.output.split())
