"""Record constructors shared by every backend, so each builds rows the same way."""

from __future__ import annotations

from dataclasses import replace
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
from comptroller.domain.scopes import Level
from comptroller.domain.usage import Usage

if TYPE_CHECKING:
    from comptroller.domain.defenses.verdict import Verdict

__all__ = ["alert_event", "corrected_record", "new_reservation", "refusal_event", "settled_record",
           "unknown_outcome_event", "unknown_outcome_record"]


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
        sent=request.sends,
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


def unknown_outcome_record(reservation: Reservation, now: datetime) -> UsageRecord:
    """The usage row of a sent reservation whose lease expired unresolved: its ceiling, its bounds' tokens."""
    bound = Usage(input_tokens=reservation.input_tokens_max, output_tokens=reservation.output_tokens_max)
    record = settled_record(reservation, bound, reservation.ceiling_mc, now, late=False)
    return replace(record, outcome="unknown_outcome")


def corrected_record(reservation: Reservation, usage: Usage | None, cost_mc: int, now: datetime) -> UsageRecord:
    """The row replacing an ``unknown_outcome`` charge: the real usage (``settled_late``), or zero for a
    release (``released_late``)."""
    if usage is None:
        return replace(settled_record(reservation, Usage(0, 0), 0, now, late=True), outcome="released_late")
    return settled_record(reservation, usage, cost_mc, now, late=True)


def unknown_outcome_event(reservation: Reservation, now: datetime) -> Event:
    """The ``unknown_outcome`` event: a sent call's lease expired unresolved and its ceiling was charged."""
    a = reservation.attribution
    return Event(ts=now, kind="unknown_outcome", code="unknown_outcome", level=str(Level.AGENT),
                 scope=dict(a.scopes())[Level.AGENT],
                 detail={"reservation_id": reservation.id, "idempotency_key": reservation.idempotency_key,
                         "model": reservation.model, "ceiling_mc": reservation.ceiling_mc,
                         "tenant": a.tenant, "agent": a.agent, "conversation": a.conversation})


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
                         phase=a.phase, key_id=a.key_id, requested_mc=request.ceiling_mc)
