"""SQLite pads a state row that spills over its page so that it keeps one size while it grows.

A record longer than a table leaf's local payload is followed by spaces (JSON whitespace) up to
nearly the end of its last overflow page: every reader parses the same record, the row takes no
more pages than unpadded, and consecutive writes of a growing record keep one payload size (SQLite
then overwrites the cell in place rather than freeing and allocating its overflow pages).
"""

from __future__ import annotations

import sqlite3
import string
from pathlib import Path

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from comptroller.domain.state import StateKey, StoredState
from comptroller.storage.sqlite import SQLiteStore

KEY = StateKey("loop", "conversation:ns|t|c")
_TEXT = st.text(alphabet=string.ascii_letters + "é\u2028|%", max_size=40)


def _overflow_pages(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        return int(conn.execute("SELECT count(*) FROM dbstat WHERE name = 'states' AND pagetype = 'overflow'")
                   .fetchone()[0])


def _stored_text(path: Path) -> str:
    with sqlite3.connect(path) as conn:
        return str(conn.execute("SELECT record FROM states WHERE kind = ? AND key = ?", KEY).fetchone()[0])


@settings(max_examples=40, deadline=None)
@given(size=st.integers(min_value=0, max_value=20_000), word=_TEXT, version=st.integers(1, 2**40))
def test_a_padded_row_reads_the_same_and_takes_no_more_pages(tmp_path_factory: object, size: int, word: str,
                                                             version: int) -> None:
    """Any record (ASCII or not, any size): read back equal by this and another store; the file holds its JSON
    followed by spaces only; it has as many overflow pages as the unpadded row."""
    base = tmp_path_factory.mktemp("pad")  # type: ignore[attr-defined]
    record = {"families": "x" * size + word, "version": version}
    state = StoredState(KEY, version, record)
    store = SQLiteStore(base / "padded.db")
    try:
        assert store.put_state(state, expected_version=0)
        assert store.state(KEY) == state
    finally:
        store.close()
    reader = SQLiteStore(base / "padded.db")
    try:
        assert reader.state(KEY) == state
    finally:
        reader.close()
    text = _stored_text(base / "padded.db")
    plain = orjson.dumps(record, option=orjson.OPT_SORT_KEYS).decode()
    assert text.rstrip(" ") == plain and text.startswith(plain)
    raw = base / "plain.db"
    with sqlite3.connect(raw) as conn:  # the same row unpadded, in a table of the same shape
        conn.execute("CREATE TABLE states (kind TEXT NOT NULL, key TEXT NOT NULL, version INTEGER NOT NULL, "
                     "record TEXT NOT NULL, PRIMARY KEY (kind, key))")
        conn.execute("INSERT INTO states VALUES (?, ?, ?, ?)", (*KEY, version, plain))
    assert _overflow_pages(base / "padded.db") == _overflow_pages(raw)


def test_a_growing_row_keeps_one_size_within_its_pages(tmp_path: Path) -> None:
    """A record growing by 100 characters a write from 4.5 to 8 KB (one overflow page) is stored at one length."""
    store = SQLiteStore(tmp_path / "ledger.db")
    try:
        lengths = set()
        for version, size in enumerate(range(4_500, 8_000, 100), start=1):
            assert store.put_state(StoredState(KEY, version, {"families": "x" * size}), expected_version=version - 1)
            lengths.add(len(_stored_text(tmp_path / "ledger.db")))
        assert len(lengths) == 1
    finally:
        store.close()
