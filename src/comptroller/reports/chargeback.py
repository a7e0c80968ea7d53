"""Chargeback: settled spend, calls and tokens per tenant, agent, API key, conversation, task or model.

The figures finance bills from, read from a ledger's usage log (one row per settled call;
:class:`~comptroller.domain.ledger.UsageRecord`), over a time range:

* A call belongs to the range by its ``resolved_at`` (when it was settled: the same instant
  the wallets' transfers carry, so ``comptroller pnl --from/--to`` covers the same calls).
  ``since`` is inclusive, ``until`` exclusive, both UTC (:class:`TimeRange`); a date means its
  00:00 UTC.
* Agents, API keys, conversations and tasks are a tenant's own (``ns|tenant|conversation``:
  two tenants naming the same conversation have two), so their rows are per namespace and
  tenant; model rows span every tenant the caller may see. Calls without an API key
  (in-process SDK calls, replays) are the key ``-``.
* Money is integer millicents (exact sums); ``cost_usd`` is the same amount as a decimal
  string. ``share_pct`` is the row's part of the total cost, rounded half-even to 0.01.

:data:`COLUMNS` is the stable column order of the CSV and of each JSON row.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import ROUND_HALF_EVEN, Decimal
from enum import StrEnum
from typing import Any

from comptroller.domain.ledger import UsageRecord
from comptroller.domain.money import mc_to_usd

__all__ = ["ALL_TIME", "COLUMNS", "NO_KEY", "ChargebackBy", "ChargebackRow", "TimeRange", "chargeback_csv",
           "chargeback_json", "chargeback_rows", "parse_instant", "row_dict"]

NO_KEY = "-"
"""The key of calls made without an API key (in-process SDK calls, replayed traffic)."""

COLUMNS = ("by", "namespace", "tenant", "group", "calls", "input_tokens", "output_tokens", "cache_read_tokens",
           "cache_write_tokens", "cost_mc", "cost_usd", "share_pct", "from", "to")
"""The export columns, in order: ``group`` is the value of ``by`` (a tenant, agent, key id...);
``from`` / ``to`` are the range (ISO-8601 UTC, empty when open)."""


class ChargebackBy(StrEnum):
    """What the rows of a chargeback are."""

    TENANT = "tenant"
    AGENT = "agent"
    KEY = "key"
    CONVERSATION = "conversation"
    TASK = "task"
    MODEL = "model"


def parse_instant(text: str | None, option: str) -> datetime | None:
    """An aware UTC instant from an ISO date or date-time (a naive one is UTC; a date is its 00:00).

    Args:
        text: ``2026-03-01``, ``2026-03-01T12:00``, ``2026-03-01T12:00Z`` or with an offset; None: open.
        option: the option's name, for the error message (``--from``).

    Raises:
        ValueError: naming the option and the accepted forms.
    """
    if text is None:
        return None
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{option} must be an ISO date or time such as 2026-03-01 or 2026-03-01T12:00Z, "
                         f"got {text!r}") from None
    return at.astimezone(UTC) if at.tzinfo is not None else at.replace(tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class TimeRange:
    """``[since, until)`` in UTC; None on either side: open.

    Raises:
        ValueError: when ``until`` is not after ``since`` (the range would hold nothing).
    """

    since: datetime | None = None
    until: datetime | None = None

    def __post_init__(self) -> None:
        if self.since is not None and self.until is not None and self.until <= self.since:
            raise ValueError(f"--to ({self.until.isoformat()}) must be after --from ({self.since.isoformat()}): "
                             "--from is inclusive, --to exclusive")

    @classmethod
    def parse(cls, since: str | None, until: str | None) -> TimeRange:
        """A range from ``--from`` / ``--to`` texts (see :func:`parse_instant`).

        Raises:
            ValueError: on a malformed instant or an empty range.
        """
        return cls(parse_instant(since, "--from"), parse_instant(until, "--to"))

    def contains(self, ts: datetime) -> bool:
        """True when ``since <= ts < until``."""
        return (self.since is None or ts >= self.since) and (self.until is None or ts < self.until)

    def bounds(self) -> tuple[str, str]:
        """``(from, to)`` as ISO-8601 UTC strings, empty when open."""
        return ("" if self.since is None else self.since.isoformat(),
                "" if self.until is None else self.until.isoformat())

    def describe(self, basis: str = "settle time") -> str:
        """The range for people: ``2026-03-01T00:00:00+00:00 (inclusive) to ... (exclusive), UTC, by <basis>``."""
        since, until = self.bounds()
        return (f"{f'{since} (inclusive)' if since else 'the first call'} to "
                f"{f'{until} (exclusive)' if until else 'the last call'}, UTC, by {basis}")


ALL_TIME = TimeRange()
"""The open range: every call."""


@dataclass(slots=True)
class ChargebackRow:
    """One group's settled calls, tokens per bucket and cost (millicents)."""

    namespace: str
    tenant: str
    group: str
    calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    cost_mc: int = 0


