"""Quotas and rate limits set at run time (``comptroller quota set``), kept in the ledger per namespace.

The policy's ``[[quotas]]`` and ``[[rate_limits]]`` are fixed when an engine starts; an
operator also changes them while gateways run. Those live in one state row per namespace
(kind ``limits``, key ``book:`` and the namespace): a :class:`LimitBook`. An entry in the book replaces the
policy's entry for the same unit, level, scope (and period, for quotas).

Exact under change: every admission reads the book's row in its own transaction and
compares its version with the book the engine priced the call's rows from; when they differ
(an operator just changed a limit, on any process), the guard raises :class:`LimitsChanged`,
the transaction rolls back, and the engine reads the book again and admits once more. So no
call is admitted under a limit that was already replaced. A settle uses the engine's copy
as it is: a quota added after a call's admit counts the call's actual use, and a removed
one is no longer read (its row's holds are never checked again). Pure: no I/O.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, replace

from comptroller.domain.budgets import Period
from comptroller.domain.defenses.verdict import JsonScalar
from comptroller.domain.limit_rows import row_key
from comptroller.domain.quotas import Quota, QuotaUnit
from comptroller.domain.rate_limits import LimitLevel, RateLimit, RateUnit
from comptroller.domain.scopes import Level
from comptroller.domain.state import StateKey

__all__ = ["LIMITS", "LimitBook", "LimitsChanged", "book_key", "merged"]

LIMITS = "book"
"""The key prefix of limit books (kind :data:`~comptroller.domain.limit_rows.KIND`)."""


class LimitsChanged(Exception):  # noqa: N818  (a signal to the engine, not an error anyone sees)
    """Raised inside a reservation whose limit book changed since the engine read it: read it again, retry.

    Attributes:
        namespace: the namespace whose book changed.
    """

    def __init__(self, namespace: str) -> None:
        super().__init__(f"the limits of namespace {namespace!r} changed: read them again")
        self.namespace = namespace


def book_key(namespace: str) -> StateKey:
    """The book row of a namespace."""
    return row_key(LIMITS, namespace)


def _quota_id(q: Quota) -> tuple[str, str, str, str]:
    return (str(q.unit), str(q.level), q.scope, str(q.period))


def _rate_id(r: RateLimit) -> tuple[str, str, str]:
    return (str(r.unit), str(r.level), r.scope)


@dataclass(frozen=True, slots=True)
class LimitBook:
    """A namespace's run-time quotas and rate limits, and the row's version (0: no row)."""

    quotas: tuple[Quota, ...] = ()
    rate_limits: tuple[RateLimit, ...] = ()
    version: int = 0

    def to_record(self) -> dict[str, JsonScalar]:
        """A flat JSON record (the entries as JSON text)."""
        return {"quotas": json.dumps([[str(q.unit), str(q.level), q.scope, q.limit, str(q.period), q.timezone]
                                      for q in self.quotas]),
                "rate_limits": json.dumps([[str(r.unit), str(r.level), r.scope, r.limit] for r in self.rate_limits])}

    @classmethod
    def from_record(cls, record: Mapping[str, JsonScalar], version: int) -> LimitBook:
        """Read :meth:`to_record`. Raises ValueError on a malformed record."""
        quotas, rates = record.get("quotas"), record.get("rate_limits")
        if not isinstance(quotas, str) or not isinstance(rates, str):
            raise ValueError(f"not a limit book record: {dict(record)!r:.200}")
        try:
            return cls(tuple(Quota(QuotaUnit(u), Level(lv), s, int(n), Period(p), str(tz))
                             for u, lv, s, n, p, tz in json.loads(quotas)),
                       tuple(RateLimit(RateUnit(u), LimitLevel(lv), s, int(n)) for u, lv, s, n in json.loads(rates)),
                       version)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"not a limit book record ({exc}): {dict(record)!r:.200}") from None

    def with_quota(self, quota: Quota) -> LimitBook:
        """This book with ``quota`` set (replacing one of the same unit, level, scope and period)."""
        kept = tuple(q for q in self.quotas if _quota_id(q) != _quota_id(quota))
        return replace(self, quotas=(*kept, quota), version=self.version + 1)

    def without_quota(self, quota: Quota) -> LimitBook | None:
        """This book without the quota of ``quota``'s unit, level, scope and period; None if it has none."""
        kept = tuple(q for q in self.quotas if _quota_id(q) != _quota_id(quota))
        return None if kept == self.quotas else replace(self, quotas=kept, version=self.version + 1)

    def with_rate_limit(self, limit: RateLimit) -> LimitBook:
        """This book with ``limit`` set (replacing one of the same unit, level and scope)."""
        kept = tuple(r for r in self.rate_limits if _rate_id(r) != _rate_id(limit))
        return replace(self, rate_limits=(*kept, limit), version=self.version + 1)

    def without_rate_limit(self, limit: RateLimit) -> LimitBook | None:
        """This book without the rate limit of ``limit``'s unit, level and scope; None if it has none."""
        kept = tuple(r for r in self.rate_limits if _rate_id(r) != _rate_id(limit))
        return None if kept == self.rate_limits else replace(self, rate_limits=kept, version=self.version + 1)


def merged(quotas: tuple[Quota, ...], rate_limits: tuple[RateLimit, ...],
           book: LimitBook) -> tuple[tuple[Quota, ...], tuple[RateLimit, ...]]:
    """The policy's limits with the book's entries replacing theirs (same unit, level, scope, period)."""
    booked_q, booked_r = {_quota_id(q) for q in book.quotas}, {_rate_id(r) for r in book.rate_limits}
    return ((*(q for q in quotas if _quota_id(q) not in booked_q), *book.quotas),
            (*(r for r in rate_limits if _rate_id(r) not in booked_r), *book.rate_limits))
