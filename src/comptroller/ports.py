"""Ports: the interfaces the engine depends on, implemented by adapters at the edge.

* :class:`LedgerStore`: budgets, reservations, the usage log and events
  (``comptroller.storage``: memory, sqlite).
* :class:`Clock`: the only way the core learns the time (``comptroller.clock``).
* :class:`PriceSource`: a model's price at a moment (``comptroller.prices``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Protocol, runtime_checkable

from comptroller.domain.budgets import Budget
from comptroller.domain.ledger import (
    AccountView,
    Event,
    ReleaseResult,
    Reservation,
    ReserveRequest,
    ReserveResult,
    SettleResult,
    UsageRecord,
)
from comptroller.domain.pricing import ModelPrice
from comptroller.domain.reconcile import LedgerSnapshot
from comptroller.domain.state import AdmitGuard, SettleGuard, StateKey, StoredState
from comptroller.domain.usage import Usage

__all__ = ["Clock", "EventSink", "LedgerStore", "PriceSource"]


class Clock(Protocol):
    """A source of the current time."""

    def now(self) -> datetime:
        """The current instant, an aware UTC datetime."""
        ...


class EventSink(Protocol):
    """A subscriber to ledger events (``comptroller.notify``: structured log, webhook).

    ``publish`` is called after the transaction that appended the events committed;
    it must not block the call path nor raise into it. The events are durable in the
    ledger whatever a sink does with them.
    """

    def publish(self, events: Sequence[Event]) -> None:
        """Hand over committed events, oldest first."""
        ...

    def close(self, timeout_s: float = 5.0) -> None:
        """Flush what is queued (bounded by ``timeout_s`` seconds) and stop."""
        ...


class PriceSource(Protocol):
    """Resolves a model label to its price at a moment."""

    def resolve(self, model: str) -> str:
        """The priced model id for a label (aliases applied). Raises UnknownModelError."""
        ...

    def price(self, model: str, at: datetime) -> ModelPrice:
        """The price of ``model`` (a label or id) at ``at``. Raises UnknownModelError."""
        ...


@runtime_checkable
class LedgerStore(Protocol):
    """Durable budgets, reservations and usage; every write is atomic and idempotent.

    Contract (checked by ``tests/contract`` against every backend):

    * ``reserve`` holds ``ceiling_mc`` on every applicable account or on none, and
      never lets ``settled + reserved`` exceed a limit through admission;
    * ``settle`` charges the actual cost once; repeats answer ``already_settled``;
    * ``release`` returns the hold once; expired leases return by themselves, except
      those of sent calls, charged their ceiling as ``unknown_outcome`` (corrected by a
      late settle or release, never charged twice); ``renew`` extends a pending lease;
    * the sum of the usage log's ``cost_mc`` equals the sum of ``settled_mc`` over
      each budget's accounts that were touched.
    """

    def put_budget(self, budget: Budget) -> None:
        """Create or replace the budget with ``budget.id``."""
        ...

    def delete_budget(self, budget_id: str) -> bool:
        """Delete a budget; True if it existed. Its accounts stay for history."""
        ...

    def budgets(self) -> list[Budget]:
        """Every budget, ordered by id."""
        ...

    def reserve(self, request: ReserveRequest, now: datetime, guard: AdmitGuard | None = None) -> ReserveResult:
        """Hold ``request.ceiling_mc`` on every applicable account, atomically, or refuse.

        In one transaction: answer a known idempotency key; else run ``guard`` on its
        states and the call's accounts (a guard refusal appends its refusal event and
        stops); else check every budget (a budget refusal appends its refusal event and
        stops); else hold the ceiling and commit the guard's writes and events.
        """
        ...

    def settle(self, reservation_id: str, usage: Usage, cost_mc: int, now: datetime,
               guard: SettleGuard | None = None) -> SettleResult:
        """Charge the actual cost, return the rest of the hold, append one usage row.

        ``guard`` runs in the same transaction when the call is charged (not on a repeat).
        """
        ...

    def release(self, reservation_id: str, now: datetime, guard: SettleGuard | None = None) -> ReleaseResult:
        """Return the whole hold (the call failed or was abandoned); ``guard`` runs if it releases."""
        ...

    def expire(self, now: datetime) -> int:
        """Resolve every lease expired at ``now``; the number resolved.

        A lease never sent returns its hold; a sent one (``ReserveRequest.sends``) is
        charged its ceiling as ``unknown_outcome`` (a usage row and an event), which a
        later settle or release corrects to the real cost (see :mod:`comptroller.domain.ledger`).
        """
        ...

    def renew(self, reservation_id: str, now: datetime, ttl_s: float) -> bool:
        """Extend a pending lease to expire at ``now + ttl_s`` at the earliest (never shortened).

        Returns:
            True if renewed; False if the reservation is unknown, resolved, or its lease
            had already expired at ``now`` (it is then resolved as :meth:`expire` does).

        Raises:
            ValueError: unless ``0 < ttl_s <= 86,400``.
        """
        ...

    def reservation(self, reservation_id: str) -> Reservation | None:
        """One reservation by id, or None."""
        ...

    def accounts(self) -> list[AccountView]:
        """Every account (budget, scope, period) with its settled and reserved money."""
        ...

    def usage_records(self) -> Iterator[UsageRecord]:
        """The usage log in settle order."""
        ...

    def ledger_snapshot(self) -> LedgerSnapshot:
        """Every account (deleted budgets' too), reservation and usage charge, read consistently
        (for ``comptroller db check``: :func:`comptroller.domain.reconcile.reconcile`)."""
        ...

    def state(self, key: StateKey) -> StoredState | None:
        """One defense state, or None if it was never written."""
        ...

    def states(self, kind: str) -> list[StoredState]:
        """Every state of one kind, ordered by key."""
        ...

    def put_state(self, state: StoredState, expected_version: int, events: Sequence[Event] = ()) -> bool:
        """Compare-and-set: write ``state`` (and append ``events``) iff the stored version is
        ``expected_version`` (0: the state must not exist yet). False, and nothing written, otherwise."""
        ...

    def record_event(self, event: Event) -> None:
        """Append an event (a refusal, an alert...)."""
        ...

    def events(self, kind: str | None = None) -> list[Event]:
        """Events in time order, optionally of one kind."""
        ...

    def close(self) -> None:
        """Release connections and files."""
        ...
