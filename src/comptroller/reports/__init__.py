"""Reports: one model built from usage rows, rendered as a terminal table, JSON or HTML."""

from comptroller.reports.model import Report, ReportRow, build_report, rows_from_ledger, rows_from_replay

__all__ = ["Report", "ReportRow", "build_report", "rows_from_ledger", "rows_from_replay"]
