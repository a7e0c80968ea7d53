"""The report as rich terminal tables."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from rich.console import Console
from rich.padding import Padding
from rich.syntax import Syntax
from rich.table import Table

from comptroller.domain.money import format_usd
from comptroller.reports.ceiling_miss import CEILING_MISS_HEADER, ceiling_miss_rows
from comptroller.reports.model import Group, Reconciliation, Report

__all__ = ["render_terminal"]

_ROWS = 12


def _pct(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "-"


GROUP_HEADER = ("", "calls", "input tok", "output tok", "cost", "share")


def group_rows(groups: Sequence[Group], total_mc: int,
               money: Callable[[int], str] = format_usd) -> list[tuple[str, ...]]:
    """A cost table's rows (shared by the terminal and HTML reports): the columns of :data:`GROUP_HEADER`."""
    return [(g.key, f"{g.calls:,}", f"{g.input_tokens:,}", f"{g.output_tokens:,}", money(g.cost_mc),
             _pct(g.cost_mc, total_mc)) for g in groups]


def _groups(title: str, groups: Sequence[Group], total_mc: int) -> Table:
    table = Table(title=title, title_justify="left")
    for name in GROUP_HEADER:
        table.add_column(name, justify="left" if not name else "right")
    for row in group_rows(groups[:_ROWS], total_mc):
        table.add_row(*row)
    if len(groups) > _ROWS:
        table.caption = f"{len(groups) - _ROWS} more in the JSON and HTML reports"
    return table


def prevented_text(report: Report, money: Callable[[int], str]) -> str:
    """Spend prevented, with the part whose calls would have fitted the money left (refused for their ceiling)."""
    if not report.prevented_fitting_mc:
        return money(report.prevented_mc)
    return (f"{money(report.prevented_mc)}, of which {money(report.prevented_fitting_mc)} in calls refused for "
            "their ceiling whose cost would have fitted")


def _summary(report: Report) -> Table:
    table = Table(title="Summary", title_justify="left", show_header=False)
    table.add_column(justify="left")
    table.add_column(justify="right")
    rows = [
        ("calls (admitted / refused)", f"{report.calls:,} ({report.admitted_calls:,} / {report.refused_calls:,})"),
        ("runs with admitted calls", f"{report.runs:,}"),
        ("input / output tokens", f"{report.input_tokens:,} / {report.output_tokens:,}"),
        ("input : output", f"{report.input_output_ratio:.2f} : 1"),
        ("total cost", format_usd(report.cost_mc)),
        ("cost per run P50 / P95", f"{format_usd(report.p50_run_cost_mc)} / {format_usd(report.p95_run_cost_mc)}"),
        ("ceiling misses", f"{report.ceiling_misses:,}"),
    ]
    if report.refused_calls:
        rows.append(("spend prevented by refusals", prevented_text(report, format_usd)))
    if report.skipped_lines:
        rows.append(("invalid lines skipped", f"{report.skipped_lines:,}"))
    span = range_text(report)
    if span is not None:
        rows.insert(0, ("calls settled", span))
    for name, value in rows:
        table.add_row(name, value)
    return table


def range_text(report: Report) -> str | None:
    """The report's time range (``--from`` inclusive, ``--to`` exclusive, UTC), or None when it has none."""
    since, until = report.time_range.get("from", ""), report.time_range.get("to", "")
    if not since and not until:
        return None
    return (f"from {f'{since} (inclusive)' if since else 'the first call'} to "
            f"{f'{until} (exclusive)' if until else 'the last call'}, UTC")


REFUSAL_HEADER = ("level", "code", "reason", "calls", "spend prevented")


def refusal_rows(report: Report, money: Callable[[int], str] = format_usd) -> list[tuple[str, ...]]:
    """The refusals table's rows (shared by the terminal and HTML reports)."""
    return [(g.level, g.code, g.reason or "-", f"{g.calls:,}",
             money(g.prevented_mc) + (" (would have fitted)" if g.reason else "")) for g in report.refusals]


def _refusals(report: Report) -> Table:
    table = Table(title="Refused calls by level, code and reason", title_justify="left")
    for name in REFUSAL_HEADER:
        table.add_column(name)
    for row in refusal_rows(report):
        table.add_row(*row)
    return table


def trip_rows(report: Report) -> list[tuple[str, ...]]:
    """The defense timeline as table rows (shared by the terminal and HTML reports)."""
    return [(t.ts[:19], t.kind, t.code, t.level, t.scope, f"{t.count:,}", (t.last_ts or t.ts)[:19], t.detail)
            for t in report.trips]


TRIP_HEADER = ("time (UTC)", "kind", "code", "level", "scope", "calls", "until", "detail")


def _trips(report: Report) -> Table:
    table = Table(title="Defense timeline: trips and defense refusals", title_justify="left")
    for name in TRIP_HEADER:
        table.add_column(name)
    for row in trip_rows(report):
        table.add_row(*row)
    return table


CEILING_MISS_TITLE = "Ceiling misses: usage reported above its call's bounds (charged in full)"


def _ceiling_misses(report: Report) -> Table:
    table = Table(title=CEILING_MISS_TITLE, title_justify="left")
    for name in CEILING_MISS_HEADER:
        table.add_column(name, justify="right" if name.endswith(("calls", "tokens")) else "left")
    for row in ceiling_miss_rows(report.usage_anomalies):
        table.add_row(*row)
    return table


_SIDE = {"none": "[green]agrees[/green]", "source": "[yellow]the logged costs look wrong[/yellow]",
         "table": "[red]our table looks stale[/red]", "unknown": "[yellow]disagrees[/yellow]",
         "older_price": "[yellow]the log used an older price[/yellow]"}


