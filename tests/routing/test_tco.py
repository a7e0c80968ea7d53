"""Break-even arithmetic equals a hand computation; the tco command prints it and checks the seed claim."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from typer.testing import CliRunner

from comptroller.cli.main import app
from comptroller.domain.routing import RoutingConfigError
from comptroller.domain.routing.tco import (
    GpuNode,
    api_cost_usd,
    api_price_needed,
    break_even,
    daily_cost_needed,
    local_cost_usd,
)
from comptroller.evaluation.tco import analyse_tco
from comptroller.prices import PriceBook

NODE = GpuNode(purchase_usd=Decimal(3000), amortisation_months=Decimal(30), power_w=Decimal(500),
               electricity_usd_per_kwh=Decimal("0.20"), throughput_tokens_s=Decimal(1000),
               utilisation=Decimal("0.25"), other_usd_per_month=Decimal("60.875"))
TINY = Decimal("1e-20")


def test_node_figures_equal_a_hand_computation() -> None:
    """3000 / (30 x 30.4375) + 0.5 kW x 24 h x 0.20 + 60.875 / 30.4375 per day; capacity 1000 x 86400 x 0.25."""
    month_days = Decimal("30.4375")
    daily = Decimal(3000) / (30 * month_days) + Decimal("2.4") + Decimal(2)
    assert NODE.daily_cost_usd() == daily
    assert NODE.capacity_tokens_per_day() == Decimal(21_600_000)
    assert NODE.cost_per_mtok_usd() == daily / Decimal("21.6")


def test_break_even_equals_daily_cost_over_the_api_price() -> None:
    """At $0.60 per million output tokens the node pays off above daily cost / 0.60 million tokens."""
    result = break_even(NODE, Decimal("0.60"))
    assert result.tokens_per_day == NODE.daily_cost_usd() / Decimal("0.60") * 1_000_000
    assert result.within_capacity is (result.tokens_per_day <= Decimal(21_600_000))
    # round trips agree to Decimal's 28 significant digits (a division rounds there)
    assert abs(api_cost_usd(Decimal("0.60"), result.tokens_per_day) - NODE.daily_cost_usd()) < TINY
    assert abs(api_price_needed(NODE, result.tokens_per_day) - Decimal("0.60")) < TINY
    assert abs(daily_cost_needed(Decimal("0.60"), result.tokens_per_day) - NODE.daily_cost_usd()) < TINY


def test_beyond_capacity_more_nodes_are_paid_for() -> None:
    """One node up to its capacity, two just above it."""
    capacity = NODE.capacity_tokens_per_day()
    assert local_cost_usd(NODE, Decimal(0)) == NODE.daily_cost_usd()
    assert local_cost_usd(NODE, capacity) == NODE.daily_cost_usd()
    assert local_cost_usd(NODE, capacity + 1) == 2 * NODE.daily_cost_usd()


@pytest.mark.parametrize(("field", "value"), [
    ("utilisation", Decimal(0)), ("utilisation", Decimal("1.5")), ("throughput_tokens_s", Decimal(0)),
    ("amortisation_months", Decimal(0)), ("power_w", Decimal(-1)),
])
def test_values_out_of_range_are_refused(field: str, value: Decimal) -> None:
    """Each assumption has a range; outside it is a RoutingConfigError naming the field."""
    args = {"purchase_usd": Decimal(1), "amortisation_months": Decimal(1), "power_w": Decimal(1),
            "electricity_usd_per_kwh": Decimal(1), "throughput_tokens_s": Decimal(1), "utilisation": Decimal(1),
            field: value}
    with pytest.raises(RoutingConfigError, match=field):
        GpuNode(**args)


def test_the_api_price_comes_from_genai_prices_unless_given() -> None:
    """analyse_tco prices gpt-4o-mini's output from the book; a given price overrides it."""
    at = datetime(2025, 6, 1, tzinfo=UTC)
    book = PriceBook()
    listed = analyse_tco(NODE, prices=book, at=at)
    assert listed.result.api_usd_per_mtok == book.price("gpt-4o-mini", at).output_mtok
    given = analyse_tco(NODE, prices=book, at=at, api_usd_per_mtok=Decimal(2))
    assert (given.api_model, given.result.api_usd_per_mtok) == ("(given price)", Decimal(2))
    assert given.claim_api_usd_per_mtok == NODE.daily_cost_usd() / Decimal("9.1")


def test_tco_command_prints_the_break_even_and_writes_json(tmp_path: Path) -> None:
    """The command's JSON break-even equals daily cost / API price for the options given."""
    result = CliRunner().invoke(app, [
        "tco", "--purchase-usd", "3000", "--months", "30", "--power-w", "500", "--electricity-usd-kwh", "0.20",
        "--throughput-tokens-s", "1000", "--utilisation", "0.25", "--other-usd-month", "60.875",
        "--api-output-usd-mtok", "0.60", "--json", str(tmp_path / "t.json"), "--html", str(tmp_path / "t.html")])
    assert result.exit_code == 0, result.output
    figures = json.loads((tmp_path / "t.json").read_text())
    assert Decimal(figures["break_even_tokens_per_day"]) == NODE.daily_cost_usd() / Decimal("0.60") * 1_000_000
    assert "Seed claim" in result.output and (tmp_path / "t.html").stat().st_size > 0
