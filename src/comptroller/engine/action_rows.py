"""The rows of the action guard: one action's state row, read and moved by compare-and-set, and its events.

``("action", "tenant|id")`` holds one :class:`~comptroller.domain.actions.ActionRecord`. It is created
once (expected version 0, so the id is an idempotency key) and every later transition is a
compare-and-set on its version; the events a transition raises are appended in the same write and
handed to the sinks (webhooks, log) after it commits. Shared by the action service
(:mod:`comptroller.engine.actions`) and the verifier (:mod:`comptroller.engine.verification`).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from comptroller.domain.actions import ActionRecord, ActionStatus
from comptroller.domain.ledger import Event
from comptroller.domain.state import StateKey, StoredState
from comptroller.ports import EventSink, LedgerStore

__all__ = ["ACTION", "ActionConflictError", "ActionRows", "UnknownActionError", "action_event", "action_key",
           "transition_events"]

ACTION = "action"
"""The state kind of one action's row, and the kind of its events."""


class ActionConflictError(ValueError):
    """An action id reused with different fields (the id is an idempotency key), or a transition refused.

    Attributes:
        code: the machine code an edge answers (``action_conflict``; subclasses name their case).
    """

    code = "action_conflict"


class UnknownActionError(LookupError):
    """No action of that id for that tenant."""


def action_key(tenant: str, action_id: str) -> StateKey:
    """The state key of one action's row."""
    return StateKey(ACTION, f"{tenant}|{action_id}")


def action_event(record: ActionRecord, code: str, now: datetime, **extra: object) -> Event:
    """An ``action`` event about ``record`` (scope ``platform``, ``tenant/platform``) with its facts in ``detail``.

    Args:
        record: the action.
        code: the event's code (``refused``, ``pending_approval``, ``rejected``, ``unverified``...).
        now: the event's time (aware UTC).
        extra: more JSON facts for the detail.
    """
    a = record.action
    detail = {"action": a.id, "tenant": a.tenant, "agent": a.agent, "platform": a.platform, "kind": a.kind,
              "task": a.task, "reasons": [r.to_json() for r in record.reasons], **extra}
    return Event(now, ACTION, code, "platform", f"{a.tenant}/{a.platform}", detail)


def transition_events(record: ActionRecord, now: datetime) -> list[Event]:
    """The events a record's new status raises: a refusal, a hold, a rejection (others raise none here)."""
    if record.status in (ActionStatus.REFUSED, ActionStatus.PENDING_APPROVAL, ActionStatus.REJECTED):
        return [action_event(record, str(record.status), now)]
    return []


class ActionRows:
    """Read, create and move action rows on one ledger, publishing their events.

    Args:
        store: the ledger.
        sinks: told of every committed event (None: the ledger keeps them only).
    """

    def __init__(self, store: LedgerStore, sinks: EventSink | None) -> None:
        self.store, self.sinks = store, sinks

    def get(self, tenant: str, action_id: str) -> ActionRecord | None:
        """One action's stored record (status as stored; ``.at(now)`` reads expiry), or None."""
        stored = self.store.state(action_key(tenant, action_id))
        return None if stored is None else ActionRecord.from_record(stored.record)

    def must(self, tenant: str, action_id: str) -> ActionRecord:
        """One action's stored record. Raises UnknownActionError if there is none."""
        record = self.get(tenant, action_id)
        if record is None:
            raise UnknownActionError(f"no action {action_id!r} for tenant {tenant!r}; "
                                     "`comptroller action list` shows them")
        return record

    def all(self) -> list[ActionRecord]:
        """Every action's stored record (a scan of the rows)."""
        return [ActionRecord.from_record(s.record) for s in self.store.states(ACTION)]

    def create(self, record: ActionRecord, events: Sequence[Event]) -> bool:
        """Write a new action's row (version 1) with ``events``; False if the id exists already."""
        written = self.store.put_state(StoredState(action_key(record.action.tenant, record.action.id), 1,
                                                   record.to_record()), 0, events)
        if written:
            self.publish(events)
        return written

    def move(self, current: ActionRecord, nxt: ActionRecord, events: Sequence[Event]) -> bool:
        """Replace ``current`` by ``nxt`` with ``events``, iff the row is still at ``current.version``."""
        ok = self.store.put_state(StoredState(action_key(nxt.action.tenant, nxt.action.id), nxt.version,
                                              nxt.to_record()), current.version, events)
        if ok:
            self.publish(events)
        return ok

    def publish(self, events: Sequence[Event]) -> None:
        """Hand committed events to the sinks."""
        if events and self.sinks is not None:
            self.sinks.publish(events)
