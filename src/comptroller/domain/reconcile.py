"""Reconciliation: prove that every account's money is the usage log plus the open reservations.

The ledger keeps running balances (``settled_mc``, ``reserved_mc``) beside the facts
they summarise: the usage log (one row per settled call) and the reservations (each
lists the accounts it holds on). Recomputing the balances from the facts is the
classic double-entry check (TigerBeetle's "balances are derived from transfers"):

* ``settled_mc`` of an account = the sum of ``cost_mc`` of the usage rows whose
  reservation held on that account;
* ``reserved_mc`` of an account = the sum of ``ceiling_mc`` of the reservations still
  pending on it (a lease past its expiry counts until a sweep returns it);
* every settled reservation has exactly one usage row, and every usage row belongs
  to a settled reservation (``unknown_outcome`` reservations count as settled: a sent
  call whose lease expired unresolved, charged its ceiling).

:func:`unknown_outcomes` lists those reservations, so ``comptroller db check``
reports every call charged its ceiling because its outcome never reached the ledger.

:func:`reconcile` works on a :class:`LedgerSnapshot`, which any store can produce
(``LedgerStore.ledger_snapshot``), read in one consistent snapshot, so a busy ledger checks clean.
It reports each difference; an empty list means the ledger is consistent.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from comptroller.domain.budgets import Budget, period_key
from comptroller.domain.ledger import CHARGED_STATES, AccountView, ReservationState

__all__ = [
    "AccountBalance",
    "AccountRef",
    "Charge",
    "Difference",
    "Hold",
    "IdleBudget",
    "LedgerSnapshot",
    "idle_budgets",
    "reconcile",
    "unknown_outcomes",
]


@dataclass(frozen=True, slots=True, order=True)
class AccountRef:
    """Which account: its budget id, concrete scope key and period key."""

    budget_id: str
    scope: str
    period_key: str

    def __str__(self) -> str:
        return f"{self.budget_id} / {self.scope} / {self.period_key}"


@dataclass(frozen=True, slots=True)
class AccountBalance:
    """An account's running balances as stored, millicents."""

    account: AccountRef
    settled_mc: int
    reserved_mc: int


@dataclass(frozen=True, slots=True)
class Hold:
    """A reservation as stored: its state, ceiling (millicents) and the accounts it holds on."""

    reservation_id: str
    state: ReservationState
    ceiling_mc: int
    accounts: tuple[AccountRef, ...]


@dataclass(frozen=True, slots=True)
class Charge:
    """One usage-log row: the reservation it settles and its cost, millicents."""

    reservation_id: str
    cost_mc: int


@dataclass(frozen=True, slots=True)
class LedgerSnapshot:
    """Everything reconciliation reads, taken at one instant (one read transaction)."""

    balances: tuple[AccountBalance, ...]
    holds: tuple[Hold, ...]
    charges: tuple[Charge, ...]


@dataclass(frozen=True, slots=True)
class Difference:
    """One thing the facts and the balances disagree on.

    Attributes:
        kind: ``settled`` or ``reserved`` (an account balance), ``negative`` (money below
            zero), ``missing_usage`` (a settled reservation without a usage row),
            ``duplicate_usage`` (more than one), ``orphan_usage`` (a usage row of an
            unknown or unsettled reservation), ``unknown_account`` (a hold on an account
            that does not exist).
        subject: the account or reservation concerned.
        expected_mc: what the facts imply (millicents, or a row count for usage rows).
        found_mc: what is stored.
    """

    kind: str
    subject: str
    expected_mc: int
    found_mc: int

    @property
    def message(self) -> str:
        """One sentence for people."""
        what = {
            "settled": "settled money differs from the sum of its usage rows",
            "reserved": "reserved money differs from the sum of its pending reservations",
            "negative": "money is below zero",
            "missing_usage": "settled reservation has no usage row",
            "duplicate_usage": "reservation has more than one usage row",
            "orphan_usage": "usage row belongs to no settled reservation",
            "unknown_account": "reservation holds on an account that does not exist",
        }[self.kind]
        return f"{self.subject}: {what} (expected {self.expected_mc:,}, found {self.found_mc:,})"


