"""The report as one self-contained HTML page with plotly charts (plotly.js inlined once)."""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path

import plotly.graph_objects as go

from comptroller.domain.money import MC_PER_USD, format_usd
from comptroller.reports.model import Group, Report

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
    figures = [_cost_by_agent(report), _spend_over_time(report), _run_distribution(report)]
    charts = [fig.to_html(full_html=False, include_plotlyjs=(i == 0)) for i, fig in enumerate(figures)]
    body = "".join([
        f"<h1>{html.escape(title)}</h1>", _summary(report), *charts,
        _table("Cost by model", report.by_model), _table("Cost by phase", report.by_phase),
        _table("Top runs", report.top_runs),
    ])
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{_STYLE}</style></head><body>{body}</body></html>")
    Path(path).write_text(page, encoding="utf-8")
