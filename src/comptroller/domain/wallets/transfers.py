"""Double-entry transfers between wallet accounts, in TigerBeetle's model, as pure rules.

Every money movement between wallets is a :class:`Transfer`: it debits one account and
credits another by the same positive integer of millicents, so the balances of all
accounts always sum to zero. The caller supplies the id: creating the same transfer
again is a no-op answered ``exists``, and reusing an id for a transfer with other fields
is refused ``exists_with_different_fields`` (TigerBeetle ``create_transfers`` result
codes; Stripe idempotency keys). Outcomes are :class:`TransferCode` values, never
exceptions, decided by :func:`decide` in one fixed order of precedence (the order of the
enum), so a transfer that breaks two rules always gets the same code.

An account's balance is ``credits_mc - debits_mc`` (a wallet holds what it was paid). An
account may have a floor (prepaid wallets: floor 0): a transfer that would take the
debited account below its floor is refused ``insufficient_funds`` and changes nothing.
The time of a transfer is the caller's (``ts``), recorded but not compared: a retry
later with the same fields is the same transfer.

Sources: TigerBeetle ``docs/reference/transfer.md`` and ``src/state_machine.zig``
(fixed precedence, ``exists`` vs ``exists_with_different_*``, ``exceeds_credits``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

__all__ = ["ID_LEN_MAX", "AccountBalance", "Transfer", "TransferCode", "TransferResult", "decide", "same_fields"]

ID_LEN_MAX = 256
"""Longest transfer or account id, characters."""


class TransferCode(StrEnum):
    """The outcome of creating one transfer, in order of precedence (first that applies wins)."""

    ID_MUST_NOT_BE_EMPTY = "id_must_not_be_empty"
    ID_TOO_LONG = "id_too_long"
    ACCOUNT_MUST_NOT_BE_EMPTY = "account_must_not_be_empty"
    ACCOUNTS_MUST_BE_DIFFERENT = "accounts_must_be_different"
    AMOUNT_MUST_BE_POSITIVE = "amount_must_be_positive"
    KIND_MUST_NOT_BE_EMPTY = "kind_must_not_be_empty"
    EXISTS_WITH_DIFFERENT_FIELDS = "exists_with_different_fields"
    EXISTS = "exists"
    INSUFFICIENT_FUNDS = "insufficient_funds"
    OK = "ok"

    @property
    def applied(self) -> bool:
        """True only for ``ok``: the transfer moved money now (``exists`` moved it before)."""
        return self is TransferCode.OK


@dataclass(frozen=True, slots=True)
class Transfer:
    """One movement of money: ``amount_mc`` leaves ``debit_account`` and arrives at ``credit_account``.

    Attributes:
        id: the caller's id (idempotency key), 1..256 characters.
        debit_account: the account paying (its balance goes down).
        credit_account: the account paid (its balance goes up).
        amount_mc: millicents, > 0.
        kind: what the money is for (``llm_cost``, ``service_fee``, ``task_fee``, ``knowledge_fee``,
            ``infra``, ``deposit``...): TigerBeetle's ``code``.
        ts: when it happened (aware UTC), the caller's time.
        ref: what it refers to (a reservation id, a task, a period), free text.
    """

    id: str
    debit_account: str
    credit_account: str
    amount_mc: int
    kind: str
    ts: datetime
    ref: str = ""

    def __post_init__(self) -> None:
        if self.ts.tzinfo is None:
            raise ValueError(f"transfer {self.id!r}: ts must be an aware datetime (UTC), got a naive {self.ts}")


@dataclass(frozen=True, slots=True)
class AccountBalance:
    """An account's totals, millicents: ``balance_mc = credits_mc - debits_mc``; ``floor_mc`` None: no floor."""

    account: str
    debits_mc: int = 0
    credits_mc: int = 0
    floor_mc: int | None = None

    @property
    def balance_mc(self) -> int:
        """What the account holds, millicents (negative for an account that paid out more than it got)."""
        return self.credits_mc - self.debits_mc


@dataclass(frozen=True, slots=True)
class TransferResult:
    """The answer to one transfer: its ``code`` and the transfer it concerns (the stored one for ``exists*``)."""

    code: TransferCode
    transfer: Transfer


def same_fields(a: Transfer, b: Transfer) -> bool:
    """True when two transfers agree on every field but ``ts`` (a retry may come later)."""
    return (a.id, a.debit_account, a.credit_account, a.amount_mc, a.kind, a.ref) == (
        b.id, b.debit_account, b.credit_account, b.amount_mc, b.kind, b.ref)


def decide(transfer: Transfer, existing: Transfer | None, debit: AccountBalance | None) -> TransferCode:
    """The code for creating ``transfer``, given what the ledger holds (TigerBeetle's precedence).

    Args:
        transfer: the transfer asked for.
        existing: the stored transfer with the same id, or None.
        debit: the debited account's totals and floor as they are now (None: a new account, no floor).

    Returns:
        The first code that applies, in :class:`TransferCode` order; ``ok`` means apply it.
    """
    shape = next((code for code, broken in _shape_rules(transfer) if broken), None)
    if shape is not None:
        return shape
    if existing is not None:
        return TransferCode.EXISTS if same_fields(existing, transfer) else TransferCode.EXISTS_WITH_DIFFERENT_FIELDS
    if debit is not None and debit.floor_mc is not None and debit.balance_mc - transfer.amount_mc < debit.floor_mc:
        return TransferCode.INSUFFICIENT_FUNDS
    return TransferCode.OK


def _shape_rules(t: Transfer) -> tuple[tuple[TransferCode, bool], ...]:
    """The checks of a transfer's own fields, in precedence order (each true when broken)."""
    amount_ok = isinstance(t.amount_mc, int) and not isinstance(t.amount_mc, bool) and t.amount_mc > 0
    return ((TransferCode.ID_MUST_NOT_BE_EMPTY, not t.id),
            (TransferCode.ID_TOO_LONG, max(len(t.id), len(t.debit_account), len(t.credit_account)) > ID_LEN_MAX),
            (TransferCode.ACCOUNT_MUST_NOT_BE_EMPTY, not t.debit_account or not t.credit_account),
            (TransferCode.ACCOUNTS_MUST_BE_DIFFERENT, t.debit_account == t.credit_account),
            (TransferCode.AMOUNT_MUST_BE_POSITIVE, not amount_ok),
            (TransferCode.KIND_MUST_NOT_BE_EMPTY, not t.kind))