def reconciliation_verdict(r: Reconciliation) -> str:
    """The short verdict of one model's reconciliation (markup-free)."""
    if r.diagnosis is None:
        return "disagrees" if r.disagrees else "agrees"
    return _SIDE[r.diagnosis.side].split("]", 1)[1].rsplit("[", 1)[0]


def _reconciliation(report: Report) -> Table:
    table = Table(title="Reconciliation: computed vs logged cost", title_justify="left")
    for name in ("model", "calls", "computed", "logged", "diff", ""):
        table.add_column(name)
    for r in report.reconciliation:
        flag = _SIDE["unknown" if r.disagrees else "none"] if r.diagnosis is None else _SIDE[r.diagnosis.side]
        table.add_row(r.model, f"{r.calls:,}", format_usd(r.computed_mc), format_usd(r.logged_mc),
                      f"{r.diff_pct:+.2f}%", flag)
    return table


def _diagnoses(report: Report, console: Console) -> None:
    for r in report.reconciliation:
        d = r.diagnosis
        if d is None or d.side == "none":
            continue
        console.print(f"{r.model}: {d.explanation}.", highlight=False)
        if d.override_toml is not None:
            console.print(Padding(Syntax(d.override_toml, "toml", theme="ansi_dark"), (0, 0, 0, 4)))


HEADROOM_HEADER = ("agent", "calls", "cap (tokens)", "reserved as requested", "reserved with cap", "settled",
                   "ceiling misses")


def headroom_title(report: Report, money: Callable[[int], str] = format_usd) -> str:
    """The headroom heading: the totals of its columns, and what this policy reserved."""
    h = report.headroom
    assert h is not None
    return (f"Reservation headroom over {h.calls:,} calls with a recorded max_tokens: "
            f"{money(h.reserved_requested_mc)} reserved as requested, {money(h.reserved_capped_mc)} with the caps "
            f"below, {money(h.settled_mc)} settled; this policy reserved {money(h.reserved_mc)} "
            f"(requested output is a median {h.median_requested_over_actual_output}x the actual)")


def headroom_rows(report: Report, money: Callable[[int], str] = format_usd) -> list[tuple[str, ...]]:
    """The headroom table's rows (shared by the terminal and HTML reports)."""
    h = report.headroom
    assert h is not None
    return [(c.agent, f"{c.calls:,}", f"{c.cap_tokens:,}", money(c.reserved_requested_mc),
             money(c.reserved_capped_mc), money(c.settled_mc), f"{c.ceiling_misses:,}") for c in h.by_agent]


def _headroom(report: Report) -> Table | None:
    if report.headroom is None:
        return None
    table = Table(title=headroom_title(report), title_justify="left")
    for name in HEADROOM_HEADER:
        table.add_column(name)
    for row in headroom_rows(report)[:_ROWS]:
        table.add_row(*row)
    table.caption = "cap = the agent's largest output in this traffic, rounded up to 256 tokens"
    return table


def default_bound_note(report: Report) -> str | None:
    """The line naming the calls replay bounded at its default output bound, or None."""
    if not report.default_bound_calls:
        return None
    return (f"{report.default_bound_calls:,} calls had no max_tokens, no output cap and no known maximum output "
            f"({', '.join(report.default_bound_models)}): their ceilings use replay's default output bound of "
            f"{report.default_bound_tokens:,} tokens (set output_cap_tokens in a policy to choose another)")


PNL_HEADER = ("", "revenue", "LLM cost", "infra", "fees net", "margin", "margin %", "")


def pnl_rows_text(document: dict[str, Any], money: Callable[[int], str] = format_usd) -> list[tuple[str, ...]]:
    """A P&L document's rows and total (:func:`comptroller.reports.pnl.pnl_document`) in the columns of
    :data:`PNL_HEADER` (shared by the terminal and HTML reports)."""
    return [(row["scope"], *(money(row[n]) for n in ("revenue_mc", "llm_cost_mc", "infra_mc", "fees_net_mc",
                                                      "margin_mc")),
             "" if row["margin_pct"] is None else f"{row['margin_pct']}%", "BELOW MARGIN" if row["flagged"] else "")
            for row in [*document["rows"], document["total"]]]


def _pnl(title: str, document: dict[str, Any]) -> Table:
    table = Table(title=title, title_justify="left")
    for name in PNL_HEADER:
        table.add_column(name, justify="left" if not name else "right")
    for row in pnl_rows_text(document):
        table.add_row(*row)
    return table


def render_terminal(report: Report, console: Console) -> None:
    """Print the report as tables."""
    console.print(_summary(report))
    note = default_bound_note(report)
    if note is not None:
        console.print(note, highlight=False)
    console.print(_groups("Cost by tenant", report.by_tenant, report.cost_mc))
    if report.by_key:
        console.print(_groups("Cost by API key", report.by_key, report.cost_mc))
    console.print(_groups("Cost by agent", report.by_agent, report.cost_mc))
    console.print(_groups("Cost by model", report.by_model, report.cost_mc))
    console.print(_groups("Cost by phase", report.by_phase, report.cost_mc))
    console.print(_groups("Top runs", report.top_runs, report.cost_mc))
    if report.refusals:
        console.print(_refusals(report))
    if report.trips:
        console.print(_trips(report))
    if report.usage_anomalies:
        console.print(_ceiling_misses(report))
    if report.reconciliation:
        console.print(_reconciliation(report))
        _diagnoses(report, console)
    headroom = _headroom(report)
    if headroom is not None:
        console.print(headroom)
    if report.pnl is not None:
        console.print(_pnl("P&L by tenant (chargeback)", report.pnl["tenant"]))
        console.print(_pnl("P&L by agent", report.pnl["agent"]))
