"""``comptroller report``: the report of a ledger's usage log, or chargeback rows per tenant, agent, key...

Without ``--by``: the replay report's figures (:func:`comptroller.reports.ledger.ledger_report`),
as tables, ``--json`` and ``--html``. With ``--by tenant|agent|key|conversation|task|model``:
one row per group (calls, tokens per bucket, cost, share;
:mod:`comptroller.reports.chargeback`), as a table, ``--csv`` and ``--json`` for finance with
stable column names. ``--from`` (inclusive) and ``--to`` (exclusive) bound the calls by
settle time, UTC (a date is its 00:00 UTC; a time without a zone is UTC).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from comptroller.cli.common import DEFAULT_DB, DbOption, console, err, user_errors
from comptroller.domain.money import format_usd
from comptroller.errors import LedgerUnavailableError
from comptroller.reports.chargeback import (
    ChargebackBy,
    ChargebackRow,
    TimeRange,
    chargeback_csv,
    chargeback_json,
    chargeback_rows,
)
from comptroller.reports.html import render_html
from comptroller.reports.ledger import ledger_report
from comptroller.reports.terminal import render_terminal
from comptroller.storage import StoreURLError, store_from_url
from comptroller.storage.migrations import SchemaVersionError

__all__ = ["register"]

_user_errors = user_errors(StoreURLError, SchemaVersionError, LedgerUnavailableError, ValueError, FileNotFoundError)
_TENANT_SCOPED = (ChargebackBy.AGENT, ChargebackBy.KEY, ChargebackBy.CONVERSATION, ChargebackBy.TASK)

FromOption = Annotated[str | None, typer.Option(
    "--from", help="Only calls settled at or after this instant (ISO date or time; UTC unless it names a zone)")]
ToOption = Annotated[str | None, typer.Option("--to", help="Only calls settled before this instant (exclusive)")]


def register(app: typer.Typer) -> None:
    """Add the ``report`` command to ``app``."""
    app.command("report")(report)


@_user_errors
def report(
    db: DbOption = DEFAULT_DB,
    by: Annotated[ChargebackBy | None, typer.Option(
        help="One row per tenant, agent, API key, conversation, task or model (chargeback)")] = None,
    since: FromOption = None,
    until: ToOption = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the report (or the --by rows) as JSON")] =
        None,
    csv_out: Annotated[Path | None, typer.Option("--csv", help="Write the --by rows as CSV")] = None,
    html_out: Annotated[Path | None, typer.Option("--html", help="Write the report as self-contained HTML")] = None,
) -> None:
    """Report cost and refusals from a ledger's usage log, or spend per tenant/agent/key/... with --by."""
    window = TimeRange.parse(since, until)
    if csv_out is not None and by is None:
        raise ValueError("--csv writes chargeback rows: add --by tenant|agent|key|conversation|task|model")
    if by is not None:
        _chargeback(db, by, window, json_out, csv_out)
        if html_out is None:
            return
    store = store_from_url(db)
    try:
        full = ledger_report(store, window)
    finally:
        store.close()
    if by is None:
        render_terminal(full, console)
        if json_out is not None:
            json_out.write_text(json.dumps(full.to_dict(), indent=2, default=str), encoding="utf-8")
            console.print(f"JSON report written to {json_out}")
    if html_out is not None:
        render_html(full, html_out, title=f"comptroller report: {db}")
        console.print(f"HTML report written to {html_out}")


def _chargeback(db: str, by: ChargebackBy, window: TimeRange, json_out: Path | None, csv_out: Path | None) -> None:
    store = store_from_url(db)
    try:
        rows = chargeback_rows(store.usage_records(), by, window)
    finally:
        store.close()
    console.print(_table(rows, by, window))
    if json_out is not None:
        json_out.write_text(json.dumps(chargeback_json(rows, by, window), indent=2), encoding="utf-8")
        err.print(f"JSON rows written to {json_out}")
    if csv_out is not None:
        csv_out.write_text(chargeback_csv(rows, by, window), encoding="utf-8")
        err.print(f"CSV rows written to {csv_out}")


def _table(rows: list[ChargebackRow], by: ChargebackBy, window: TimeRange) -> Table:
    total_mc = sum(r.cost_mc for r in rows)
    table = Table(title=f"Spend by {by}", title_justify="left", caption=window.describe())
    scoped = by in _TENANT_SCOPED
    names = [*(["tenant"] if scoped else []), str(by), "calls", "input tok", "output tok", "cache read tok",
             "cache write tok", "cost", "share"]
    for name in names:
        table.add_column(name, justify="left" if name in ("tenant", str(by)) else "right")
    for r in rows:
        share = f"{100 * r.cost_mc / total_mc:.1f}%" if total_mc else "-"
        table.add_row(*([r.tenant] if scoped else []), r.group, f"{r.calls:,}", f"{r.input_tokens:,}",
                      f"{r.output_tokens:,}", f"{r.cache_read_tokens:,}", f"{r.cache_write_tokens:,}",
                      format_usd(r.cost_mc), share)
    table.add_row(*([""] if scoped else []), "total", f"{sum(r.calls for r in rows):,}",
                  f"{sum(r.input_tokens for r in rows):,}", f"{sum(r.output_tokens for r in rows):,}",
                  f"{sum(r.cache_read_tokens for r in rows):,}", f"{sum(r.cache_write_tokens for r in rows):,}",
                  format_usd(total_mc), "100.0%" if total_mc else "-", style="bold")
    return table
