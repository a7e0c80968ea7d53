"""Errors that edges (the gateway, the SDK, the CLI) must catch, beside the ports.

The tree::

    RuntimeError
    └── LedgerUnavailableError   the ledger cannot answer now (fail closed: HTTP 503)

Adapters raise these; edges catch them without importing a concrete adapter
(``comptroller.storage.postgres`` and the like), so an edge never depends on a
backend it may not use.
"""

from __future__ import annotations

__all__ = ["LedgerUnavailableError"]


class LedgerUnavailableError(RuntimeError):
    """The ledger cannot answer now: refuse the call (HTTP 503), never let it through unmetered.

    Raised by every ledger backend that can become unreachable (PostgreSQL: connection
    refused or lost, pool exhausted, a lock held too long; SQLite: the file locked or
    unwritable).

    Attributes:
        outcome_unknown: True when the failure came after ``COMMIT`` was sent, so the
            operation may have been applied: retry it with the same idempotency key or
            reservation id (both are idempotent).
    """

    def __init__(self, message: str, *, outcome_unknown: bool = False) -> None:
        super().__init__(message)
        self.outcome_unknown = outcome_unknown
