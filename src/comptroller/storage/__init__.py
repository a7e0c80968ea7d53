"""Ledger storage backends behind :class:`comptroller.ports.LedgerStore`, chosen by URL.

* ``memory://``: in-process, the reference model for tests and quick replays;
* ``sqlite:///path/to/ledger.db`` (or a plain path): the embedded default;
* ``postgresql://user@host:5432/db`` (or ``postgres://``): many processes and hosts on one
  ledger (:mod:`comptroller.storage.postgres`; create its schema with ``comptroller db upgrade``).
"""

from __future__ import annotations

from comptroller.ports import LedgerStore
from comptroller.storage.memory import MemoryStore
from comptroller.storage.sqlite import SQLiteStore

__all__ = ["StoreURLError", "store_from_url"]


class StoreURLError(ValueError):
    """The ledger URL names no known backend."""


def store_from_url(url: str) -> LedgerStore:
    """Open the ledger store a URL names.

    Args:
        url: ``memory://``, ``sqlite:///relative.db``, ``sqlite:////abs/path.db``, a plain
            file path (taken as SQLite), or ``postgresql://user@host:port/db`` (pool options
            may ride in its query: ``?pool_max_size=32&pool_timeout_s=2``).

    Raises:
        StoreURLError: for an unknown scheme.
        SchemaVersionError: if a PostgreSQL ledger's schema is behind (run ``comptroller db upgrade``).
        LedgerUnavailableError: if a PostgreSQL ledger cannot be reached.
    """
    if url in ("memory://", "memory:"):
        return MemoryStore()
    if url.startswith("sqlite://"):
        path = url.removeprefix("sqlite://")
        path = path[1:] if path.startswith("/") else path
        return SQLiteStore(path or ":memory:")
    if "://" not in url:
        return SQLiteStore(url)
    if url.startswith(("postgresql://", "postgres://")):
        from comptroller.storage.postgres import PostgresStore  # noqa: PLC0415 (psycopg loads only when used)

        return PostgresStore(url)
    scheme = url.split("://", 1)[0]
    raise StoreURLError(
        f"unknown ledger URL scheme {scheme!r} in {url!r}; use memory://, sqlite:///path/to/ledger.db "
        "or postgresql://user@host:5432/db"
    )
