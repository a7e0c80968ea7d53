"""Ledger storage backends behind :class:`comptroller.ports.LedgerStore`, chosen by URL.

* ``memory://``: in-process, the reference model for tests and quick replays;
* ``sqlite:///path/to/ledger.db`` (or a plain path): the embedded default;
* ``postgresql://user@host:5432/db`` (or ``postgres://``): many processes and hosts on one
  ledger (:mod:`comptroller.storage.postgres`; create its schema with ``comptroller db upgrade``).
"""

from __future__ import annotations

from typing import Literal

from comptroller.ports import LedgerStore
from comptroller.storage.memory import MemoryStore
from comptroller.storage.sqlite import SQLiteStore

__all__ = ["Backend", "StoreURLError", "ledger_target", "store_from_url"]


class StoreURLError(ValueError):
    """The ledger URL names no known backend."""


Backend = Literal["memory", "sqlite", "postgresql"]


def ledger_target(url: str) -> tuple[Backend, str]:
    """Which backend a ledger URL names, and what to open: ``(backend, SQLite path or libpq URL)``.

    ``memory://``; ``sqlite:///relative.db``, ``sqlite:////abs/path.db`` or a plain file path;
    ``postgresql://user@host:port/db`` (or ``postgres://``), whose query may carry pool options.

    Raises:
        StoreURLError: for an unknown scheme.
    """
    if url in ("memory://", "memory:"):
        return "memory", ""
    if url.startswith("sqlite://"):
        path = url.removeprefix("sqlite://")
        return "sqlite", (path[1:] if path.startswith("/") else path) or ":memory:"
    if "://" not in url:
        return "sqlite", url
    if url.startswith(("postgresql://", "postgres://")):
        return "postgresql", url
    scheme = url.split("://", 1)[0]
    raise StoreURLError(
        f"unknown ledger URL scheme {scheme!r} in {url!r}; use memory://, sqlite:///path/to/ledger.db "
        "or postgresql://user@host:5432/db"
    )


def store_from_url(url: str) -> LedgerStore:
    """Open the ledger store a URL names (see :func:`ledger_target`; PostgreSQL pool options may ride
    in the query: ``?pool_max_size=32&pool_timeout_s=2``).

    Raises:
        StoreURLError: for an unknown scheme.
        SchemaVersionError: if a PostgreSQL ledger's schema is behind (run ``comptroller db upgrade``).
        LedgerUnavailableError: if a PostgreSQL ledger cannot be reached.
    """
    backend, target = ledger_target(url)
    if backend == "memory":
        return MemoryStore()
    if backend == "sqlite":
        return SQLiteStore(target)
    from comptroller.storage.postgres import PostgresStore  # noqa: PLC0415 (psycopg loads only when used)

    return PostgresStore(target)
