"""Transfer store backends by name, for the wallet tests (each a factory taking a directory)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from comptroller.storage.transfers import MemoryTransferStore, TransferStore
from comptroller.storage.transfers_sqlite import SQLiteTransferStore
from postgres.pg_kit import PG_URL, new_schema


def _postgres(directory: Path) -> TransferStore:
    del directory
    from comptroller.storage.transfers_postgres import PostgresTransferStore  # noqa: PLC0415

    return PostgresTransferStore(PG_URL, schema=new_schema())


TRANSFER_BACKENDS: dict[str, Callable[[Path], TransferStore]] = {
    "memory": lambda directory: MemoryTransferStore(),
    "sqlite": lambda directory: SQLiteTransferStore(directory / "ledger.db"),
    "postgres": _postgres,  # a fresh schema per store; skips when PostgreSQL is unreachable
}
