"""Profit and loss per agent or tenant and period, from the wallet transfers (pure).

Per account and period (the calendar period of each transfer's ``ts``), the net of each
kind of transfer (credits minus debits, millicents) gives:

* agent: ``revenue_mc`` = service and task fees earned, less the platform's take; ``llm_cost_mc`` = LLM cost paid;
  ``infra_mc`` = infrastructure allocated; ``fees_net_mc`` = other transfers between
  wallets (knowledge and teaching fees: received minus paid; deposits are capital and not
  counted); ``margin_mc = revenue + fees_net - llm_cost - infra``;
* tenant (chargeback): ``revenue_mc`` = the fees the tenant paid; ``llm_cost_mc`` and
  ``infra_mc`` = the cost of its agents (and infra allocated to the tenant or its own
  conversations); ``margin_mc = revenue - llm_cost - infra``: what the platform kept.

``margin_pct`` is ``margin / revenue`` (None without revenue). With a margin floor, a row
is flagged when its margin is below ``floor x revenue`` (every row with a loss and no
revenue, too) [KinthAI, "Your AI Agent Needs a Wallet": agents that don't earn their keep].
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from enum import StrEnum

from comptroller.domain.budgets import Period, period_key
from comptroller.domain.wallets.accounts import AccountKind
from comptroller.domain.wallets.postings import KIND_FEE, KIND_INFRA, KIND_LLM, KIND_PLATFORM, KIND_TASK_FEE
from comptroller.domain.wallets.transfers import Transfer

__all__ = ["CAPITAL_KINDS", "PnlBy", "PnlRow", "parent_scope", "pnl_rows", "pnl_totals"]

CAPITAL_KINDS = frozenset({"deposit", "withdrawal"})
"""Transfer kinds that move capital in or out, not income: left out of the P&L."""
_REVENUE = frozenset({KIND_FEE, KIND_TASK_FEE, KIND_PLATFORM})


class PnlBy(StrEnum):
    """The rows of a P&L."""

    AGENT = "agent"
    TENANT = "tenant"


@dataclass(slots=True)
class PnlRow:
    """One row: a scope (agent or tenant scope key) in one period; money in millicents."""

    scope: str
    period: str
    revenue_mc: int = 0
    llm_cost_mc: int = 0
    infra_mc: int = 0
    fees_net_mc: int = 0
    flagged: bool = field(default=False)

    @property
    def margin_mc(self) -> int:
        """Revenue and net fees received, less LLM and infrastructure cost."""
        return self.revenue_mc + self.fees_net_mc - self.llm_cost_mc - self.infra_mc

    @property
    def margin_pct(self) -> Decimal | None:
        """Margin as a fraction of revenue (None without revenue)."""
        return None if self.revenue_mc <= 0 else Decimal(self.margin_mc) / Decimal(self.revenue_mc)


def parent_scope(scope: str) -> str:
    """The scope key one level up: everything before the last unescaped ``|`` (``ns|t|a`` -> ``ns|t``)."""
    cut, i = -1, 0
    while i < len(scope):
        if scope[i] == "\\":
            i += 2
            continue
        if scope[i] == "|":
            cut = i
        i += 1
    return scope[:cut] if cut >= 0 else ""


def _owner(account: str, by: PnlBy) -> str | None:
    """The row scope an account's transfers count toward, or None."""
    kind, _, scope = account.partition(":")
    if kind == AccountKind.AGENT:
        return scope if by is PnlBy.AGENT else parent_scope(scope)
    if by is PnlBy.TENANT and kind == AccountKind.TENANT:
        return scope
    if by is PnlBy.TENANT and kind == AccountKind.CONVERSATION:
        return parent_scope(scope) or None  # a tenant's own conversation (ns|tenant|conv)
    return None


def _add(row: PnlRow, account: str, t: Transfer, by: PnlBy) -> None:
    sign = 1 if account == t.credit_account else -1  # + received, - paid
    if t.kind in _REVENUE:  # an agent earns what it receives; a tenant's revenue row is what its wallet paid
        row.revenue_mc += sign * t.amount_mc if by is PnlBy.AGENT else -sign * t.amount_mc
    elif t.kind == KIND_LLM:
        row.llm_cost_mc -= sign * t.amount_mc
    elif t.kind == KIND_INFRA:
        row.infra_mc -= sign * t.amount_mc
    elif t.kind not in CAPITAL_KINDS and by is PnlBy.AGENT:
        row.fees_net_mc += sign * t.amount_mc


def pnl_rows(transfers: Iterable[Transfer], *, by: PnlBy, period: Period = Period.MONTH, timezone: str = "UTC",
             margin_floor: Decimal | None = None) -> list[PnlRow]:
    """The P&L rows, sorted by period then scope.

    Args:
        transfers: the wallet transfers (adjustments included).
        by: agent or tenant rows.
        period: the calendar period of a row (``total``: one row per scope).
        timezone: the IANA zone the calendar is read in.
        margin_floor: flag rows whose margin is below ``margin_floor x revenue`` (None: no flags).
    """
    rows: dict[tuple[str, str], PnlRow] = {}
    for t in transfers:
        key = period_key(period, timezone, t.ts)
        for account in (t.debit_account, t.credit_account):
            owner = _owner(account, by)
            if owner is None or (by is PnlBy.TENANT and t.kind in _REVENUE and
                                 account.startswith(f"{AccountKind.AGENT}:")):
                continue  # a tenant's revenue is what its wallet paid, counted once
            _add(rows.setdefault((key, owner), PnlRow(owner, key)), account, t, by)
    out = [rows[k] for k in sorted(rows)]
    if margin_floor is not None:
        for row in out:
            row.flagged = row.margin_mc < margin_floor * row.revenue_mc if row.revenue_mc > 0 else row.margin_mc < 0
    return out


def pnl_totals(rows: Iterable[PnlRow]) -> PnlRow:
    """The sum of rows (scope ``total``, period ``all``)."""
    total = PnlRow("total", "all")
    for r in rows:
        total.revenue_mc += r.revenue_mc
        total.llm_cost_mc += r.llm_cost_mc
        total.infra_mc += r.infra_mc
        total.fees_net_mc += r.fees_net_mc
    return total
