"""Wallet transfers beside the ledger: the :class:`TransferStore` port, its in-memory reference model, and the URL.

A store applies :class:`~comptroller.domain.wallets.transfers.Transfer` batches
atomically: each transfer of a batch is decided by the pure
:func:`~comptroller.domain.wallets.transfers.decide` against the state left by the ones
before it, every applied one moves its amount from the debited account's totals to the
credited account's in the same transaction, and the batch commits whole. Ids make every
write idempotent: a transfer id applies once; creating it again answers ``exists`` and
changes nothing; with other fields, ``exists_with_different_fields``.

Backends (one contract, ``tests/wallets/test_transfer_store.py`` runs it on all three):

* :class:`MemoryTransferStore` (``memory://``): the reference model;
* :class:`comptroller.storage.transfers_sqlite.SQLiteTransferStore`: tables ``wallet_accounts`` and
  ``wallet_transfers`` in the ledger's own SQLite file, created by the store;
* :class:`comptroller.storage.transfers_postgres.PostgresTransferStore`: the same tables in the
  ledger's PostgreSQL schema (migration ``0004_wallets.sql``, ``comptroller db upgrade``).

Wallet floors (:mod:`comptroller.domain.wallets.floors`): an agent account with a floor also has a
floor row in the ledger's ``states``; every backend moves it with the transfers that touch the
account, in the batch's transaction (memory: a compare-and-set on the ledger given to the store),
and ``set_floor`` creates, changes or removes it.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import replace
from typing import Protocol, runtime_checkable

from comptroller.domain.state import StoredState
from comptroller.domain.wallets.accounts import AccountKind
from comptroller.domain.wallets.floors import FloorState, apply_transfer, floor_key
from comptroller.domain.wallets.transfers import AccountBalance, Transfer, TransferCode, TransferResult, decide
from comptroller.ports import LedgerStore

__all__ = ["MemoryTransferStore", "TransferStore", "apply_batch", "floor_row", "has_floor_row"]

_CAS_ATTEMPTS = 1_000


@runtime_checkable
class TransferStore(Protocol):
    """Where wallet transfers and account totals live. Every method is safe across threads."""

    def create_transfers(self, transfers: Sequence[Transfer]) -> list[TransferResult]:
        """Decide and apply a batch in one transaction; one result per transfer, in order.

        Raises:
            LedgerUnavailableError: if the database cannot answer (nothing was applied, unless the
                error says the outcome is unknown: retrying the same ids is then safe).
        """
        ...

    def transfer(self, transfer_id: str) -> Transfer | None:
        """One stored transfer by id, or None."""
        ...

    def transfers(self, account: str | None = None) -> list[Transfer]:
        """Every stored transfer (touching ``account`` if given), in the order applied."""
        ...

    def balance(self, account: str) -> AccountBalance:
        """One account's totals and floor (zeros for an account never used)."""
        ...

    def balances(self) -> list[AccountBalance]:
        """Every account with a transfer or a floor, by name."""
        ...

    def set_floor(self, account: str, floor_mc: int | None) -> None:
        """Set (or with None remove) an account's floor, millicents; later debits below it are refused."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...


def apply_batch(transfers: Sequence[Transfer], existing: dict[str, Transfer],
                accounts: dict[str, AccountBalance], rows: dict[str, FloorState] | None = None) -> list[TransferResult]:
    """Decide a batch against ``existing`` and ``accounts`` and apply it to them in place (the shared core).

    Args:
        transfers: the batch, in order.
        existing: the stored transfers of the batch's ids (id -> transfer); applied ones are added.
        accounts: the totals of every account the batch touches; applied amounts are added.
        rows: the floor rows of the batch's accounts that have one (account -> row); moved in place.
            A debit a row refuses (:func:`~comptroller.domain.wallets.floors.apply_transfer`) answers
            ``insufficient_funds``.

    Returns:
        One result per transfer: for ``exists*`` the stored transfer, else the one asked for.
    """
    results = []
    rows = {} if rows is None else rows
    for t in transfers:
        code = decide(t, existing.get(t.id), accounts.get(t.debit_account))
        if code is TransferCode.OK:
            code = _move_rows(t, rows)
        if code is TransferCode.OK:
            existing[t.id] = t
            debit = accounts.get(t.debit_account) or AccountBalance(t.debit_account)
            credit = accounts.get(t.credit_account) or AccountBalance(t.credit_account)
            accounts[t.debit_account] = replace(debit, debits_mc=debit.debits_mc + t.amount_mc)
            accounts[t.credit_account] = replace(credit, credits_mc=credit.credits_mc + t.amount_mc)
        stored = existing.get(t.id) if code in (TransferCode.EXISTS, TransferCode.EXISTS_WITH_DIFFERENT_FIELDS) else t
        results.append(TransferResult(code, stored or t))
    return results


def _move_rows(t: Transfer, rows: dict[str, FloorState]) -> TransferCode:
    """Move the floor rows ``t`` touches (both or neither); ``insufficient_funds`` if a debit's row refuses."""
    moved = {}
    for account in (t.debit_account, t.credit_account):
        row = rows.get(account)
        if row is not None:
            after = apply_transfer(row, t)
            if after is None:
                return TransferCode.INSUFFICIENT_FUNDS
            moved[account] = after
    rows.update(moved)
    return TransferCode.OK


