"""Self-contained HTML pages (plotly.js inlined, no network) for ``eval-cascade`` and ``tco``."""

from __future__ import annotations

import html
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path

import plotly.graph_objects as go

from comptroller.domain.money import MC_PER_USD
from comptroller.domain.routing.tco import api_cost_usd, local_cost_usd
from comptroller.evaluation.cascade_eval import CascadeEvaluation, Strategy
from comptroller.evaluation.tco import TcoAnalysis

__all__ = ["render_eval_html", "render_tco_html"]

_STYLE = ("body{font-family:system-ui,sans-serif;margin:2rem;max-width:1100px}"
          "table{border-collapse:collapse;margin:1rem 0}td,th{border:1px solid #ddd;padding:4px 8px;"
          "text-align:right}td:first-child,th:first-child{text-align:left}")


def _usd(mc: int) -> float:
    return mc / MC_PER_USD  # plotting only; the tables print exact figures


def _table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _page(title: str, parts: Sequence[str], path: str | Path) -> None:
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>{''.join(parts)}</body></html>")
    Path(path).write_text(page, encoding="utf-8")


def _curve_figure(ev: CascadeEvaluation) -> go.Figure:
    fig = go.Figure()
    pts = [p.strategy for p in ev.curve]
    fig.add_trace(go.Scatter(x=[_usd(s.cost_mc) for s in pts], y=[s.accuracy for s in pts], mode="lines+markers",
                             name="every gate + answer-length limit (swept)",
                             text=[f"length <= {p.max_chars}" for p in ev.curve]))
    cheap, strong = ev.strategy("always-cheap"), ev.strategy("always-strong")
    n = cheap.questions
    rates = [i / 20 for i in range(21)]
    fig.add_trace(go.Scatter(  # the exact expectation of random escalation at rate r
        x=[_usd(cheap.cost_mc) + r * _usd(strong.cost_mc) for r in rates],
        y=[((1 - r) * cheap.correct + r * strong.correct) / n for r in rates], mode="lines",
        name="random escalation (expected)", line={"dash": "dot"}))
    marks = [*ev.strategies, ev.cross_validated]
    fig.add_trace(go.Scatter(x=[_usd(s.cost_mc) for s in marks], y=[s.accuracy for s in marks],
                             mode="markers+text", text=[s.name for s in marks], textposition="top center",
                             name="strategies", marker={"size": 9}))
    fig.add_hline(y=ev.target_accuracy, line_dash="dash", line_color="red",
                  annotation_text=f"95 % of the strong model's accuracy ({ev.target_accuracy:.1%})")
    fig.update_layout(title=f"Accuracy vs cost on {n:,} GSM8K questions (USD for all of them)",
                      xaxis_title="total cost (USD)", yaxis_title="accuracy", height=600)
    return fig


def _strategy_rows(ev: CascadeEvaluation, strategies: Sequence[Strategy]) -> list[list[object]]:
    return [[s.name, f"{s.accuracy:.2%}", f"{s.escalation_rate:.1%}", f"${_usd(s.cost_mc):,.3f}",
             f"{ev.reduction(s):.1%}"] for s in strategies]


def render_eval_html(ev: CascadeEvaluation, path: str | Path) -> None:
    """Write the cascade evaluation: the accuracy-cost curve, strategies, gates, routing figures."""
    strategies = [*ev.strategies]
    if ev.best_in_sample is not None:
        strategies.append(ev.best_in_sample.strategy)
    strategies.append(ev.cross_validated)
    parts = [
        f"<p>Tokens: {html.escape(ev.token_method)}. Prices: "
        + "; ".join(f"{html.escape(k)} as {html.escape(v['model'])} ${v['input_usd_per_mtok']}/"
                    f"${v['output_usd_per_mtok']} per Mtok ({html.escape(v['source'])})" for k, v in ev.prices.items())
        + f". Random baselines average {ev.seeds} seeded draws.</p>",
        _curve_figure(ev).to_html(full_html=False, include_plotlyjs=True),
        "<h2>Strategies</h2>",
        _table(("strategy", "accuracy", "escalated", "cost", "cost reduction vs always-strong"),
               _strategy_rows(ev, strategies)),
        "<p>RouteLLM (Ong et al., 2024) reports a 35 % cost reduction at 95 % of GPT-4's quality on GSM8K "
        "with learned routers (one model per question; a cascade also pays the cheap call).</p>",
        "<h2>Gates as detectors of wrong cheap answers</h2>",
        _table(("gate", "failed", "of which wrong", "precision", "recall"),
               [[g.gate, g.fails, g.caught, f"{g.precision:.1%}", f"{g.recall:.1%}"] for g in ev.gates]),
        "<h2>Routing report of the all-gates cascade</h2>",
        _table(("tier", "reached", "answered", "escalation rate", "share answered"),
               [[t.tier, t.reached, t.answered, f"{t.escalation_rate:.1%}", f"{t.share_answered:.1%}"]
                for t in ev.routing.tiers]),
        f"<p>Cost per request: P50 ${_usd(ev.routing.p50_cost_mc):.5f}, P95 ${_usd(ev.routing.p95_cost_mc):.5f}."
        + (f" <b>Warning:</b> {html.escape(ev.routing.warning)}" if ev.routing.warning else "") + "</p>",
    ]
    _page("comptroller eval-cascade: GSM8K, Mixtral-8x7B -> GPT-4-1106", parts, path)


def render_tco_html(analysis: TcoAnalysis, path: str | Path) -> None:
    """Write the cost-per-day vs daily-volume plot (API line, local node steps) with the break-even."""
    r = analysis.result
    top = max(r.tokens_per_day, analysis.claim_tokens_per_day, r.capacity_tokens_per_day) * Decimal(2)
    volumes = [top * i / 200 for i in range(201)]
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=[float(v) for v in volumes], y=[float(api_cost_usd(r.api_usd_per_mtok, v))
                                                               for v in volumes], name=f"API ({analysis.api_model})"))
    fig.add_trace(go.Scatter(x=[float(v) for v in volumes], y=[float(local_cost_usd(analysis.node, v))
                                                               for v in volumes], name="local nodes", line_shape="hv"))
    fig.add_vline(x=float(r.tokens_per_day), line_dash="dash",
                  annotation_text=f"break-even {float(r.tokens_per_day) / 1e6:.2f} M tokens/day")
    fig.add_vline(x=float(analysis.claim_tokens_per_day), line_dash="dot", line_color="grey",
                  annotation_text="seed claim 9.1 M", annotation_position="bottom right")
    fig.update_layout(title="Cost per day vs daily output volume (USD)", xaxis_title="output tokens per day",
                      yaxis_title="USD per day", height=550)
    rows = [[k, v] for k, v in analysis.to_dict()["node"].items()]
    parts = [fig.to_html(full_html=False, include_plotlyjs=True), "<h2>Assumptions</h2>", _table(("", "value"), rows)]
    _page("comptroller tco: local GPU node vs API", parts, path)
