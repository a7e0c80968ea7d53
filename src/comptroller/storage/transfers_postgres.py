"""Wallet transfers in the ledger's PostgreSQL schema (tables from migration ``0004_wallets.sql``).

A batch is one transaction at READ COMMITTED. It first makes sure every account row it
touches exists (``INSERT ... ON CONFLICT DO NOTHING``), then locks them with ``SELECT ...
ORDER BY id FOR UPDATE`` (one global order, so batches never deadlock), then reads the
stored transfers of its ids. Two replicas creating the same id at once are serialised by
the account locks (same id, same accounts) or, for an id reused on other accounts, by the
unique index: the insert that loses finds the winner's row (``ON CONFLICT DO NOTHING``
returns nothing), and the batch is decided again. A lost connection or a pool timeout is
:class:`~comptroller.errors.LedgerUnavailableError`; a batch retried with the same ids is safe.

Floor rows (:mod:`comptroller.domain.wallets.floors`) are the ledger's ``states`` rows of kind
``wallet_floor``: a batch locks those of its agent accounts (``FOR UPDATE``, after the account
rows; the ledger's transactions never lock wallet accounts, so there is no cycle) and writes them
in its own transaction, so a row and the transfers that move it commit together.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import psycopg

from comptroller.domain.limit_rows import KIND
from comptroller.domain.wallets.floors import FloorState, floor_key
from comptroller.domain.wallets.transfers import AccountBalance, Transfer, TransferCode, TransferResult
from comptroller.storage.postgres import split_url
from comptroller.storage.postgres_pool import Attempt, Database, RetryError
from comptroller.storage.transfers import apply_batch, floor_row, has_floor_row

__all__ = ["PostgresTransferStore"]

_T = TypeVar("_T")
_COLS = "id, debit_account, credit_account, amount_mc, kind, ts, ref"
_ACCOUNT_COLS = "id, debits_mc, credits_mc, floor_mc"
Conn = psycopg.Connection[Any]


class _LostRaceError(Exception):
    """Another transaction stored one of the batch's ids first: decide the batch again."""


def _transfer(row: Sequence[Any]) -> Transfer:
    return Transfer(id=row[0], debit_account=row[1], credit_account=row[2], amount_mc=row[3], kind=row[4],
                    ts=row[5], ref=row[6])


def _account(row: Sequence[Any]) -> AccountBalance:
    return AccountBalance(row[0], row[1], row[2], row[3])


class PostgresTransferStore:
    """A :class:`~comptroller.storage.transfers.TransferStore` in the ledger's PostgreSQL database.

    Args:
        url: the ledger's libpq URL (pool options may ride in it, as for the ledger store).
        schema: the schema holding the ledger (default: the server's ``search_path``).
        max_size: pooled connections at most.
        timeout_s: how long a call waits for a free connection, seconds.

    Raises:
        SchemaVersionError: if the schema is behind (run ``comptroller db upgrade``) or ahead.
        LedgerUnavailableError: if the database cannot be reached.
    """

    def __init__(self, url: str, *, schema: str | None = None, max_size: int = 4, timeout_s: float = 5.0) -> None:
        conninfo, options = split_url(url)
        self._db = Database(conninfo, options, schema=schema, min_size=1, max_size=max_size, timeout_s=timeout_s,
                            connect_timeout_s=5.0, lock_timeout_s=10.0, statement_timeout_s=60.0, durable=True)
        self.where = self._db.where

    def _run(self, op: Callable[[Conn], _T]) -> _T:
        """Run ``op`` in one transaction on the ledger's pool (:meth:`.postgres_pool.Database.run`): again after
        a lost race, and every connection problem a ``LedgerUnavailableError`` (a batch retried with the
        same transfer ids is safe)."""
        def in_transaction(conn: Conn, attempt: Attempt) -> _T:
            try:
                with conn.transaction():
                    result = op(conn)
                    attempt.commit_sent = True  # the block's end sends COMMIT
            except _LostRaceError:
                raise RetryError from None
            return result
        return self._db.run(in_transaction)

    def create_transfers(self, transfers: Sequence[Transfer]) -> list[TransferResult]:
        """Decide and apply a batch in one transaction (see :class:`~comptroller.storage.transfers.TransferStore`)."""
        return self._run(lambda conn: _create(conn, transfers))

    def transfer(self, transfer_id: str) -> Transfer | None:
        """One stored transfer by id, or None."""
        rows = self._run(lambda c: c.execute(f"SELECT {_COLS} FROM wallet_transfers WHERE id = %s",
                                             (transfer_id,)).fetchall())
        return _transfer(rows[0]) if rows else None

    def transfers(self, account: str | None = None) -> list[Transfer]:
        """Every stored transfer (touching ``account`` if given), in the order applied."""
        rows = self._run(lambda c: c.execute(
            f"SELECT {_COLS} FROM wallet_transfers WHERE %s::text IS NULL OR debit_account = %s "
            "OR credit_account = %s ORDER BY seq", (account, account, account)).fetchall())
        return [_transfer(r) for r in rows]

    def balance(self, account: str) -> AccountBalance:
        """One account's totals and floor (zeros for an account never used)."""
        rows = self._run(lambda c: c.execute(f"SELECT {_ACCOUNT_COLS} FROM wallet_accounts WHERE id = %s",
                                             (account,)).fetchall())
        return _account(rows[0]) if rows else AccountBalance(account)

    def balances(self) -> list[AccountBalance]:
        """Every account with a transfer or a floor, by name."""
        rows = self._run(lambda c: c.execute(f"SELECT {_ACCOUNT_COLS} FROM wallet_accounts ORDER BY id").fetchall())
        return [_account(r) for r in rows]

    def set_floor(self, account: str, floor_mc: int | None) -> None:
        """Set or remove an account's floor, millicents (and its floor row, for an agent wallet)."""
        self._run(lambda c: _set_floor(c, account, floor_mc))

    def close(self) -> None:
        """Close the pooled connections."""
        self._db.close()


