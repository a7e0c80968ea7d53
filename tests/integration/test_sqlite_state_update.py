"""SQLite writes a state row it knows as an UPDATE, and still creates it when it is not there.

``SQLiteStore._commit`` updates rows it read or wrote in place (cheaper than the upsert) and
falls back to the upsert when an UPDATE finds fewer rows than it expected: its memory of a row
can outlive the row (a transaction that created it rolled back).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path

import pytest

from comptroller.domain.ledger import AccountView, Event
from comptroller.domain.state import GuardOutcome, StateKey, StoredState
from comptroller.storage.sqlite import SQLiteStore
from ledger_kit import T0, reserve_request

KEY = StateKey("test", "k1")
OTHER = StateKey("test", "k2")


class _Guard:
    """Answers a fixed outcome (reads KEY)."""

    def __init__(self, outcome: GuardOutcome) -> None:
        self.outcome = outcome

    def state_keys(self) -> Sequence[StateKey]:
        return [KEY]

    def apply(
        self, states: Mapping[StateKey, StoredState], accounts: Sequence[AccountView], now: datetime
    ) -> GuardOutcome:
        return self.outcome


def _state(key: StateKey, version: int) -> StoredState:
    return StoredState(key, version, {"v": version})


def test_a_row_whose_creation_rolled_back_is_created_by_the_next_write(tmp_path: Path) -> None:
    """The store wrote KEY in a transaction that rolled back; putting it again must create it, on the file."""
    path = tmp_path / "ledger.db"
    store, reader = SQLiteStore(path), SQLiteStore(path)
    try:
        assert store.put_state(_state(OTHER, 1), expected_version=0)
        unstorable: dict[str, object] = {"x": object()}  # not JSON: the event's insert raises
        bad = Event(ts=T0, kind="test", code="bad", level=None, scope=None, detail=unstorable)
        with pytest.raises(TypeError):
            store.reserve(reserve_request("c1", 10), T0, _Guard(GuardOutcome(writes=(_state(KEY, 1),), events=(bad,))))
        assert store.put_state(_state(KEY, 1), expected_version=0)
        assert store.put_state(_state(OTHER, 2), expected_version=1)  # a known row: updated in place
        assert reader.state(KEY) == _state(KEY, 1)
        assert reader.state(OTHER) == _state(OTHER, 2)
    finally:
        store.close()
        reader.close()


def test_known_rows_are_updated_in_place(tmp_path: Path) -> None:
    """Rows written again through a guard keep one row per key, with the last version and record."""
    path = tmp_path / "ledger.db"
    store, reader = SQLiteStore(path), SQLiteStore(path)
    try:
        for version in range(1, 4):
            writes = (_state(KEY, version), _state(OTHER, version))
            guard = _Guard(GuardOutcome(writes=writes))
            assert store.reserve(reserve_request(f"c{version}", 10), T0, guard).reservation is not None
        assert reader.states("test") == [_state(KEY, 3), _state(OTHER, 3)]
    finally:
        store.close()
        reader.close()
