"""What each page of the UI shows, computed from what the admin services return.

Pure functions over usage records, accounts, budgets and events (no I/O, no clock
read: ``now`` is passed in), so every figure on a page is testable without a browser.
Money stays integer millicents here; the templates format it.

A :class:`Viewer` is who is looking: the admin sees every tenant; a tenant key sees
only the records, accounts and events of its own tenant (DESIGN.md rule 13). A
namespace-wide account or refusal belongs to no tenant, so a tenant never sees it.
"""

from __future__ import annotations

import calendar
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

from comptroller.domain.budgets import Budget, period_bounds, period_key
from comptroller.domain.ledger import AccountView, Event, UsageRecord
from comptroller.domain.scopes import Attribution, Level

__all__ = ["GROUP_FIELDS", "BudgetRow", "Filters", "Group", "RequestRow", "Series", "Viewer", "bucket_days",
           "budget_rows", "groups", "key_of", "percentile", "request_rows", "series", "spend_between",
           "tenant_of_scope"]

GROUP_FIELDS = ("tenant", "agent", "model", "key", "conversation", "task")
_SERIES_MAX = 8
_DAILY_MAX = 92


@dataclass(frozen=True, slots=True)
class Viewer:
    """Who is looking at the UI.

    Attributes:
        key_id: the API key's id (``env-admin`` for the environment's admin key).
        admin: True for an admin key (sees every tenant, may edit).
        tenant: the key's tenant; None for an admin.
    """

    key_id: str
    admin: bool
    tenant: str | None

    def sees_scope(self, namespace: str, scope: str | None, level: str | None) -> bool:
        """True when the scope key (``ns|tenant|...``) of ``level`` is the viewer's to see."""
        if self.tenant is None:
            return True
        if scope is None:
            return False
        return tenant_of_scope(namespace, scope, level) == self.tenant

    def sees(self, attribution: Attribution) -> bool:
        """True when a call attributed so is the viewer's to see."""
        return self.tenant is None or (attribution.tenant == self.tenant and not attribution.conversation_shared)


def _split(scope: str) -> list[str]:
    """The ids of a scope key (the inverse of :func:`~comptroller.domain.scopes.scope_key`: ``\\`` escapes)."""
    parts, current, escaped = [], [], False
    for char in scope:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == "|":
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


def tenant_of_scope(namespace: str, scope: str, level: str | None) -> str | None:
    """The tenant a scope key of ``level`` belongs to.

    None for a namespace-wide scope, a shared group's conversation (``ns|group``: two parts at a
    level below tenant), another namespace, or a scope whose shape does not fit its level (fail closed).
    """
    parts = _split(scope)
    if level == Level.NAMESPACE or parts[0] != namespace:
        return None
    wanted = 2 if level == Level.TENANT else 3
    if len(parts) < wanted or (level == Level.TENANT and len(parts) != wanted):
        return None
    return parts[1]


@dataclass(frozen=True, slots=True)
class Filters:
    """The overview's and the request log's filters (None: any).

    Attributes:
        start, end: the first and last UTC day shown (inclusive).
        group_by: one of :data:`GROUP_FIELDS`.
        key: the API key's public id the calls came with (``-``: calls without a key, such as replays).
    """

    start: date
    end: date
    tenant: str | None = None
    agent: str | None = None
    model: str | None = None
    group_by: str = "agent"
    key: str | None = None

    def keeps(self, record: UsageRecord) -> bool:
        """True when the record falls in the range and matches every set filter."""
        day = record.resolved_at.date()
        a = record.attribution
        return (self.start <= day <= self.end and self.tenant in (None, a.tenant) and self.agent in (None, a.agent)
                and self.model in (None, record.model) and self.key in (None, a.key_id or "-"))


def key_of(record: UsageRecord, by: str) -> str:
    """The record's value of a group field (``-`` when unset; ``key`` is the API key's public id)."""
    if by == "model":
        return record.model
    if by == "key":
        return record.attribution.key_id or "-"
    value: str | None = getattr(record.attribution, by)
    return value or "-"


@dataclass(slots=True)
class Group:
    """Settled calls of one group: tokens by bucket and cost in millicents."""

    key: str
    calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cost_mc: int = 0


def groups(records: Iterable[UsageRecord], key: Callable[[UsageRecord], str]) -> list[Group]:
    """Totals per group, most expensive first (ties by key)."""
    out: dict[str, Group] = {}
    for r in records:
        g = out.setdefault(key(r), Group(key(r)))
        g.calls += 1
        g.input_tokens += r.usage.input_tokens
        g.output_tokens += r.usage.output_tokens
        g.cache_read_tokens += r.usage.cache_read_tokens
        g.cost_mc += r.cost_mc
    return sorted(out.values(), key=lambda g: (-g.cost_mc, g.key))


def percentile(sorted_values: Sequence[int], pct: int) -> int:
    """Nearest-rank percentile of sorted integers (0 for none), as :mod:`comptroller.reports.model` computes it."""
    if not sorted_values:
        return 0
    return sorted_values[max(1, math.ceil(pct / 100 * len(sorted_values))) - 1]


def spend_between(records: Iterable[UsageRecord], start: datetime, end: datetime) -> int:
    """Settled millicents of the records resolved in ``[start, end)``."""
    return sum(r.cost_mc for r in records if start <= r.resolved_at < end)


