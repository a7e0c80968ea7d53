"""SQLite serves state rows it already knows from memory only while no other connection committed.

``SQLiteStore`` keeps the rows it read or wrote (and the keys it found absent) and answers
them without a query while ``PRAGMA data_version`` is unchanged. These tests check the
three ways that memory could go stale: another store on the same file writes a row, another
store creates a row this one saw absent, and a transaction that wrote rows rolls back.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from pathlib import Path

import pytest

from comptroller.domain.ledger import AccountView, Event
from comptroller.domain.state import GuardOutcome, StateKey, StoredState
from comptroller.storage.sqlite import SQLiteStore
from ledger_kit import T0, reserve_request

KEY = StateKey("test", "k1")


def _state(version: int) -> StoredState:
    return StoredState(KEY, version, {"v": version})


class _Guard:
    """Reads KEY; answers a fixed outcome; remembers the version it was shown (0: absent)."""

    def __init__(self, outcome: GuardOutcome) -> None:
        self.outcome = outcome
        self.seen: list[int] = []

    def state_keys(self) -> Sequence[StateKey]:
        return [KEY]

    def apply(
        self, states: Mapping[StateKey, StoredState], accounts: Sequence[AccountView], now: datetime
    ) -> GuardOutcome:
        self.seen.append(states[KEY].version if KEY in states else 0)
        return self.outcome


@pytest.fixture
def two(tmp_path: Path) -> Iterator[tuple[SQLiteStore, SQLiteStore]]:
    path = tmp_path / "ledger.db"
    first, second = SQLiteStore(path), SQLiteStore(path)
    yield first, second
    first.close()
    second.close()


def test_a_row_another_store_writes_is_read_again(two: tuple[SQLiteStore, SQLiteStore]) -> None:
    """A row this store knows is read again once another connection has committed a new version."""
    first, second = two
    assert first.put_state(_state(1), expected_version=0)
    assert first.state(KEY) == _state(1)  # known now
    assert second.put_state(_state(2), expected_version=1)
    assert first.state(KEY) == _state(2)
    guard = _Guard(GuardOutcome())
    assert first.reserve(reserve_request("c1", 10), T0, guard).reservation is not None
    assert guard.seen == [2]


def test_a_row_seen_absent_is_read_once_another_store_creates_it(two: tuple[SQLiteStore, SQLiteStore]) -> None:
    """An absent row is remembered absent only until another connection commits."""
    first, second = two
    guard = _Guard(GuardOutcome())
    first.reserve(reserve_request("c1", 10), T0, guard)
    assert second.put_state(_state(1), expected_version=0)
    first.reserve(reserve_request("c2", 10), T0, guard)
    assert guard.seen == [0, 1]


def test_rows_of_a_rolled_back_transaction_are_not_served(tmp_path: Path) -> None:
    """A guard's write that rolls back with its transaction (here: an event that cannot be stored) is forgotten."""
    store = SQLiteStore(tmp_path / "ledger.db")
    try:
        assert store.put_state(_state(1), expected_version=0)
        unstorable: dict[str, object] = {"x": object()}  # not JSON: the event's insert raises
        bad = Event(ts=T0, kind="test", code="bad", level=None, scope=None, detail=unstorable)
        with pytest.raises(TypeError):
            store.reserve(reserve_request("c1", 10), T0, _Guard(GuardOutcome(writes=(_state(2),), events=(bad,))))
        assert store.state(KEY) == _state(1)
        guard = _Guard(GuardOutcome())
        assert store.reserve(reserve_request("c2", 10), T0, guard).reservation is not None
        assert guard.seen == [1]
    finally:
        store.close()


def test_own_writes_are_served_without_a_read(tmp_path: Path) -> None:
    """With no other writer, a row this store wrote is answered as the very object written (no parse)."""
    store = SQLiteStore(tmp_path / "ledger.db")
    try:
        written = _state(1)
        assert store.put_state(written, expected_version=0)
        assert store.state(KEY) is written
    finally:
        store.close()