def _key(by: ChargebackBy) -> Callable[[UsageRecord], tuple[str, str, str]]:
    """(namespace, tenant, group) of a record; model rows are not a tenant's."""
    if by is ChargebackBy.MODEL:
        return lambda r: ("", "", r.model)
    if by is ChargebackBy.TENANT:
        return lambda r: (r.attribution.namespace, r.attribution.tenant, r.attribution.tenant)
    if by is ChargebackBy.KEY:
        return lambda r: (r.attribution.namespace, r.attribution.tenant, r.attribution.key_id or NO_KEY)
    name = str(by)
    return lambda r: (r.attribution.namespace, r.attribution.tenant, getattr(r.attribution, name) or "-")


def chargeback_rows(records: Iterable[UsageRecord], by: ChargebackBy, window: TimeRange = ALL_TIME, *,
                    tenant: str | None = None) -> list[ChargebackRow]:
    """Group the usage log's records in ``window`` (and of ``tenant``, if given), most expensive first.

    Args:
        records: the usage log (``LedgerStore.usage_records()``).
        by: what a row is.
        window: the settle-time range.
        tenant: only this tenant's calls (a tenant key's view); None: every tenant.
    """
    key = _key(by)
    rows: dict[tuple[str, str, str], ChargebackRow] = {}
    for r in records:
        if not window.contains(r.resolved_at) or (tenant is not None and r.attribution.tenant != tenant):
            continue
        k = key(r)
        row = rows.get(k)
        if row is None:
            row = rows[k] = ChargebackRow(*k)
        row.calls += 1
        row.input_tokens += r.usage.input_tokens
        row.output_tokens += r.usage.output_tokens
        row.cache_read_tokens += r.usage.cache_read_tokens
        row.cache_write_tokens += r.usage.cache_write_tokens
        row.cost_mc += r.cost_mc
    return sorted(rows.values(), key=lambda g: (-g.cost_mc, g.namespace, g.tenant, g.group))


def _share(part: int, whole: int) -> str:
    if not whole:
        return ""
    return str((Decimal(100 * part) / Decimal(whole)).quantize(Decimal("0.01"), rounding=ROUND_HALF_EVEN))


def row_dict(row: ChargebackRow, by: ChargebackBy, window: TimeRange, total_mc: int) -> dict[str, Any]:
    """One row with every column of :data:`COLUMNS` (numbers as numbers, money also as a USD string)."""
    since, until = window.bounds()
    return {"by": str(by), "namespace": row.namespace, "tenant": row.tenant, "group": row.group, "calls": row.calls,
            "input_tokens": row.input_tokens, "output_tokens": row.output_tokens,
            "cache_read_tokens": row.cache_read_tokens, "cache_write_tokens": row.cache_write_tokens,
            "cost_mc": row.cost_mc, "cost_usd": str(mc_to_usd(row.cost_mc)), "share_pct": _share(row.cost_mc, total_mc),
            "from": since, "to": until}


def chargeback_json(rows: Sequence[ChargebackRow], by: ChargebackBy, window: TimeRange) -> dict[str, Any]:
    """The JSON export: ``{"by", "from", "to", "range", "columns", "rows": [...], "total": {...}}``."""
    total = ChargebackRow("", "", "total")
    for r in rows:
        total.calls += r.calls
        total.input_tokens += r.input_tokens
        total.output_tokens += r.output_tokens
        total.cache_read_tokens += r.cache_read_tokens
        total.cache_write_tokens += r.cache_write_tokens
        total.cost_mc += r.cost_mc
    since, until = window.bounds()
    return {"by": str(by), "from": since, "to": until, "range": window.describe(), "columns": list(COLUMNS),
            "rows": [row_dict(r, by, window, total.cost_mc) for r in rows],
            "total": row_dict(total, by, window, total.cost_mc)}


def chargeback_csv(rows: Sequence[ChargebackRow], by: ChargebackBy, window: TimeRange) -> str:
    """The CSV export: a header of :data:`COLUMNS`, then one line per row (no total line)."""
    total_mc = sum(r.cost_mc for r in rows)
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(COLUMNS), lineterminator="\n")
    writer.writeheader()
    writer.writerows(row_dict(r, by, window, total_mc) for r in rows)
    return out.getvalue()