def has_floor_row(account: str) -> bool:
    """True for the accounts that keep a floor row (agent wallets: the call path checks them at admit)."""
    return account.startswith(f"{AccountKind.AGENT}:")


def floor_row(account: str, floor_mc: int | None, balance: AccountBalance, row: FloorState | None) -> FloorState:
    """The floor row after ``set_floor``: the floor changed (None: removed, the row keeps counting), or a new
    row funded at the posted ``balance``."""
    if row is not None:
        return row if row.floor_mc == floor_mc else replace(row, floor_mc=floor_mc, version=row.version + 1)
    return FloorState(account, floor_mc, balance.balance_mc, version=1)


class MemoryTransferStore:
    """Transfers in dicts: the reference model, for tests and the ``memory://`` ledger.

    Args:
        ledger: the ledger whose ``states`` keep the floor rows of agent wallets (None: floors are
            checked by the transfers alone, as before floor rows). Rows move by compare-and-set,
            retried on a race with a call's guard; the floor check of a debit is made on the row
            first read (the SQL stores decide and write in one transaction).
    """

    def __init__(self, ledger: LedgerStore | None = None) -> None:
        self._transfers: dict[str, Transfer] = {}
        self._accounts: dict[str, AccountBalance] = {}
        self._lock = threading.Lock()
        self._ledger = ledger

    def create_transfers(self, transfers: Sequence[Transfer]) -> list[TransferResult]:
        """Decide and apply a batch atomically (see :class:`TransferStore`)."""
        with self._lock:
            before = self._rows({a for t in transfers for a in (t.debit_account, t.credit_account)})
            rows = dict(before)
            results = apply_batch(transfers, self._transfers, self._accounts, rows)
            for account, row in rows.items():
                if row is not before[account]:
                    self._move_row(before[account], row)
            return results

    def _rows(self, accounts: set[str]) -> dict[str, FloorState]:
        if self._ledger is None:
            return {}
        found = {a: self._ledger.state(floor_key(a)) for a in sorted(accounts) if has_floor_row(a)}
        return {a: FloorState.from_record(s.record, s.version) for a, s in found.items() if s is not None}

    def _move_row(self, before: FloorState, after: FloorState) -> None:
        """Write ``after`` over ``before``; on a race, apply the same change of ``funded_mc`` to the newer row."""
        assert self._ledger is not None
        delta = after.funded_mc - before.funded_mc
        for _ in range(_CAS_ATTEMPTS):
            if self._ledger.put_state(StoredState(floor_key(after.account), after.version, after.to_record()),
                                      expected_version=before.version):
                return
            stored = self._ledger.state(floor_key(after.account))
            if stored is None:
                return  # the floor was removed meanwhile
            before = FloorState.from_record(stored.record, stored.version)
            after = replace(before, funded_mc=before.funded_mc + delta, version=before.version + 1)
        raise RuntimeError(f"wallet floor row {after.account!r} kept changing: {_CAS_ATTEMPTS} attempts")

    def transfer(self, transfer_id: str) -> Transfer | None:
        """One stored transfer by id, or None."""
        return self._transfers.get(transfer_id)

    def transfers(self, account: str | None = None) -> list[Transfer]:
        """Every stored transfer (touching ``account`` if given), in the order applied."""
        with self._lock:
            every = list(self._transfers.values())
        return [t for t in every if account is None or account in (t.debit_account, t.credit_account)]

    def balance(self, account: str) -> AccountBalance:
        """One account's totals and floor."""
        return self._accounts.get(account) or AccountBalance(account)

    def balances(self) -> list[AccountBalance]:
        """Every account with a transfer or a floor, by name."""
        with self._lock:
            return sorted(self._accounts.values(), key=lambda a: a.account)

    def set_floor(self, account: str, floor_mc: int | None) -> None:
        """Set or remove an account's floor (and, with a ledger, its floor row)."""
        with self._lock:
            self._accounts[account] = replace(self.balance(account), floor_mc=floor_mc)
            if self._ledger is None or not has_floor_row(account):
                return
            key = floor_key(account)
            for _ in range(_CAS_ATTEMPTS):
                stored = self._ledger.state(key)
                row = None if stored is None else FloorState.from_record(stored.record, stored.version)
                if floor_mc is None and row is None:
                    return
                new = floor_row(account, floor_mc, self.balance(account), row)
                if new is row or self._ledger.put_state(StoredState(key, new.version, new.to_record()),
                                                        expected_version=0 if row is None else row.version):
                    return
            raise RuntimeError(f"wallet floor row {account!r} kept changing: {_CAS_ATTEMPTS} attempts")

    def close(self) -> None:
        """Nothing to release."""
