"""The report as one self-contained HTML page with plotly charts (plotly.js inlined once)."""

from __future__ import annotations

import html
from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import plotly.graph_objects as go

from comptroller.domain.budgets import Period, period_key
from comptroller.domain.money import MC_PER_USD, format_usd
from comptroller.reports.model import Group, Report
from comptroller.reports.terminal import TRIP_HEADER, trip_rows

__all__ = ["render_html"]


def _usd(mc: int) -> float:
    return mc / MC_PER_USD  # plotting only; every figure in text stays exact


def _cost_by_agent(report: Report) -> go.Figure:
    groups = report.by_agent
    fig = go.Figure(go.Bar(x=[_usd(g.cost_mc) for g in groups], y=[g.key for g in groups], orientation="h"))
    fig.update_layout(title="Cost by agent (USD)", yaxis={"autorange": "reversed"}, height=120 + 28 * len(groups))
    return fig


def _spend_over_time(report: Report) -> go.Figure:
    xs = [ts for ts, _ in report.timeline]
    fig = go.Figure(go.Scatter(x=xs, y=[_usd(mc) for _, mc in report.timeline], mode="lines",
                               name="cumulative spend"))
    for budget in report.budgets:
        if budget["level"] == "namespace" and budget["period"] == "total":
            fig.add_hline(y=_usd(budget["limit_mc"]), line_dash="dash",
                          annotation_text=f"namespace budget {format_usd(budget['limit_mc'])}")
    fig.update_layout(title="Cumulative spend over time (USD)", xaxis_title="time (UTC)")
    return fig


def _spend_per_period(report: Report, budget: dict[str, Any]) -> go.Figure:
    period, zone = Period(budget["period"]), budget.get("timezone", "UTC")
    spend: dict[str, int] = defaultdict(int)
    previous = 0
    for ts, cumulative in report.timeline:
        spend[period_key(period, zone, datetime.fromisoformat(ts))] += cumulative - previous
        previous = cumulative
    keys = sorted(spend)
    fig = go.Figure(go.Bar(x=keys, y=[_usd(spend[k]) for k in keys], name=f"spend per {period}"))
    fig.add_hline(y=_usd(budget["limit_mc"]), line_dash="dash", line_color="red",
                  annotation_text=f"namespace budget {format_usd(budget['limit_mc'])} per {period}")
    fig.update_layout(title=f"Admitted spend per {period} vs the namespace budget (USD)", xaxis_type="category")
    return fig


def _run_distribution(report: Report) -> go.Figure:
    fig = go.Figure(go.Histogram(x=[_usd(g.cost_mc) for g in report.by_run], nbinsx=40))
    for budget in report.budgets:
        if budget["level"] in ("conversation", "task"):
            fig.add_vline(x=_usd(budget["limit_mc"]), line_dash="dash",
                          annotation_text=f"{budget['level']} budget {format_usd(budget['limit_mc'])}")
    fig.update_layout(title=(f"Cost per run (USD): P50 {format_usd(report.p50_run_cost_mc)}, "
                             f"P95 {format_usd(report.p95_run_cost_mc)}"),
                      xaxis_title="cost of one run", yaxis_title="runs")
    return fig


def _rows_table(title: str, header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    if not rows:
        return ""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<h2>{html.escape(title)}</h2><table><tr>{head}</tr>{body}</table>"


def _detail_tables(report: Report) -> list[str]:
    tables = [
        _rows_table("Refused calls by level and code", ("level", "code", "calls", "spend prevented"),
                    [(g.level, g.code, f"{g.calls:,}", format_usd(g.prevented_mc)) for g in report.refusals]),
        _rows_table("Defense timeline: trips and defense refusals", TRIP_HEADER, trip_rows(report)),
        _rows_table("Reconciliation: computed vs logged cost", ("model", "calls", "computed", "logged", "diff", ""),
                    [(r.model, f"{r.calls:,}", format_usd(r.computed_mc), format_usd(r.logged_mc),
                      f"{r.diff_pct:+.2f}%", "price table disagrees" if r.disagrees else "agrees")
                     for r in report.reconciliation]),
    ]
    h = report.headroom
    if h is not None:
        tables.append(_rows_table(
            f"Reservation headroom: reserved {format_usd(h.reserved_mc)} to settle {format_usd(h.settled_mc)} "
            f"over {h.calls:,} calls (requested output a median {h.median_requested_over_actual_output}x the actual)",
            ("agent", "calls", "cap (tokens)", "reserved as requested", "reserved with cap", "settled",
             "ceiling misses"),
            [(c.agent, f"{c.calls:,}", f"{c.cap_tokens:,}", format_usd(c.reserved_requested_mc),
              format_usd(c.reserved_capped_mc), format_usd(c.settled_mc), f"{c.ceiling_misses:,}")
             for c in h.by_agent]))
    return tables


def _table(title: str, groups: Sequence[Group]) -> str:
    rows = "".join(
        f"<tr><td>{html.escape(g.key)}</td><td>{g.calls:,}</td><td>{g.input_tokens:,}</td>"
        f"<td>{g.output_tokens:,}</td><td>{format_usd(g.cost_mc)}</td></tr>" for g in groups)
    return (f"<h2>{html.escape(title)}</h2><table><tr><th></th><th>calls</th><th>input tok</th>"
            f"<th>output tok</th><th>cost</th></tr>{rows}</table>")


def _summary(report: Report) -> str:
    items = [
        ("calls (admitted / refused)", f"{report.calls:,} ({report.admitted_calls:,} / {report.refused_calls:,})"),
        ("total cost", format_usd(report.cost_mc)),
        ("input : output", f"{report.input_output_ratio:.2f} : 1"),
        ("cost per run P50 / P95", f"{format_usd(report.p50_run_cost_mc)} / {format_usd(report.p95_run_cost_mc)}"),
        ("spend prevented by refusals", format_usd(report.prevented_mc)),
        ("ceiling misses", f"{report.ceiling_misses:,}"),
    ]
    return "<table>" + "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in items) + "</table>"


_STYLE = ("body{font-family:system-ui,sans-serif;margin:2rem;max-width:1100px}"
          "table{border-collapse:collapse;margin:1rem 0}td,th{border:1px solid #ddd;padding:4px 8px;"
          "text-align:right}td:first-child,th:first-child{text-align:left}")


def render_html(report: Report, path: str | Path, *, title: str = "comptroller report") -> None:
    """Write the report as one HTML file that needs no network (plotly.js is embedded)."""
    figures = [_cost_by_agent(report), _spend_over_time(report)]
    figures += [_spend_per_period(report, b) for b in report.budgets
                if b["level"] == "namespace" and b["period"] != "total"]
    figures.append(_run_distribution(report))
    charts = [fig.to_html(full_html=False, include_plotlyjs=(i == 0)) for i, fig in enumerate(figures)]
    body = "".join([
        f"<h1>{html.escape(title)}</h1>", _summary(report), *charts,
        _table("Cost by model", report.by_model), _table("Cost by phase", report.by_phase),
        _table("Top runs", report.top_runs), *_detail_tables(report),
    ])
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{_STYLE}</style></head><body>{body}</body></html>")
    Path(path).write_text(page, encoding="utf-8")