@dataclass(frozen=True, slots=True)
class Series:
    """Spend per group for a chart: ``days`` (each point's first day) as UTC midnight epoch seconds, one list
    of millicents per group."""

    days: list[int]
    names: list[str]
    values: list[list[int]] = field(default_factory=list)


def bucket_days(filters: Filters) -> int:
    """Days per point of the spend chart: 1 up to 92 days, then 7 (a week per point, from the range's start)."""
    return 1 if (filters.end - filters.start).days < _DAILY_MAX else 7


def series(records: Sequence[UsageRecord], filters: Filters) -> Series:
    """Spend per day (per week over long ranges) of the biggest groups (up to 8; the rest summed as ``other``)."""
    ranked = [g.key for g in groups(records, lambda r: key_of(r, filters.group_by))]
    shown = ranked[:_SERIES_MAX]
    step = bucket_days(filters)
    n_points = (filters.end - filters.start).days // step + 1
    names = shown + (["other"] if len(ranked) > _SERIES_MAX else [])
    values = [[0] * n_points for _ in names]
    index = {name: i for i, name in enumerate(shown)}
    for r in records:
        row = index.get(key_of(r, filters.group_by), len(shown))
        values[row][(r.resolved_at.date() - filters.start).days // step] += r.cost_mc
    days = [calendar.timegm((filters.start + timedelta(days=i * step)).timetuple()) for i in range(n_points)]
    return Series(days, names, values)


@dataclass(frozen=True, slots=True)
class BudgetRow:
    """One budget account as the Budgets page shows it (money in millicents).

    Attributes:
        next_reset: when the period ends (None: a ``total`` budget never resets, or the period is over).
        current: the account is for the period ``now`` falls in.
        utilisation: (settled + reserved) / limit (0 for a zero limit with nothing spent).
    """

    budget: Budget
    scope: str
    period_key: str
    settled_mc: int
    reserved_mc: int
    remaining_mc: int
    next_reset: datetime | None
    current: bool
    utilisation: float


def budget_rows(accounts: Iterable[AccountView], budgets: Iterable[Budget], *, viewer: Viewer, namespace: str,
                now: datetime) -> tuple[list[BudgetRow], list[Budget]]:
    """The accounts the viewer may see (current periods first), and the visible budgets with no account yet."""
    rows = []
    used = set()
    for a in accounts:
        if not viewer.sees_scope(namespace, a.scope, a.budget.level):
            continue
        used.add(a.budget.id)
        current = a.period_key == period_key(a.budget.period, a.budget.timezone, now)
        bounds = period_bounds(a.budget.period, a.budget.timezone, now) if current else None
        spent = a.settled_mc + a.reserved_mc
        rows.append(BudgetRow(a.budget, a.scope, a.period_key, a.settled_mc, a.reserved_mc, a.remaining_mc,
                              None if bounds is None else bounds[1], current,
                              spent / a.budget.limit_mc if a.budget.limit_mc else float(spent > 0)))
    rows.sort(key=lambda r: (not r.current, -r.utilisation, r.scope))  # the fullest current budgets first
    idle = [b for b in budgets if b.id not in used and (viewer.tenant is None or (
        b.scope != "*" and viewer.sees_scope(namespace, b.scope, b.level)))]
    return rows, idle


@dataclass(frozen=True, slots=True)
class RequestRow:
    """One call in the request log: settled (with its cost) or refused (with its code, level and reason).

    ``duration_ms`` is reserve to settle (the call's latency through the ledger; None for a refusal).
    ``key`` is the API key's public id (empty: no key, such as a replayed call or a refusal whose event
    names none).
    """

    ts: datetime
    tenant: str
    agent: str
    conversation: str
    task: str
    model: str
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int
    cost_mc: int
    ceiling_mc: int
    outcome: str
    level: str = ""
    reason: str = ""
    duration_ms: int | None = None
    key: str = ""


def request_rows(records: Iterable[UsageRecord], refusals: Iterable[Event], *, viewer: Viewer, namespace: str,
                 search: dict[str, str], limit: int = 200) -> list[RequestRow]:
    """The newest calls (at most ``limit``) the viewer may see that match every search field (substring)."""
    rows = [RequestRow(r.resolved_at, r.attribution.tenant, r.attribution.agent, r.attribution.conversation or "",
                       r.attribution.task or "", r.model, r.usage.input_tokens, r.usage.output_tokens,
                       r.usage.cache_read_tokens, r.cost_mc, r.ceiling_mc, r.outcome,
                       duration_ms=round((r.resolved_at - r.reserved_at).total_seconds() * 1000),
                       key=r.attribution.key_id or "")
            for r in records if viewer.sees(r.attribution)]
    for e in refusals:
        if not viewer.sees_scope(namespace, e.scope, e.level):
            continue
        d = e.detail
        tenant = tenant_of_scope(namespace, e.scope or "", e.level) or "-"
        rows.append(RequestRow(e.ts, tenant, str(d.get("agent") or ""),
                               str(d.get("conversation") or ""), str(d.get("task") or ""), str(d.get("model") or ""),
                               0, 0, 0, 0, int(d.get("requested_mc") or 0), e.code, e.level or "",
                               str(d.get("message") or ""), key=str(d.get("key_id") or "")))
    wanted = {k: v.strip().lower() for k, v in search.items() if v and v.strip()}
    kept = [r for r in rows if all(v in str(getattr(r, k)).lower() for k, v in wanted.items())]
    kept.sort(key=lambda r: r.ts, reverse=True)
    return kept[:limit]
