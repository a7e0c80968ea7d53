"""``comptroller pnl``: revenue, LLM cost, allocated infrastructure and margin per agent or tenant and period.

Posts the usage log to the wallets first (idempotent: :func:`comptroller.wallet_posting.post_usage`,
with the policy's ``[fees]`` and ``[[infra]]``), then reads every transfer and prints
:func:`comptroller.domain.wallets.pnl.pnl_rows`. Rows below the policy's
``fees.margin_floor`` are flagged. ``--json`` and ``--csv`` write the same rows for finance
(money in integer millicents and in USD; :func:`comptroller.reports.pnl.pnl_row_dict`).
``--from`` is inclusive, ``--to`` exclusive, both UTC (a transfer's ``ts`` is its call's settle time).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from comptroller.cli.common import DEFAULT_DB, DbOption, console, user_errors
from comptroller.config import ConfigError, Policy, load_policy
from comptroller.domain.budgets import Period
from comptroller.domain.money import format_usd
from comptroller.domain.wallets.pnl import PnlBy, PnlRow, pnl_rows, pnl_totals
from comptroller.domain.wallets.transfers import Transfer
from comptroller.economics_config import infra_items
from comptroller.errors import LedgerUnavailableError
from comptroller.reports.chargeback import TimeRange
from comptroller.reports.pnl import PNL_MONEY, pnl_row_dict
from comptroller.storage import StoreURLError, store_from_url
from comptroller.storage.migrations import SchemaVersionError
from comptroller.storage.transfer_stores import transfers_from_url
from comptroller.wallet_posting import post_usage

__all__ = ["posted_transfers", "register"]

_user_errors = user_errors(ConfigError, StoreURLError, SchemaVersionError, LedgerUnavailableError, ValueError,
                           FileNotFoundError)


def register(app: typer.Typer) -> None:
    """Add the ``pnl`` command to ``app``."""
    app.command("pnl")(pnl)


def posted_transfers(db: str, policy: Policy, *, post: bool = True) -> list[Transfer]:
    """Every wallet transfer of the ledger at ``db``, after posting its usage log with the policy's fees and infra.

    Raises:
        StoreURLError: for an unknown URL scheme.
        LedgerUnavailableError: if the ledger or the wallet store cannot answer.
    """
    fees = policy.fees.schedule() if policy.fees else None
    ledger, store = store_from_url(db), transfers_from_url(db)
    try:
        if post:
            post_usage(ledger.usage_records(), store, fees=fees, infra=infra_items(policy.infra))
        return list(store.transfers())
    finally:
        store.close()
        ledger.close()


@_user_errors
def pnl(
    policy_path: Annotated[Path | None, typer.Option("--policy", help="Policy with [fees] and [[infra]]")] = None,
    by: Annotated[PnlBy, typer.Option(help="Rows per agent or per tenant")] = PnlBy.AGENT,
    period: Annotated[Period, typer.Option(help="Calendar period of a row (total: one row per scope)")] =
        Period.MONTH,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write rows and totals as JSON")] = None,
    csv_out: Annotated[Path | None, typer.Option("--csv", help="Write rows as CSV")] = None,
    post: Annotated[bool, typer.Option(help="Post the usage log to the wallets first")] = True,
    since: Annotated[str | None, typer.Option("--from", help="Only transfers at or after this instant "
                                              "(ISO date or time; UTC unless it names a zone)")] = None,
    until: Annotated[str | None, typer.Option("--to", help="Only transfers before this instant")] = None,
    db: DbOption = DEFAULT_DB,
) -> None:
    """Profit and loss per agent or tenant and period: revenue, LLM cost, allocated infra, margin; flags."""
    policy = load_policy(policy_path)
    window = TimeRange.parse(since, until)
    fees = policy.fees.schedule() if policy.fees else None
    chosen = [t for t in posted_transfers(db, policy, post=post) if window.contains(t.ts)]
    rows = pnl_rows(chosen, by=by, period=period, margin_floor=None if fees is None else fees.margin_floor)
    total = pnl_totals(rows)
    _print(rows, total, by)
    if json_out is not None:
        since_text, until_text = window.bounds()
        json_out.write_text(json.dumps({"by": by.value, "period": period.value, "from": since_text, "to": until_text,
                                        "rows": [pnl_row_dict(r) for r in rows], "total": pnl_row_dict(total)},
                                       indent=2), encoding="utf-8")
    if csv_out is not None:
        with csv_out.open("w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=list(pnl_row_dict(total)))
            writer.writeheader()
            writer.writerows(pnl_row_dict(r) for r in rows)


def _print(rows: list[PnlRow], total: PnlRow, by: PnlBy) -> None:
    table = Table(title=f"P&L by {by.value}")
    for name in (by.value, "period", "revenue", "LLM cost", "infra", "fees net", "margin", "margin %", ""):
        table.add_column(name, justify="left" if name in (by.value, "period", "") else "right")
    for r in [*rows, total]:
        pct = "" if r.margin_pct is None else f"{r.margin_pct * 100:.1f}"
        table.add_row(r.scope, r.period, *(format_usd(getattr(r, n)) for n in PNL_MONEY), pct,
                      "BELOW MARGIN" if r.flagged else "")
    console.print(table)
