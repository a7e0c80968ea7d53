"""Ledger records: reservations, account views, usage-log rows and events.

A reservation is a lease (TigerBeetle's pending transfer, Stripe's authorization):
it holds ``ceiling_mc`` on every account that applies to the call until it is
settled (the actual cost is charged, the rest returns), released (all returns),
or expires (all returns by itself, so a crashed caller leaks nothing). It resolves
exactly once; later settles and releases answer a code and change nothing, except
that a settle after release or expiry still records the true cost (``settled_late``),
because a provider bills a call whether or not its lease ran out.

Exactly-once money (DESIGN.md rule 12). A reservation made with ``sends=True`` is
marked *sent*: its call goes upstream right after admission (the gateway and the SDK
reserve this way, and release if they fail before sending). Its outcome is then
unknown until a settle or release says otherwise, so when its lease expires it is
not returned to the budget but charged its ceiling, as ``unknown_outcome`` (a
usage row with that outcome, an ``unknown_outcome`` event, state
:attr:`ReservationState.UNKNOWN_OUTCOME`): the provider may have billed it. Charging
moves the hold from reserved to settled, so ``settled + reserved <= limit`` still
holds. A later settle corrects that charge to the real cost (the one usage row is
rewritten, outcome ``settled_late``); a later release corrects it to zero (outcome
``released_late``, the call was not billed). Either way the call is charged once.
A reservation never sent expires to zero, as before. A holder keeps a lease alive
with ``renew`` (:meth:`comptroller.ports.LedgerStore.renew`) while its call runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING

from comptroller.domain.budgets import Budget
from comptroller.domain.codes import Code
from comptroller.domain.events import Event
from comptroller.domain.refusals import Refusal
from comptroller.domain.scopes import Attribution
from comptroller.domain.usage import Usage

if TYPE_CHECKING:
    from comptroller.domain.defenses.verdict import Verdict

__all__ = [
    "CHARGED_STATES",
    "AccountView",
    "Event",
    "ReleaseResult",
    "Reservation",
    "ReservationState",
    "ReserveRequest",
    "ReserveResult",
    "SettleOutcome",
    "SettleResult",
    "UsageRecord",
    "check_ttl_s",
]

_MAX_TTL_S = 24 * 3600.0


class ReservationState(StrEnum):
    """Where a reservation is in its life."""

    PENDING = "pending"
    SETTLED = "settled"
    RELEASED = "released"
    EXPIRED = "expired"
    UNKNOWN_OUTCOME = "unknown_outcome"
    """Sent, then its lease expired unresolved: charged its ceiling; a late settle or release corrects it."""


CHARGED_STATES = frozenset({ReservationState.SETTLED, ReservationState.UNKNOWN_OUTCOME})
"""States whose reservation has exactly one usage row."""


def check_ttl_s(ttl_s: float) -> None:
    """Raise ValueError unless ``0 < ttl_s <= 86,400`` (a lease length, seconds)."""
    if not 0 < ttl_s <= _MAX_TTL_S:
        raise ValueError(f"ttl_s must be in (0, {_MAX_TTL_S:.0f}] seconds, got {ttl_s!r}")


@dataclass(frozen=True, slots=True)
class ReserveRequest:
    """What a caller asks the ledger to hold before a call.

    Attributes:
        idempotency_key: caller-supplied id; a retry with the same key and request
            gets the first answer, with another request ``idempotency_conflict``.
        attribution: who the call is for.
        model: the priced model id.
        ceiling_mc: the amount to hold on every applicable account, millicents.
        input_tokens_max: the input bound the ceiling was priced from, tokens.
        output_tokens_max: the output cap the ceiling was priced from, tokens.
        ttl_s: lease length in seconds (0 < ttl_s <= 86,400).
        sends: True when the call goes upstream right after admission (the gateway, the
            SDK): the reservation is marked sent, so an expired lease is charged its
            ceiling as ``unknown_outcome`` instead of returning to the budget. Not part
            of the idempotency comparison.

    Raises:
        ValueError: on a negative ceiling, a non-positive or over-long ttl, or an
            empty idempotency key.
    """

    idempotency_key: str
    attribution: Attribution
    model: str
    ceiling_mc: int
    input_tokens_max: int
    output_tokens_max: int
    ttl_s: float = 600.0
    sends: bool = False

    def __post_init__(self) -> None:
        check_ttl_s(self.ttl_s)
        if not self.idempotency_key:
            raise ValueError("idempotency_key must be a non-empty string")
        if type(self.ceiling_mc) is not int or self.ceiling_mc < 0:
            raise ValueError(f"ceiling_mc must be a non-negative integer, got {self.ceiling_mc!r}")

    def same_request(self, other: Reservation) -> bool:
        """True if ``other`` was made from an equal request (for idempotent retries)."""
        return (other.attribution, other.model, other.ceiling_mc) == (
            self.attribution, self.model, self.ceiling_mc)


@dataclass(frozen=True, slots=True)
class Reservation:
    """A lease on budget money, as stored (``sent``: made with ``ReserveRequest.sends``)."""

    id: str
    idempotency_key: str
    attribution: Attribution
    model: str
    ceiling_mc: int
    input_tokens_max: int
    output_tokens_max: int
    created_at: datetime
    expires_at: datetime
    state: ReservationState
    sent: bool = False


@dataclass(frozen=True, slots=True)
class AccountView:
    """One budget's account for one scope and period, as read inside a transaction.

    Attributes:
        budget: the budget definition (limit, level, period).
        scope: the concrete scope key (never ``*``).
        period_key: the period (``total`` or the ISO date it starts on).
        settled_mc: spend charged so far in the period, millicents.
        reserved_mc: money held by pending reservations, millicents.
        alert_pct_fired: the highest alert threshold already fired this period (0: none).
    """

    budget: Budget
    scope: str
    period_key: str
    settled_mc: int
    reserved_mc: int
    alert_pct_fired: int = 0

    @property
    def remaining_mc(self) -> int:
        """Limit minus settled minus reserved (negative after a ceiling miss)."""
        return self.budget.limit_mc - self.settled_mc - self.reserved_mc


@dataclass(frozen=True, slots=True)
class UsageRecord:
    """One row of the usage log: a settled call (releases and expiries write no row).

    ``outcome`` is ``settled``; ``settled_late`` when the lease had expired or been
    released first (or an ``unknown_outcome`` charge was corrected to the real cost);
    ``unknown_outcome`` when a sent call's lease expired unresolved (charged its
    ceiling, usage = the reserved bounds); ``released_late`` when such a charge was
    corrected to zero by a late release. ``cost_mc > ceiling_mc`` marks a ceiling miss.
    """

    reservation_id: str
    idempotency_key: str
    attribution: Attribution
    model: str
    reserved_at: datetime
    resolved_at: datetime
    usage: Usage
    cost_mc: int
    ceiling_mc: int
    outcome: str

    @property
    def ceiling_miss(self) -> bool:
        """True when the call cost more than its reservation held."""
        return self.cost_mc > self.ceiling_mc


@dataclass(frozen=True, slots=True)
class ReserveResult:
    """The ledger's answer to a reserve: a reservation, or the refusal.

    Attributes:
        code: ``ok``/``already_reserved`` when admitted, else the refusing rule's code.
        reservation: the hold, when admitted.
        refusal: a budget's numbers, when a budget refused.
        verdict: why not, for every refusal (a budget refusal as :meth:`Verdict.from_refusal`).
        events: the events this reserve appended (a refusal, a trip...), for subscribers.
        remaining_mc: when admitted, the least money any of the call's budgets has left
            with this ceiling held, millicents (None: no budget applies).
    """

    code: Code
    reservation: Reservation | None = None
    refusal: Refusal | None = None
    verdict: Verdict | None = None
    events: tuple[Event, ...] = ()
    remaining_mc: int | None = None

    @property
    def admitted(self) -> bool:
        """True if money is held (now or by the earlier request with this key)."""
        return self.reservation is not None


@dataclass(frozen=True, slots=True)
class SettleResult:
    """The ledger's answer to a settle; ``events``: what it appended (alerts, breaker trips...)."""

    code: Code
    record: UsageRecord | None = None
    events: tuple[Event, ...] = ()


@dataclass(frozen=True, slots=True)
class SettleOutcome:
    """A call's outcome as handed to the ledger, kept whole so it can wait in an outbox.

    Attributes:
        reservation_id: the reservation it resolves (the idempotency id of delivery).
        at: when the call ended (aware UTC): the ledger resolves it at that instant.
        usage: the tokens billed, or None for a release (the provider billed nothing).
        cost_mc: the cost of ``usage``, millicents (0 for a release).
    """

    reservation_id: str
    at: datetime
    usage: Usage | None = None
    cost_mc: int = 0

    @property
    def is_release(self) -> bool:
        """True when the outcome returns the whole hold."""
        return self.usage is None


@dataclass(frozen=True, slots=True)
class ReleaseResult:
    """The ledger's answer to a release; ``events``: what it appended (a breaker closing...)."""

    code: Code
    events: tuple[Event, ...] = ()

