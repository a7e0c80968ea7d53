"""Which key store a ledger URL names: the one factory, so ``keys`` never imports a backend.

``memory://`` keeps keys in the process, ``sqlite:///PATH`` in the ledger's file, and
``postgresql://`` in the ledger's database (:class:`comptroller.storage.postgres.PostgresKeyStore`,
loaded only when used, so psycopg is imported only for PostgreSQL ledgers).
"""

from __future__ import annotations

from comptroller.storage import ledger_target
from comptroller.storage.keys import KeyStore, MemoryKeyStore, SQLiteKeyStore

__all__ = ["keys_from_url"]


def keys_from_url(url: str) -> KeyStore:
    """The key store beside the ledger a URL names (see :func:`comptroller.storage.store_from_url`).

    Raises:
        StoreURLError: for an unknown scheme.
        LedgerUnavailableError: if a PostgreSQL ledger cannot be reached.
    """
    backend, target = ledger_target(url)
    if backend == "memory":
        return MemoryKeyStore()
    if backend == "sqlite":
        return SQLiteKeyStore(target)
    from comptroller.storage.postgres import PostgresKeyStore  # noqa: PLC0415 (psycopg loads only when used)

    return PostgresKeyStore(target)