def reconcile(snapshot: LedgerSnapshot) -> list[Difference]:
    """Every difference between the stored balances and the usage log plus open reservations.

    Returns:
        The differences, accounts first (ordered by account), then reservations; empty
        when the ledger is consistent.
    """
    holds = {h.reservation_id: h for h in snapshot.holds}
    rows = Counter(c.reservation_id for c in snapshot.charges)
    settled: dict[AccountRef, int] = defaultdict(int)
    reserved: dict[AccountRef, int] = defaultdict(int)
    out: list[Difference] = []
    for charge in snapshot.charges:
        hold = holds.get(charge.reservation_id)
        if hold is None or hold.state not in CHARGED_STATES:
            out.append(Difference("orphan_usage", f"usage row of reservation {charge.reservation_id}", 0, 1))
            continue
        for account in hold.accounts:
            settled[account] += charge.cost_mc
    for hold in snapshot.holds:
        if hold.state is ReservationState.PENDING:
            for account in hold.accounts:
                reserved[account] += hold.ceiling_mc
        if hold.state in CHARGED_STATES and rows[hold.reservation_id] != 1:
            kind = "missing_usage" if rows[hold.reservation_id] == 0 else "duplicate_usage"
            out.append(Difference(kind, f"reservation {hold.reservation_id}", 1, rows[hold.reservation_id]))
    known = {b.account for b in snapshot.balances}
    out += [Difference("unknown_account", f"account {a}", 0, 1) for a in sorted((set(settled) | set(reserved)) - known)]
    return _account_differences(snapshot.balances, settled, reserved) + out


def unknown_outcomes(snapshot: LedgerSnapshot) -> list[Hold]:
    """The reservations charged their ceiling as ``unknown_outcome`` (sent, lease expired, never resolved),
    ordered by id."""
    return sorted((h for h in snapshot.holds if h.state is ReservationState.UNKNOWN_OUTCOME),
                  key=lambda h: h.reservation_id)


def _account_differences(balances: tuple[AccountBalance, ...], settled: dict[AccountRef, int],
                         reserved: dict[AccountRef, int]) -> list[Difference]:
    out: list[Difference] = []
    for b in sorted(balances, key=lambda b: b.account):
        subject = f"account {b.account}"
        if b.settled_mc != settled.get(b.account, 0):
            out.append(Difference("settled", subject, settled.get(b.account, 0), b.settled_mc))
        if b.reserved_mc != reserved.get(b.account, 0):
            out.append(Difference("reserved", subject, reserved.get(b.account, 0), b.reserved_mc))
        if b.settled_mc < 0 or b.reserved_mc < 0:
            out.append(Difference("negative", subject, 0, min(b.settled_mc, b.reserved_mc)))
    return out


@dataclass(frozen=True, slots=True)
class IdleBudget:
    """A budget that matched no call in its current period (DESIGN.md rule 14: never silently idle).

    Attributes:
        budget: the budget.
        period_key: its current period (``total`` or the ISO date it starts on).
        last_period_key: the latest period in which it matched a call, or None if it never did.
    """

    budget: Budget
    period_key: str
    last_period_key: str | None

    @property
    def message(self) -> str:
        """One sentence for people."""
        if self.last_period_key is None:
            return (f"budget {self.budget.id} has matched no call since it was set: check its scope "
                    f"{self.budget.scope!r} against the traffic's ids")
        return (f"budget {self.budget.id} matched no call in its current {self.budget.period} "
                f"({self.period_key}); last in {self.last_period_key}")


def idle_budgets(budgets: Iterable[Budget], accounts: Iterable[AccountView], now: datetime) -> list[IdleBudget]:
    """The budgets without an account in the period containing ``now``.

    An account is opened the first time a call's reservation applies a budget to a scope
    in a period, so a budget without one in its current period matched no call in it.

    Args:
        budgets: every budget.
        accounts: every account (``LedgerStore.accounts()``).
        now: the current instant (aware UTC).

    Returns:
        The idle budgets, ordered by budget id.
    """
    periods: dict[str, set[str]] = defaultdict(set)
    for account in accounts:
        periods[account.budget.id].add(account.period_key)
    out: list[IdleBudget] = []
    for budget in sorted(budgets, key=lambda b: b.id):
        current = period_key(budget.period, budget.timezone, now)
        seen = periods.get(budget.id, set())
        if current not in seen:
            out.append(IdleBudget(budget, current, max(seen, default=None)))
    return out