def _create(conn: Conn, transfers: Sequence[Transfer]) -> list[TransferResult]:
    names = sorted({a for t in transfers for a in (t.debit_account, t.credit_account) if a})
    ids = sorted({t.id for t in transfers})
    conn.execute("INSERT INTO wallet_accounts (id) SELECT unnest(%s::text[]) ORDER BY 1 ON CONFLICT (id) DO NOTHING",
                 (names,))
    locked = conn.execute(f"SELECT {_ACCOUNT_COLS} FROM wallet_accounts WHERE id = ANY(%s) ORDER BY id FOR UPDATE",
                          (names,)).fetchall()
    accounts = {a.account: a for a in map(_account, locked)}
    stored = conn.execute(f"SELECT {_COLS} FROM wallet_transfers WHERE id = ANY(%s)", (ids,)).fetchall()
    existing = {t.id: t for t in map(_transfer, stored)}
    before = _floor_rows(conn, [a for a in names if has_floor_row(a)])
    rows = dict(before)
    results = apply_batch(transfers, existing, accounts, rows)
    _write_rows(conn, [row for a, row in rows.items() if row is not before[a]], before)
    with conn.cursor() as cur:
        for t in (r.transfer for r in results if r.code is TransferCode.OK):
            cur.execute(f"INSERT INTO wallet_transfers ({_COLS}) VALUES (%s, %s, %s, %s, %s, %s, %s) "
                        "ON CONFLICT (id) DO NOTHING RETURNING id",
                        (t.id, t.debit_account, t.credit_account, t.amount_mc, t.kind, t.ts, t.ref))
            if cur.fetchone() is None:
                raise _LostRaceError(t.id)
        cur.executemany("UPDATE wallet_accounts SET debits_mc = %s, credits_mc = %s WHERE id = %s",
                        [(accounts[a].debits_mc, accounts[a].credits_mc, a) for a in names if a in accounts])
    return results


def _set_floor(conn: Conn, account: str, floor_mc: int | None) -> None:
    row = conn.execute(f"INSERT INTO wallet_accounts (id, floor_mc) VALUES (%s, %s) ON CONFLICT (id) "
                       f"DO UPDATE SET floor_mc = excluded.floor_mc RETURNING {_ACCOUNT_COLS}",
                       (account, floor_mc)).fetchone()
    assert row is not None  # INSERT ... ON CONFLICT DO UPDATE RETURNING always returns the row
    if not has_floor_row(account):
        return
    before = _floor_rows(conn, [account])
    if floor_mc is None and account not in before:
        return
    new = floor_row(account, floor_mc, _account(row), before.get(account))
    _write_rows(conn, [new] if new is not before.get(account) else [], before)


def _floor_rows(conn: Conn, accounts: Sequence[str]) -> dict[str, FloorState]:
    """The floor rows of ``accounts`` that have one, locked until the transaction ends."""
    if not accounts:
        return {}
    rows = conn.execute("SELECT key, version, record FROM states WHERE kind = %s AND key = ANY(%s) ORDER BY key "
                        "FOR UPDATE", (KIND, [floor_key(a).key for a in accounts])).fetchall()
    parsed = (FloorState.from_record(r[2], int(r[1])) for r in rows)
    return {row.account: row for row in parsed}


def _write_rows(conn: Conn, rows: Sequence[FloorState], before: dict[str, FloorState]) -> None:
    for r in rows:
        record = json.dumps(r.to_record(), sort_keys=True)
        if r.account in before:
            conn.execute("UPDATE states SET version = %s, record = %s WHERE kind = %s AND key = %s",
                         (r.version, record, *floor_key(r.account)))
        elif conn.execute("INSERT INTO states (kind, key, version, record) VALUES (%s, %s, %s, %s) "
                          "ON CONFLICT (kind, key) DO NOTHING", (*floor_key(r.account), r.version, record)
                          ).rowcount == 0:
            raise _LostRaceError(r.account)  # another set_floor made the row first: decide again
