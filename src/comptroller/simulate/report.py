"""The storm's results as sentences, a Markdown table, and a self-contained plotly page."""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from comptroller.domain.money import MC_PER_USD, format_usd
from comptroller.simulate.storm import StormConfig, StormRow, by_strategy

__all__ = ["markdown_table", "render_storm_html", "story"]

_LABELS = {"everyone": "no dispatch (everyone answers)", "mentions": "mention-only", "dispatch": "our dispatcher"}


def _usd(mc: float) -> str:
    return format_usd(round(mc))


def story(rows: Sequence[StormRow], config: StormConfig) -> list[str]:
    """The numbers of "the cost curve does not flatten" without dispatch, and of O(k) with it, as sentences."""
    runs = by_strategy(rows)
    lines: list[str] = []
    everyone, dispatch = runs.get("everyone"), runs.get("dispatch")
    if everyone and len(everyone) > 1:
        lo, hi = everyone[0], everyone[-1]
        lines.append(
            f"No dispatch: every input message drew N replies (a thundering herd of {hi.agents} calls at "
            f"N={hi.agents}); tokens per input message grew from {lo.tokens_per_input:,.0f} at N={lo.agents} to "
            f"{hi.tokens_per_input:,.0f} at N={hi.agents} ({hi.tokens_per_input / lo.tokens_per_input:.0f}x for "
            f"{hi.agents / lo.agents:.0f}x the agents), and cost per input message from {_usd(lo.cost_mc_per_input)} "
            f"to {_usd(hi.cost_mc_per_input)}: the cost curve does not flatten.")
        share = hi.relevant_share or 0.0
        lines.append(
            f"Only {share:.0%} of those replies came from a member whose domain matched the message "
            f"(1 in {config.topics} topics by construction; the seed saw 10-20 % of 221 agents do the work), so "
            f"{1 - share:.0%} of the {_usd(hi.cost_mc)} spent at N={hi.agents} bought off-topic replies.")
    if dispatch and len(dispatch) > 1:
        full = [r for r in dispatch if r.agents >= config.k * config.topics] or dispatch[-1:]
        tokens = [r.tokens_per_input for r in full]
        most = max(r.replies_per_input for r in dispatch)
        lines.append(
            f"Our dispatcher (k={config.k}): at most {most:.2f} replies per input message at every N. Once every "
            f"topic has k members (N >= {config.k * config.topics}; here N = {', '.join(str(r.agents) for r in full)}) "
            f"tokens per input message stayed within {min(tokens):,.0f}-{max(tokens):,.0f} (max/min "
            f"{max(tokens) / min(tokens):.2f}): O(k), flat in N; {_usd(dispatch[-1].cost_mc_per_input)} per input "
            f"message at N={dispatch[-1].agents}.")
        if everyone:
            ratio = everyone[-1].cost_mc / max(dispatch[-1].cost_mc, 1)
            lines.append(f"At N={dispatch[-1].agents} no dispatch cost {ratio:,.0f}x what the dispatcher did.")
    mentions = runs.get("mentions")
    if mentions:
        answered = sum(r.replies for r in mentions) / sum(r.inputs for r in mentions)
        lines.append(f"Mention-only was cheapest but answered only {answered:.0%} of input messages on average: an "
                     f"unmentioned message got no reply at all.")
    return lines


def markdown_table(rows: Sequence[StormRow]) -> str:
    """One Markdown row per (strategy, N)."""
    head = ("| strategy | N | replies / input | tokens / input | cost / input | total cost | on-topic replies | "
            "refused |\n|---|---:|---:|---:|---:|---:|---:|---:|")
    body = [f"| {_LABELS[r.strategy]} | {r.agents} | {r.replies_per_input:.2f} | {r.tokens_per_input:,.0f} | "
            f"{_usd(r.cost_mc_per_input)} | {format_usd(r.cost_mc)} | "
            f"{'-' if r.relevant_share is None else f'{r.relevant_share:.0%}'} | {r.refused} |" for r in rows]
    return "\n".join([head, *body])


def render_storm_html(rows: Sequence[StormRow], config: StormConfig, path: str | Path) -> None:
    """Write replies, tokens and cost per input message vs N for each strategy as one HTML page (no network)."""
    fig = make_subplots(rows=3, cols=1, shared_xaxes=True, vertical_spacing=0.06, subplot_titles=(
        "replies per input message", "tokens per input message (log)", "cost per input message, USD (log)"))
    for strategy, runs in by_strategy(rows).items():
        xs = [r.agents for r in runs]
        series = ([r.replies_per_input for r in runs], [r.tokens_per_input for r in runs],
                  [r.cost_mc_per_input / MC_PER_USD for r in runs])  # plotting only; tables stay exact
        for i, ys in enumerate(series, start=1):
            fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines+markers", name=_LABELS[strategy],
                                     legendgroup=strategy, showlegend=i == 1), row=i, col=1)
    fig.update_yaxes(type="log", row=2, col=1)
    fig.update_yaxes(type="log", row=3, col=1)
    fig.update_xaxes(type="log", title_text="agents in the room (N, log)", row=3, col=1)
    fig.update_layout(height=1000, title=f"Group-chat storm: {config.messages} input messages, k={config.k}, "
                                         f"{config.topics} topics, model {config.model}")
    sentences = "".join(f"<li>{html.escape(s)}</li>" for s in story(rows, config))
    table = "".join(
        f"<tr><td>{_LABELS[r.strategy]}</td><td>{r.agents}</td><td>{r.replies_per_input:.2f}</td>"
        f"<td>{r.tokens_per_input:,.0f}</td><td>{_usd(r.cost_mc_per_input)}</td><td>{format_usd(r.cost_mc)}</td>"
        f"<td>{r.refused}</td></tr>" for r in rows)
    page = ("<!doctype html><html><head><meta charset='utf-8'><title>comptroller simulate group</title><style>"
            "body{font-family:system-ui,sans-serif;margin:2rem;max-width:1100px}table{border-collapse:collapse}"
            "td,th{border:1px solid #ddd;padding:4px 8px;text-align:right}</style></head><body>"
            f"<h1>Group-chat storm</h1><ul>{sentences}</ul>{fig.to_html(full_html=False, include_plotlyjs=True)}"
            "<table><tr><th>strategy</th><th>N</th><th>replies / input</th><th>tokens / input</th>"
            f"<th>cost / input</th><th>total cost</th><th>refused</th></tr>{table}</table></body></html>")
    Path(path).write_text(page, encoding="utf-8")
