"""Wallet transfers in the ledger's SQLite file: tables ``wallet_accounts`` and ``wallet_transfers``.

A batch is one ``BEGIN IMMEDIATE`` transaction (SQLite's write lock is taken before the
reads), so the account totals a decision reads cannot change before its writes, in any
thread or process (SQLite docs, "Transaction"). The tables are created by this store on
the ledger's own file (``CREATE TABLE IF NOT EXISTS``), so they need no upgrade step.
Times are UTC epoch seconds (REAL); money INTEGER millicents.

Floor rows (:mod:`comptroller.domain.wallets.floors`) live in the ledger's ``states`` table of
the same file (created by whichever of the two opens the file first): a batch reads and writes
the rows of its agent accounts inside its ``BEGIN IMMEDIATE``, so a row and the transfers that
move it commit together, serialised with every reservation and settle of the ledger.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from comptroller.domain.wallets.floors import FloorState, floor_key
from comptroller.domain.wallets.transfers import AccountBalance, Transfer, TransferCode, TransferResult
from comptroller.errors import LedgerUnavailableError
from comptroller.storage.transfers import apply_batch, floor_row, has_floor_row

__all__ = ["SQLiteTransferStore"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS wallet_accounts (
    id TEXT PRIMARY KEY, debits_mc INTEGER NOT NULL DEFAULT 0 CHECK (debits_mc >= 0),
    credits_mc INTEGER NOT NULL DEFAULT 0 CHECK (credits_mc >= 0), floor_mc INTEGER);
CREATE TABLE IF NOT EXISTS wallet_transfers (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE,
    debit_account TEXT NOT NULL, credit_account TEXT NOT NULL,
    amount_mc INTEGER NOT NULL CHECK (amount_mc > 0), kind TEXT NOT NULL, ts REAL NOT NULL, ref TEXT NOT NULL,
    CHECK (debit_account <> credit_account));
CREATE INDEX IF NOT EXISTS wallet_transfers_debit ON wallet_transfers (debit_account);
CREATE INDEX IF NOT EXISTS wallet_transfers_credit ON wallet_transfers (credit_account);
CREATE TABLE IF NOT EXISTS states (
    kind TEXT NOT NULL, key TEXT NOT NULL, version INTEGER NOT NULL CHECK (version >= 1),
    record TEXT NOT NULL, PRIMARY KEY (kind, key));
"""
# ``states`` exactly as the ledger defines it (comptroller.storage.sqlite, schema 2), for a file whose
# ledger is opened after its wallets: the floor rows live there.
_COLS = "id, debit_account, credit_account, amount_mc, kind, ts, ref"


def _transfer(row: Sequence[object]) -> Transfer:
    tid, debit, credit, amount, kind, ts, ref = row
    return Transfer(id=str(tid), debit_account=str(debit), credit_account=str(credit), amount_mc=int(str(amount)),
                    kind=str(kind), ts=datetime.fromtimestamp(float(str(ts)), UTC), ref=str(ref))


def _account(row: Sequence[object]) -> AccountBalance:
    account, debits, credits, floor = row
    return AccountBalance(str(account), int(str(debits)), int(str(credits)),
                          None if floor is None else int(str(floor)))


