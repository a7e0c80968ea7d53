"""Record constructors shared by every backend, so each builds rows the same way."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from comptroller.domain.ledger import (
    AccountView,
    Event,
    Reservation,
    ReservationState,
    ReserveRequest,
    UsageRecord,
)
from comptroller.domain.usage import Usage

if TYPE_CHECKING:
    from comptroller.domain.defenses.verdict import Verdict

__all__ = ["alert_event", "new_reservation", "refusal_event", "settled_record"]


def new_reservation(reservation_id: str, request: ReserveRequest, now: datetime) -> Reservation:
    """A pending reservation for ``request`` admitted at ``now``."""
    return Reservation(
        id=reservation_id,
        idempotency_key=request.idempotency_key,
        attribution=request.attribution,
        model=request.model,
        ceiling_mc=request.ceiling_mc,
        input_tokens_max=request.input_tokens_max,
        output_tokens_max=request.output_tokens_max,
        created_at=now,
        expires_at=now + timedelta(seconds=request.ttl_s),
        state=ReservationState.PENDING,
    )


def settled_record(reservation: Reservation, usage: Usage, cost_mc: int, now: datetime, *,
                   late: bool) -> UsageRecord:
    """The usage-log row of a settle."""
    return UsageRecord(
        reservation_id=reservation.id,
        idempotency_key=reservation.idempotency_key,
        attribution=reservation.attribution,
        model=reservation.model,
        reserved_at=reservation.created_at,
        resolved_at=now,
        usage=usage,
        cost_mc=cost_mc,
        ceiling_mc=reservation.ceiling_mc,
        outcome="settled_late" if late else "settled",
    )


def alert_event(account: AccountView, pct: int, settled_mc: int, now: datetime) -> Event:
    """The event fired when an account's settled spend first crosses ``pct`` % of its limit."""
    return Event(
        ts=now,
        kind="alert",
        code=f"budget_{pct}pct",
        level=str(account.budget.level),
        scope=account.scope,
        detail={
            "budget_id": account.budget.id,
            "period": account.period_key,
            "threshold_pct": pct,
            "limit_mc": account.budget.limit_mc,
            "settled_mc": settled_mc,
        },
    )


def refusal_event(verdict: Verdict, request: ReserveRequest, now: datetime) -> Event:
    """The ``refusal`` event of a refused reserve: the verdict with who asked and for which model."""
    a = request.attribution
    return verdict.event(now, model=request.model, agent=a.agent, conversation=a.conversation, task=a.task,
                         phase=a.phase, requested_mc=request.ceiling_mc)
