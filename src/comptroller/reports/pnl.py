"""P&L as reports show it: rows of :func:`comptroller.domain.wallets.pnl.pnl_rows` as dicts, for JSON, CSV and HTML.

One computation: the rows are the domain's (:mod:`comptroller.domain.wallets.pnl`); this module
only chooses the transfers (a settle-time range, a tenant's scopes) and writes each row with
money as integer millicents and USD strings (``revenue_mc`` / ``revenue_usd``...),
``margin_pct`` as a percent string (None without revenue) and ``flagged`` (below the margin
floor). ``comptroller pnl``, ``GET /admin/pnl`` and the replay report's P&L tables all use it.
"""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal
from typing import Any

from comptroller.domain.budgets import Period
from comptroller.domain.money import mc_to_usd
from comptroller.domain.scopes import scope_key
from comptroller.domain.wallets.pnl import PnlBy, PnlRow, pnl_rows, pnl_totals
from comptroller.domain.wallets.transfers import Transfer
from comptroller.reports.chargeback import ALL_TIME, TimeRange

__all__ = ["PNL_MONEY", "pnl_document", "pnl_row_dict", "replay_pnl"]

PNL_MONEY = ("revenue_mc", "llm_cost_mc", "infra_mc", "fees_net_mc", "margin_mc")
"""The money columns of a P&L row, millicents (each also written as ``*_usd``)."""


def pnl_row_dict(row: PnlRow) -> dict[str, Any]:
    """One row for JSON and CSV: scope, period, money in millicents and USD, margin_pct (percent string), flagged."""
    out: dict[str, Any] = {"scope": row.scope, "period": row.period}
    for name in PNL_MONEY:
        mc = getattr(row, name)
        out[name] = mc
        out[name.removesuffix("_mc") + "_usd"] = str(mc_to_usd(mc))
    out["margin_pct"] = None if row.margin_pct is None else str(round(row.margin_pct * 100, 2))
    out["flagged"] = row.flagged
    return out


def _owned(scope: str, own: str) -> bool:
    return scope == own or scope.startswith(own + "|")


def pnl_document(transfers: Iterable[Transfer], *, by: PnlBy, period: Period = Period.TOTAL,
                 window: TimeRange = ALL_TIME, margin_floor: Decimal | None = None,
                 tenant: tuple[str, str] | None = None) -> dict[str, Any]:
    """The P&L of the transfers in ``window``: ``{"by", "period", "from", "to", "rows", "total"}``.

    Args:
        transfers: the wallet transfers (``TransferStore.transfers()``).
        by: agent or tenant rows.
        period: the calendar period of a row (UTC).
        window: only transfers with ``since <= ts < until``.
        margin_floor: flag rows below it (the policy's ``fees.margin_floor``).
        tenant: ``(namespace, tenant)``: only that tenant's rows (its own scope and its agents'), for a
            tenant key; the total is then of those rows.
    """
    chosen = [t for t in transfers if window.contains(t.ts)]
    rows: list[PnlRow] = pnl_rows(chosen, by=by, period=period, margin_floor=margin_floor)
    if tenant is not None:
        own = scope_key(*tenant)
        rows = [r for r in rows if _owned(r.scope, own)]
    since, until = window.bounds()
    return {"by": str(by), "period": str(period), "from": since, "to": until,
            "rows": [pnl_row_dict(r) for r in rows], "total": pnl_row_dict(pnl_totals(rows))}


def replay_pnl(transfers: Iterable[Transfer], margin_floor: Decimal | None) -> dict[str, Any]:
    """The report's P&L section: ``{"agent": ..., "tenant": ...}``, each a :func:`pnl_document` over the whole run."""
    chosen = list(transfers)
    return {str(by): pnl_document(chosen, by=by, margin_floor=margin_floor) for by in (PnlBy.AGENT, PnlBy.TENANT)}
