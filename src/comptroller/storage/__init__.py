"""Ledger storage backends behind :class:`comptroller.ports.LedgerStore`, chosen by URL.

* ``memory://``: in-process, the reference model for tests and quick replays;
* ``sqlite:///path/to/ledger.db`` (or a plain path): the embedded default.
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
        url: ``memory://``, ``sqlite:///relative.db``, ``sqlite:////abs/path.db``, or
            a plain file path (taken as SQLite).

    Raises:
        StoreURLError: for an unknown scheme.
    """
    if url in ("memory://", "memory:"):
        return MemoryStore()
    if url.startswith("sqlite://"):
        path = url.removeprefix("sqlite://")
        path = path[1:] if path.startswith("/") else path
        return SQLiteStore(path or ":memory:")
    if "://" not in url:
        return SQLiteStore(url)
    scheme = url.split("://", 1)[0]
    raise StoreURLError(
        f"unknown ledger URL scheme {scheme!r} in {url!r}; use memory:// or sqlite:///path/to/ledger.db"
    )
