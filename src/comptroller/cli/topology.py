"""``comptroller simulate topology``: tokens and cost of star, pipeline, debate and hierarchy teams as N grows."""

from __future__ import annotations

import json
from dataclasses import asdict
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from comptroller.cli.common import console, user_errors
from comptroller.domain.money import format_usd
from comptroller.domain.pricing import Rate, TieredRate
from comptroller.prices import PriceBook, UnknownModelError
from comptroller.simulate.topology import TOPOLOGIES, Shape, claims, simulate

__all__ = ["register"]


def _base(rate: Rate) -> Decimal:
    return rate.base if isinstance(rate, TieredRate) else rate


def topology_command(
    n_max: Annotated[int, typer.Option("--n-max", min=1, max=1000, help="Largest number of agents")] = 16,
    model: Annotated[str, typer.Option(help="Model to price the tokens at (genai-prices, today)")] = "gpt-4o-mini",
    system_tokens: Annotated[int, typer.Option(min=0, help="System prompt per agent, tokens")] = 1000,
    task_tokens: Annotated[int, typer.Option(min=0, help="The task, tokens")] = 500,
    output_tokens: Annotated[int, typer.Option(min=0, help="Output per call, tokens")] = 400,
    rounds: Annotated[int, typer.Option(min=1, help="Debate rounds")] = 3,
    branching: Annotated[int, typer.Option(min=1, help="Children per manager in the hierarchy")] = 3,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write every row and the claims as JSON")] = None,
) -> None:
    """Tokens and cost of multi-agent topologies for N = 1..n-max, and the published claims checked against them."""
    shape = Shape(system_tokens, task_tokens, output_tokens, rounds, branching)
    price = PriceBook().price(model, datetime.now(UTC))
    rows = simulate(n_max, shape, input_mtok=_base(price.input_mtok), output_mtok=_base(price.output_mtok))
    table = Table(title=f"Tokens (x the single call) and cost on {price.model}", title_justify="left")
    table.add_column("N", justify="right")
    for topology in TOPOLOGIES[1:]:
        table.add_column(topology, justify="right")
    by = {(r.topology, r.agents): r for r in rows}
    for n in range(1, n_max + 1):
        cells = [f"{by[(t, n)].input_tokens + by[(t, n)].output_tokens:,} ({by[(t, n)].ratio_to_single}x) "
                 f"{format_usd(by[(t, n)].cost_mc)}" for t in TOPOLOGIES[1:]]
        table.add_row(str(n), *cells)
    console.print(table)
    found = claims(rows, shape)
    for line in found:
        console.print("- " + line, highlight=False)
    if json_out is not None:
        json_out.write_text(json.dumps({"shape": asdict(shape), "model": price.model,
                                        "rows": [asdict(r) for r in rows], "claims": found}, indent=2))
        console.print(f"JSON written to {json_out}")


def register(simulate_app: typer.Typer) -> None:
    """Add ``topology`` to the ``simulate`` command group."""
    simulate_app.command("topology")(user_errors(UnknownModelError, ValueError)(topology_command))
