"""Which transfer store a ledger URL names: the one factory, so ``transfers`` never imports a backend.

The wallets' double-entry transfers live beside the ledger: in the process for
``memory://``, in the ledger's file for ``sqlite:///PATH``, in the ledger's database for
``postgresql://`` (psycopg is imported only then).
"""

from __future__ import annotations

from comptroller.storage import ledger_target
from comptroller.storage.transfers import MemoryTransferStore, TransferStore

__all__ = ["transfers_from_url"]


def transfers_from_url(url: str) -> TransferStore:
    """The transfer store beside the ledger a URL names (see :func:`comptroller.storage.store_from_url`).

    Raises:
        StoreURLError: for an unknown scheme.
        SchemaVersionError: if a PostgreSQL ledger's schema is behind (run ``comptroller db upgrade``).
        LedgerUnavailableError: if a PostgreSQL ledger cannot be reached.
    """
    backend, target = ledger_target(url)
    if backend == "memory":
        return MemoryTransferStore()
    if backend == "sqlite":
        from comptroller.storage.transfers_sqlite import SQLiteTransferStore  # noqa: PLC0415 (sqlite3 tables made only when used)

        return SQLiteTransferStore(target)
    from comptroller.storage.transfers_postgres import PostgresTransferStore  # noqa: PLC0415 (psycopg when used)

    return PostgresTransferStore(target)
