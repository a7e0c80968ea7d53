"""The ledger rows of groups: definitions, rooms and dispatch gates, written by compare-and-set.

Every gateway worker and replica reads the same rows, so they see the same groups, the
same room (cooldowns, loop tails) and the same dispatch decisions:

=========  ================  ====================================================================
kind       key               record
=========  ================  ====================================================================
group      ``ns|group id``   a group created or changed through the admin API: its validated
                             ``[groups.NAME]`` table as JSON text, or ``removed`` (a tombstone)
room       ``ns|group id``   :class:`~comptroller.domain.dispatch.room.Room` (the room's tail)
dispatch   ``ns|conv``       :class:`~comptroller.domain.defenses.dispatch_rule.DispatchGate`
                             (the group's mode and last dispatches; the admit guard reads it)
=========  ================  ====================================================================

A write that loses a race reads again and retries, at most :data:`CAS_TRIES` times, then
raises :class:`GroupContentionError`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from comptroller.domain.defenses.dispatch_rule import DispatchGate, GroupMode, gate_key
from comptroller.domain.dispatch import GroupError
from comptroller.domain.dispatch.room import ROOM, Room
from comptroller.domain.ledger import Event
from comptroller.domain.scopes import scope_key
from comptroller.domain.state import StateKey, StoredState
from comptroller.ports import LedgerStore

__all__ = ["CAS_TRIES", "GROUP", "GroupContentionError", "GroupRows"]

GROUP = "group"
CAS_TRIES = 64

_Change = Callable[[StoredState | None], Mapping[str, Any] | None]


class GroupContentionError(GroupError):
    """A group row kept changing under a write (more than ``CAS_TRIES`` lost races); retry the request."""


class GroupRows:
    """Reads and compare-and-set writes of one namespace's group rows.

    Args:
        store: the ledger.
        namespace: the groups' namespace (every key starts with it).
    """

    def __init__(self, store: LedgerStore, namespace: str) -> None:
        self.store = store
        self.namespace = namespace

    def update(self, key: StateKey, change: _Change, events: Sequence[Event] = ()) -> StoredState | None:
        """Apply ``change`` (stored row -> new record, or None for no write) by compare-and-set.

        Returns:
            The row written, or the row as read when ``change`` wrote nothing.

        Raises:
            GroupContentionError: after :data:`CAS_TRIES` lost races.
        """
        for _ in range(CAS_TRIES):
            stored = self.store.state(key)
            version = 0 if stored is None else stored.version
            record = change(stored)
            if record is None:
                return stored
            written = StoredState(key, version + 1, {**record, "version": version + 1})
            if self.store.put_state(written, version, events):
                return written
        raise GroupContentionError(f"state {key.kind} {key.key!r} changed {CAS_TRIES} times during one write; "
                                   "retry the request")

    # definitions
    def definitions(self) -> dict[str, tuple[int, dict[str, Any] | None]]:
        """Group id -> (row version, its table, or None for a removed group), for this namespace."""
        prefix = scope_key(self.namespace, "")
        out: dict[str, tuple[int, dict[str, Any] | None]] = {}
        for row in self.store.states(GROUP):
            if row.key.key.startswith(prefix):
                table = row.record.get("table")
                out[str(row.record["group"])] = (row.version, None if row.record.get("removed") else
                                                 json.loads(str(table)))
        return out

    def put_definition(self, group_id: str, table: Mapping[str, Any] | None) -> None:
        """Keep a group's table (None: a tombstone, the group was removed)."""
        record = {"group": group_id, "removed": table is None, "table": json.dumps(table)}
        self.update(StateKey(GROUP, scope_key(self.namespace, group_id)), lambda _: record)

    # rooms
    def room_key(self, group_id: str) -> StateKey:
        """The room row of a group."""
        return StateKey(ROOM, scope_key(self.namespace, group_id))

    def room(self, group_id: str) -> Room:
        """The room as stored (an empty room at version 0 when none is)."""
        stored = self.store.state(self.room_key(group_id))
        return Room(group_id) if stored is None else Room.from_record(stored.record)

    def put_room(self, before: Room, after: Room, events: Sequence[Event] = ()) -> bool:
        """Compare-and-set the room (with ``events`` appended in the same write); False if it moved."""
        key = self.room_key(after.group)
        return self.store.put_state(StoredState(key, after.version, after.to_record()), before.version, events)

    # gates
    def set_gate(self, conversation: str, group_id: str, mode: GroupMode) -> None:
        """Set the group and mode of a conversation's gate (no write if unchanged)."""
        def change(stored: StoredState | None) -> Mapping[str, Any] | None:
            gate = DispatchGate(group_id) if stored is None else DispatchGate.from_record(stored.record)
            moved = gate.with_mode(group_id, mode)
            return None if moved is gate and stored is not None else moved.to_record()
        self.update(gate_key(self.namespace, conversation), change)

    def gate_dispatch(self, conversation: str, group_id: str, mode: GroupMode, message_id: str,
                      agents: Sequence[str]) -> None:
        """Add a dispatched message and its responders to the gate (no write on a repeat)."""
        def change(stored: StoredState | None) -> Mapping[str, Any] | None:
            gate = DispatchGate(group_id) if stored is None else DispatchGate.from_record(stored.record)
            moved = gate.with_mode(group_id, mode).with_dispatch(message_id, agents)
            return None if moved is gate else moved.to_record()
        self.update(gate_key(self.namespace, conversation), change)
