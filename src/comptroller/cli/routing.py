"""``comptroller eval-cascade`` and ``comptroller tco``: the routing evaluation commands.

Registered on the main app by :func:`register`. Errors a user can fix (a missing data
file, an unknown API model, a value out of range) print one message and exit with status 2.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from comptroller.bootstrap import price_book
from comptroller.cli.common import console, user_errors
from comptroller.config import ConfigError, load_policy
from comptroller.domain.money import format_usd
from comptroller.domain.routing.errors import RoutingConfigError
from comptroller.domain.routing.tco import GpuNode
from comptroller.domain.routing.whatif import ModelMapping
from comptroller.evaluation.cascade_eval import PRICE_ALIASES, CascadeEvaluation, evaluate_cascade
from comptroller.evaluation.gsm8k import load_gsm8k
from comptroller.evaluation.html import render_eval_html, render_tco_html
from comptroller.evaluation.tco import DEFAULT_API_MODEL, DEFAULT_NODE, analyse_tco
from comptroller.evaluation.whatif import what_if
from comptroller.prices import PriceBook, UnknownModelError
from comptroller.replay import read_traces
from comptroller.replay.runner import MissingModelError
from comptroller.replay.trace import TraceError
from comptroller.reports.routing import render_routing_table

__all__ = ["eval_cascade_command", "register", "tco_command", "what_if_command"]

_DATA = Path(__file__).resolve().parents[3] / "data" / "routing"
_USER_ERRORS = (FileNotFoundError, ValueError, UnknownModelError, RoutingConfigError, ConfigError, TraceError,
                MissingModelError)

_user_errors = user_errors(*_USER_ERRORS)


def _usd(mc: float) -> str:
    return f"${mc / 100_000:,.3f}"


def _print_eval(ev: CascadeEvaluation) -> None:
    table = Table(title=f"Cascade evaluation: {ev.questions:,} GSM8K questions, Mixtral-8x7B -> GPT-4-1106",
                  title_justify="left")
    for column in ("strategy", "accuracy", "escalated", "cost", "vs always-strong"):
        table.add_column(column, justify="left" if column == "strategy" else "right")
    extra = [ev.best_in_sample.strategy] if ev.best_in_sample is not None else []
    for s in [*ev.strategies, *extra, ev.cross_validated]:
        table.add_row(s.name, f"{s.accuracy:.2%}", f"{s.escalation_rate:.1%}", _usd(s.cost_mc),
                      f"{-ev.reduction(s):+.1%}")
    console.print(table)
    gates = Table(title="Gates at catching wrong cheap answers", title_justify="left")
    for column in ("gate", "failed", "wrong among failed", "precision", "recall"):
        gates.add_column(column, justify="left" if column == "gate" else "right")
    for g in ev.gates:
        gates.add_row(g.gate, f"{g.fails:,}", f"{g.caught:,}", f"{g.precision:.1%}", f"{g.recall:.1%}")
    console.print(gates)
    console.print(render_routing_table(ev.routing))
    if ev.routing.warning:
        console.print(Text("warning: ", style="yellow") + Text(ev.routing.warning))
    _print_headline(ev)


def _print_headline(ev: CascadeEvaluation) -> None:
    target = f"95 % of the strong model's accuracy = {ev.target_accuracy:.2%}"
    cv = ev.cross_validated
    best = ev.best_in_sample
    if best is None:
        console.print(f"Deterministic gates do not reach {target}; see the curve (--html).")
    else:
        console.print(f"Lowest cost at >= {target}: -{ev.reduction(best.strategy):.1%} vs always-strong "
                      f"(answer length <= {best.max_chars} chars, tuned on this set: optimistic).")
    verdict = "meets" if cv.accuracy >= ev.target_accuracy else "misses"
    console.print(f"2-fold cross-validated (limits {list(ev.cross_validated_limits)}): accuracy {cv.accuracy:.2%} "
                  f"({verdict} the target), cost -{ev.reduction(cv):.1%} vs always-strong. "
                  "RouteLLM's published figure on GSM8K: -35 % at 95 % of GPT-4's quality (learned routers).")
    console.print(f"Tokens: {ev.token_method}.")
    for label, p in ev.prices.items():
        console.print(f"Price of {label}: {p['model']} ${p['input_usd_per_mtok']} in / ${p['output_usd_per_mtok']} "
                      f"out per Mtok ({p['source']}).")


@_user_errors
def eval_cascade_command(
    data: Annotated[Path, typer.Option("--data", help="Folder with the GSM8K files (data/routing)")] = _DATA,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the figures as JSON")] = None,
    html_out: Annotated[Path | None, typer.Option("--html", help="Write the curve and tables as HTML")] = None,
    seeds: Annotated[int, typer.Option("--seeds", min=1, help="Random draws averaged per random baseline")] = 200,
    include_contaminated: Annotated[bool, typer.Option(
        "--include-contaminated", help="Keep the 12 questions RouteLLM marks as contaminated")] = False,
) -> None:
    """Evaluate cheap-first cascades with deterministic gates on RouteLLM's labelled GSM8K answers."""
    dataset = load_gsm8k(data, include_contaminated=include_contaminated)
    ev = evaluate_cascade(dataset, prices=PriceBook(aliases=PRICE_ALIASES), seeds=seeds)
    _print_eval(ev)
    if json_out is not None:
        json_out.write_text(json.dumps(ev.to_dict(), indent=2), encoding="utf-8")
    if html_out is not None:
        render_eval_html(ev, html_out)


