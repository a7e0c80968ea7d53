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
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import replace
from typing import Protocol, runtime_checkable

from comptroller.domain.wallets.transfers import AccountBalance, Transfer, TransferCode, TransferResult, decide

__all__ = ["MemoryTransferStore", "TransferStore", "apply_batch"]


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
                accounts: dict[str, AccountBalance]) -> list[TransferResult]:
    """Decide a batch against ``existing`` and ``accounts`` and apply it to them in place (the shared core).

    Args:
        transfers: the batch, in order.
        existing: the stored transfers of the batch's ids (id -> transfer); applied ones are added.
        accounts: the totals of every account the batch touches; applied amounts are added.

    Returns:
        One result per transfer: for ``exists*`` the stored transfer, else the one asked for.
    """
    results = []
    for t in transfers:
        code = decide(t, existing.get(t.id), accounts.get(t.debit_account))
        if code is TransferCode.OK:
            existing[t.id] = t
            debit = accounts.get(t.debit_account) or AccountBalance(t.debit_account)
            credit = accounts.get(t.credit_account) or AccountBalance(t.credit_account)
            accounts[t.debit_account] = replace(debit, debits_mc=debit.debits_mc + t.amount_mc)
            accounts[t.credit_account] = replace(credit, credits_mc=credit.credits_mc + t.amount_mc)
        stored = existing.get(t.id) if code in (TransferCode.EXISTS, TransferCode.EXISTS_WITH_DIFFERENT_FIELDS) else t
        results.append(TransferResult(code, stored or t))
    return results


class MemoryTransferStore:
    """Transfers in dicts: the reference model, for tests and the ``memory://`` ledger."""

    def __init__(self) -> None:
        self._transfers: dict[str, Transfer] = {}
        self._accounts: dict[str, AccountBalance] = {}
        self._lock = threading.Lock()

    def create_transfers(self, transfers: Sequence[Transfer]) -> list[TransferResult]:
        """Decide and apply a batch atomically (see :class:`TransferStore`)."""
        with self._lock:
            return apply_batch(transfers, self._transfers, self._accounts)

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
        """Set or remove an account's floor."""
        with self._lock:
            self._accounts[account] = replace(self.balance(account), floor_mc=floor_mc)

    def close(self) -> None:
        """Nothing to release."""