class SQLiteTransferStore:
    """A :class:`~comptroller.storage.transfers.TransferStore` in a SQLite file (the ledger's, by default).

    Args:
        path: the SQLite file (``:memory:`` for a private in-process database).
        busy_timeout_s: how long a write waits for another writer's lock, seconds.

    Raises:
        sqlite3.OperationalError: if the file cannot be opened.
    """

    def __init__(self, path: str | Path, *, busy_timeout_s: float = 30.0) -> None:
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                                     timeout=busy_timeout_s)
        self._lock = threading.Lock()
        with self._lock:
            self._conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
            if self.path != ":memory:":
                self._conn.execute("PRAGMA journal_mode = WAL")
                self._conn.execute("PRAGMA synchronous = NORMAL")  # as the ledger: WAL stays consistent on a crash
            self._conn.executescript(_SCHEMA)

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Cursor]:
        with self._lock:
            cur = self._conn.cursor()
            try:
                cur.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                raise LedgerUnavailableError(f"wallet ledger {self.path} unavailable: {exc}; retry later") from exc
            try:
                yield cur
            except BaseException:
                cur.execute("ROLLBACK")
                raise
            cur.execute("COMMIT")

    def create_transfers(self, transfers: Sequence[Transfer]) -> list[TransferResult]:
        """Decide and apply a batch in one transaction (see :class:`~comptroller.storage.transfers.TransferStore`)."""
        ids = sorted({t.id for t in transfers})
        names = sorted({a for t in transfers for a in (t.debit_account, t.credit_account)})
        with self._write() as cur:
            existing = {t.id: t for t in map(_transfer, _select_in(cur, f"SELECT {_COLS} FROM wallet_transfers",
                                                                   "id", ids))}
            accounts = {a.account: a for a in map(_account, _select_in(
                cur, "SELECT id, debits_mc, credits_mc, floor_mc FROM wallet_accounts", "id", names))}
            before = _floor_rows(cur, [a for a in names if has_floor_row(a)])
            rows = dict(before)
            results = apply_batch(transfers, existing, accounts, rows)
            _write_rows(cur, [row for a, row in rows.items() if row is not before[a]])
            applied = [r.transfer for r in results if r.code is TransferCode.OK]
            cur.executemany(f"INSERT INTO wallet_transfers ({_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
                            [(t.id, t.debit_account, t.credit_account, t.amount_mc, t.kind, t.ts.timestamp(), t.ref)
                             for t in applied])
            touched = {a for t in applied for a in (t.debit_account, t.credit_account)}
            cur.executemany("INSERT INTO wallet_accounts (id, debits_mc, credits_mc) VALUES (?, ?, ?) ON CONFLICT (id) "
                            "DO UPDATE SET debits_mc = excluded.debits_mc, credits_mc = excluded.credits_mc",
                            [(a, accounts[a].debits_mc, accounts[a].credits_mc) for a in sorted(touched)])
        return results

    def transfer(self, transfer_id: str) -> Transfer | None:
        """One stored transfer by id, or None."""
        with self._lock:
            row = self._conn.execute(f"SELECT {_COLS} FROM wallet_transfers WHERE id = ?", (transfer_id,)).fetchone()
        return None if row is None else _transfer(row)

    def transfers(self, account: str | None = None) -> list[Transfer]:
        """Every stored transfer (touching ``account`` if given), in the order applied."""
        with self._lock:
            rows = self._conn.execute(f"SELECT {_COLS} FROM wallet_transfers WHERE ? IS NULL OR debit_account = ? "
                                      "OR credit_account = ? ORDER BY seq", (account, account, account)).fetchall()
        return [_transfer(r) for r in rows]

    def balance(self, account: str) -> AccountBalance:
        """One account's totals and floor (zeros for an account never used)."""
        with self._lock:
            row = self._conn.execute("SELECT id, debits_mc, credits_mc, floor_mc FROM wallet_accounts WHERE id = ?",
                                     (account,)).fetchone()
        return AccountBalance(account) if row is None else _account(row)

    def balances(self) -> list[AccountBalance]:
        """Every account with a transfer or a floor, by name."""
        with self._lock:
            rows = self._conn.execute("SELECT id, debits_mc, credits_mc, floor_mc FROM wallet_accounts "
                                      "ORDER BY id").fetchall()
        return [_account(r) for r in rows]

    def set_floor(self, account: str, floor_mc: int | None) -> None:
        """Set or remove an account's floor, millicents."""
        with self._write() as cur:
            cur.execute("INSERT INTO wallet_accounts (id, floor_mc) VALUES (?, ?) "
                        "ON CONFLICT (id) DO UPDATE SET floor_mc = excluded.floor_mc", (account, floor_mc))
            if not has_floor_row(account):
                return
            row = _floor_rows(cur, [account]).get(account)
            if floor_mc is None and row is None:
                return
            totals = cur.execute("SELECT id, debits_mc, credits_mc, floor_mc FROM wallet_accounts WHERE id = ?",
                                 (account,)).fetchone()
            new = floor_row(account, floor_mc, _account(totals), row)
            if new is not row:
                _write_rows(cur, [new])

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._conn.close()


def _floor_rows(cur: sqlite3.Cursor, accounts: Sequence[str]) -> dict[str, FloorState]:
    """The floor rows of ``accounts`` that have one (read inside the batch's write lock)."""
    rows = [r for a in sorted(accounts) for r in cur.execute(
        "SELECT key, version, record FROM states WHERE kind = ? AND key = ?", floor_key(a)).fetchall()]
    parsed = (FloorState.from_record(json.loads(str(record)), int(str(version))) for _, version, record in rows)
    return {row.account: row for row in parsed}


def _write_rows(cur: sqlite3.Cursor, rows: Sequence[FloorState]) -> None:
    cur.executemany("INSERT INTO states (kind, key, version, record) VALUES (?, ?, ?, ?) ON CONFLICT (kind, key) "
                    "DO UPDATE SET version = excluded.version, record = excluded.record",
                    [(*floor_key(r.account), r.version, json.dumps(r.to_record(), sort_keys=True)) for r in rows])


def _select_in(cur: sqlite3.Cursor, select: str, column: str, values: Sequence[str]) -> list[tuple[object, ...]]:
    """Rows of ``select`` whose ``column`` is one of ``values`` (in chunks below SQLite's variable limit)."""
    rows: list[tuple[object, ...]] = []
    for start in range(0, len(values), 500):
        chunk = values[start:start + 500]
        rows += cur.execute(f"{select} WHERE {column} IN ({', '.join('?' * len(chunk))})", chunk).fetchall()
    return rows
