"""The report of a ledger over a time range: what ``comptroller report`` and ``GET /admin/report`` show.

A call is in the range by its settle time (``resolved_at``), a refusal or a defense event by
its own time; ``since`` inclusive, ``until`` exclusive, UTC (:class:`~.chargeback.TimeRange`).
"""

from __future__ import annotations

from comptroller.ports import LedgerStore
from comptroller.reports.chargeback import ALL_TIME, TimeRange
from comptroller.reports.model import Report, build_report, rows_from_ledger

__all__ = ["ledger_report"]


def ledger_report(store: LedgerStore, window: TimeRange = ALL_TIME) -> Report:
    """Build the report from the store's usage log, events and budgets, keeping what happened in ``window``.

    Raises:
        LedgerUnavailableError: if the store cannot answer.
    """
    events = [e for e in store.events() if window.contains(e.ts)]
    rows = [r for r in rows_from_ledger(store.usage_records(), (e for e in events if e.kind == "refusal"))
            if window.contains(r.ts)]
    report = build_report(rows, budgets=store.budgets(), events=events)
    since, until = window.bounds()
    report.time_range = {"from": since, "to": until}
    return report