@_user_errors
def tco_command(
    purchase_usd: Annotated[str, typer.Option(help="Node purchase price, USD")] = str(DEFAULT_NODE.purchase_usd),
    months: Annotated[str, typer.Option(help="Amortisation, months")] = str(DEFAULT_NODE.amortisation_months),
    power_w: Annotated[str, typer.Option(help="Average power, watts, around the clock")] = str(DEFAULT_NODE.power_w),
    electricity_usd_kwh: Annotated[str, typer.Option(help="Electricity, USD per kWh")] = str(
        DEFAULT_NODE.electricity_usd_per_kwh),
    throughput_tokens_s: Annotated[str, typer.Option(help="Aggregate output tokens/s while busy")] = str(
        DEFAULT_NODE.throughput_tokens_s),
    utilisation: Annotated[str, typer.Option(help="Fraction of the day busy, (0, 1]")] = str(DEFAULT_NODE.utilisation),
    other_usd_month: Annotated[str, typer.Option(help="Hosting and maintenance, USD per month")] = "0",
    api_model: Annotated[str, typer.Option(help="API model to compare (genai-prices output price)")] = (
        DEFAULT_API_MODEL),
    api_output_usd_mtok: Annotated[str | None, typer.Option(help="Use this API output price instead")] = None,
    html_out: Annotated[Path | None, typer.Option("--html", help="Write the cost-vs-volume plot as HTML")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the figures as JSON")] = None,
) -> None:
    """Cost per million output tokens of a local GPU node, and the daily volume above which it beats an API."""
    node = GpuNode(Decimal(purchase_usd), Decimal(months), Decimal(power_w), Decimal(electricity_usd_kwh),
                   Decimal(throughput_tokens_s), Decimal(utilisation), Decimal(other_usd_month))
    analysis = analyse_tco(node, prices=PriceBook(), at=datetime.now(UTC), api_model=api_model,
                           api_usd_per_mtok=None if api_output_usd_mtok is None else Decimal(api_output_usd_mtok))
    r = analysis.result
    table = Table(title="Local GPU node vs API (output tokens)", title_justify="left", show_header=False)
    table.add_column(justify="left")
    table.add_column(justify="right")
    for label, value in (
        ("node cost per day", f"${r.daily_cost_usd:.2f}"),
        ("capacity, output tokens/day", f"{r.capacity_tokens_per_day:,.0f}"),
        ("node cost per million output tokens (at capacity)", f"${r.cost_per_mtok_usd:.3f}"),
        (f"API output price ({analysis.api_model})", f"${r.api_usd_per_mtok}"),
        ("break-even, output tokens/day", f"{r.tokens_per_day:,.0f}"),
        ("break-even within one node's capacity", "yes" if r.within_capacity else "no: one node never pays off"),
    ):
        table.add_row(label, value)
    console.print(table)
    console.print(f"Seed claim, break-even at {analysis.claim_tokens_per_day:,.0f} tokens/day: needs an API output "
                  f"price of ${analysis.claim_api_usd_per_mtok:.3f}/Mtok with this node, or a node costing "
                  f"${analysis.claim_daily_cost_usd:.2f}/day at this API price; one node "
                  f"{'can' if analysis.claim_within_capacity else 'cannot'} produce that volume.")
    if json_out is not None:
        json_out.write_text(json.dumps(analysis.to_dict(), indent=2), encoding="utf-8")
    if html_out is not None:
        render_tco_html(analysis, html_out)


def _pairs(values: list[str], option: str) -> dict[str, str]:
    pairs = {}
    for value in values:
        name, sep, model = value.partition("=")
        if not sep or not name or not model:
            raise ValueError(f"{option} takes NAME=MODEL (e.g. {option} Programmer=gpt-4o-mini), got {value!r}")
        pairs[name] = model
    return pairs


@_user_errors
def what_if_command(
    paths: Annotated[list[Path], typer.Argument(help="Trace JSONL files (data/traces format)")],
    policy_path: Annotated[Path | None, typer.Option("--policy", help="Policy TOML (aliases, prices)")] = None,
    agent: Annotated[list[str] | None, typer.Option("--agent", help="AGENT=MODEL (repeatable)")] = None,
    phase: Annotated[list[str] | None, typer.Option("--phase", help="PHASE=MODEL (repeatable)")] = None,
    model: Annotated[list[str] | None, typer.Option("--model", help="MODEL=MODEL, e.g. a tier's (repeatable)")] = None,
) -> None:
    """Re-price recorded traffic under another model mapping (cost only: quality is not simulated)."""
    policy = load_policy(policy_path)
    mapping = ModelMapping(_pairs(agent or [], "--agent"), _pairs(phase or [], "--phase"),
                           _pairs(model or [], "--model"))
    records, _ = read_traces(paths)
    result = what_if(records, mapping, policy=policy, prices=price_book(policy))
    table = Table(title="What-if model mapping (COST ONLY)", title_justify="left")
    for column in ("model", "mapped to", "by", "calls", "recorded cost", "mapped cost"):
        table.add_column(column, justify="right" if "cost" in column or column == "calls" else "left")
    for r in result.rows:
        table.add_row(r.model, r.mapped_to, r.reason, f"{r.calls:,}", format_usd(r.recorded_mc),
                      format_usd(r.mapped_mc))
    table.caption = (f"total {format_usd(result.recorded_mc)} -> {format_usd(result.mapped_mc)}; {result.note}")
    console.print(table)


def register(app: typer.Typer) -> None:
    """Add ``eval-cascade``, ``tco`` and ``what-if`` to ``app``."""
    app.command("eval-cascade")(eval_cascade_command)
    app.command("tco")(tco_command)
    app.command("what-if")(what_if_command)
