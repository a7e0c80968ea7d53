"""The report as one self-contained HTML page with plotly charts (plotly.js inlined once).

Tables have the terminal's columns (tokens and shares included; the row builders are
shared with :mod:`.terminal`), every row rather than the top 12. Money is shown at a
reading precision (:func:`usd_display`: whole dollars from $100, cents from $1, two
significant digits below); the JSON report keeps every figure in exact millicents.
"""

from __future__ import annotations

import html
from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import plotly.graph_objects as go

from comptroller.domain.budgets import Period, period_key
from comptroller.domain.money import MC_PER_USD, format_usd
from comptroller.reports.ceiling_miss import CEILING_MISS_HEADER, ceiling_miss_rows
from comptroller.reports.model import Report
from comptroller.reports.terminal import (
    CEILING_MISS_TITLE,
    GROUP_HEADER,
    HEADROOM_HEADER,
    PNL_HEADER,
    REFUSAL_HEADER,
    TRIP_HEADER,
    default_bound_note,
    group_rows,
    headroom_rows,
    headroom_title,
    pnl_rows_text,
    prevented_text,
    range_text,
    reconciliation_verdict,
    refusal_rows,
    trip_rows,
)

__all__ = ["render_html", "usd_display"]


def usd_display(mc: int) -> str:
    """Millicents at a reading precision: ``$1,235`` from $100, ``$12.35`` from $1, else 2 significant digits."""
    usd = Decimal(mc) / MC_PER_USD
    sign, size = ("-" if usd < 0 else ""), abs(usd)
    if size == 0:
        return "$0"
    if size >= 100:
        return f"{sign}${size:,.0f}"
    if size >= 1:
        return f"{sign}${size:,.2f}"
    return f"{sign}${size.quantize(Decimal(10) ** (size.adjusted() - 1)):f}"


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
    fig.update_layout(title=f"Admitted spend per {period} vs the namespace budget (USD)", xaxis_type="date",
                      xaxis_title=f"{period} starting ({zone}); days without spend show as gaps")
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


def _reconciliation(report: Report) -> str:
    table = _rows_table("Reconciliation: computed vs logged cost", ("model", "calls", "computed", "logged", "diff", ""),
                        [(r.model, f"{r.calls:,}", usd_display(r.computed_mc), usd_display(r.logged_mc),
                          f"{r.diff_pct:+.2f}%", reconciliation_verdict(r)) for r in report.reconciliation])
    notes = [f"<p><b>{html.escape(r.model)}</b>: {html.escape(r.diagnosis.explanation)}.</p>"
             + (f"<pre>{html.escape(r.diagnosis.override_toml)}</pre>" if r.diagnosis.override_toml else "")
             for r in report.reconciliation if r.diagnosis is not None and r.diagnosis.side != "none"]
    return table + "".join(notes)


def _detail_tables(report: Report) -> list[str]:
    tables = [
        _rows_table("Refused calls by level, code and reason", REFUSAL_HEADER, refusal_rows(report, usd_display)),
        _rows_table("Defense timeline: trips and defense refusals", TRIP_HEADER, trip_rows(report)),
        _rows_table(CEILING_MISS_TITLE, CEILING_MISS_HEADER, ceiling_miss_rows(report.usage_anomalies)),
        _reconciliation(report) if report.reconciliation else "",
    ]
    if report.headroom is not None:
        tables.append(_rows_table(headroom_title(report, usd_display), HEADROOM_HEADER,
                                  headroom_rows(report, usd_display)))
    if report.pnl is not None:
        tables += [_rows_table("P&L by tenant (chargeback)", ("tenant", *PNL_HEADER[1:]),
                               pnl_rows_text(report.pnl["tenant"], usd_display)),
                   _rows_table("P&L by agent", ("agent", *PNL_HEADER[1:]),
                               pnl_rows_text(report.pnl["agent"], usd_display))]
    return tables


def _summary(report: Report) -> str:
    items = [
        ("calls (admitted / refused)", f"{report.calls:,} ({report.admitted_calls:,} / {report.refused_calls:,})"),
        ("runs with admitted calls", f"{report.runs:,}"),
        ("input / output tokens", f"{report.input_tokens:,} / {report.output_tokens:,}"),
        ("input : output", f"{report.input_output_ratio:.2f} : 1"),
        ("total cost", f"{usd_display(report.cost_mc)} ({format_usd(report.cost_mc)})"),
        ("cost per run P50 / P95", f"{usd_display(report.p50_run_cost_mc)} / {usd_display(report.p95_run_cost_mc)}"),
        ("spend prevented by refusals", prevented_text(report, usd_display)),
        ("ceiling misses", f"{report.ceiling_misses:,}"),
    ]
    span = range_text(report)
    if span is not None:
        items.insert(0, ("calls settled", span))
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in items)
    note = default_bound_note(report)
    return f"<table>{rows}</table>" + (f"<p>{html.escape(note)}</p>" if note else "")


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
        *(_rows_table(title, GROUP_HEADER, group_rows(groups, report.cost_mc, usd_display)) for title, groups in (
            ("Cost by tenant", report.by_tenant), ("Cost by API key", report.by_key),
            ("Cost by agent", report.by_agent), ("Cost by model", report.by_model),
            ("Cost by phase", report.by_phase), ("Top runs", report.top_runs))),
        *_detail_tables(report),
    ])
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{_STYLE}</style></head><body>{body}</body></html>")
    Path(path).write_text(page, encoding="utf-8")
