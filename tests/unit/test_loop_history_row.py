"""The loop history row: the ``families`` field round-trips any history, needs no JSON escaping, and rows of the
earlier JSON ``entries`` format (base64 or hex sketches) still read; a row that reads neither way is refused."""

from __future__ import annotations

import base64
import struct
from datetime import UTC, datetime, timedelta

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from loop_rows import old_record, old_rows

from comptroller.domain.defenses.loop_history import LoopEntry, LoopHistory
from comptroller.domain.defenses.loop_lock import LoopLock
from comptroller.domain.defenses.state_rows import EncodedRecord
from comptroller.domain.scopes import Level

T0 = datetime(2025, 1, 6, 12, 0, tzinfo=UTC)
SKETCH_HEX = "06b14e2918075a4a3dd995dd4b2cc4037897880b78b74e9f813b530a8860fc8a"
SKETCH = base64.b64encode(bytes.fromhex(SKETCH_HEX)).decode()


def _history(sketch: str, agent: str = "agent-0") -> LoopHistory:
    entry = LoopEntry(agent, "9ebf59f55e6219e282b492df361cdc3c", sketch, 2, T0, T0, "c-1", "0b1e63fe436cd543", 80)
    return LoopHistory(Level.CONVERSATION, "ns|t|c", entries=(entry,), turns=(agent,), turn_at=T0, version=4)


sketches = st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=32, unique=True).map(
    lambda hashes: base64.b64encode(struct.pack(f">{len(hashes)}I", *sorted(hashes))).decode()
)
names = st.text(max_size=12)  # any code point: separators, quotes, backslashes, "%", control characters, surrogates
times = st.integers(0, 4 * 10**9).map(lambda cs: T0 + timedelta(microseconds=cs * 10_000))
entries = st.builds(
    LoopEntry,
    agent=names,
    fingerprint=st.one_of(st.just(""), names, st.text("0123456789abcdef", min_size=32, max_size=32)),
    sketch=st.one_of(st.just(""), sketches),
    count=st.integers(1, 10**6),
    first_at=times,
    last_at=times,
    last_call_id=names,
    template=st.one_of(st.just(""), st.text("0123456789abcdef", min_size=16, max_size=16)),
    reserved_mc=st.integers(0, 10**15),
)
locks = st.one_of(
    st.just(LoopLock()),
    st.builds(LoopLock, trips=st.integers(1, 9), detector=st.just("near_duplicate"), agent=names,
              sketch=st.just(SKETCH_HEX), opened_at=times, open_until=times, last_trip_at=times),
)
histories = st.builds(
    LoopHistory,
    level=st.sampled_from([Level.CONVERSATION, Level.AGENT]),
    scope=names,
    entries=st.lists(entries, max_size=5).map(tuple),
    turns=st.lists(names, max_size=4).map(tuple),
    turn_at=st.one_of(st.none(), times),
    lock=locks,
    version=st.integers(0, 10**9),
)


@settings(max_examples=300)
@given(histories)
def test_any_history_round_trips_through_its_record_and_its_json(history: LoopHistory) -> None:
    """to_record then the store's JSON and back gives the same history, whatever its agents and call ids hold."""
    record = history.to_record()
    assert LoopHistory.from_record(orjson.loads(orjson.dumps(record))) == history


@settings(max_examples=300)
@given(histories)
def test_the_families_and_turns_fields_need_no_json_escape(history: LoopHistory) -> None:
    """The families and turns fields hold no quote, backslash or control character: JSON writes them as they are."""
    record = history.to_record()
    for name in ("families", "turns"):
        text = str(record[name])
        assert orjson.dumps(text) == b'"' + text.encode("utf-8") + b'"'


@settings(max_examples=200)
@given(histories, st.booleans())
def test_a_row_of_the_json_entries_format_reads_to_the_same_history(history: LoopHistory, packed: bool) -> None:
    """A row written before the families field (JSON entries, sketches as "~" + base64 or as hex) reads to the
    same history; its next write is in the families format."""
    try:
        old = old_record(history, packed=packed)
    except orjson.JSONEncodeError:
        return  # a lone surrogate: the JSON format could not write this history at all
    read = LoopHistory.from_record(orjson.loads(orjson.dumps(old)))
    assert read == history
    assert "families" in read.to_record() and "entries" not in read.to_record()


@settings(max_examples=300)
@given(histories)
def test_the_record_carries_the_json_a_store_would_write(history: LoopHistory) -> None:
    """The record's own JSON text (families spliced in) is exactly the JSON of its fields with keys sorted: a store
    writing it instead of encoding the record writes the same row."""
    record = history.to_record()
    assert isinstance(record, EncodedRecord)
    assert record.json_text == orjson.dumps(dict(record), option=orjson.OPT_SORT_KEYS).decode()


def test_the_row_holds_the_sketch_as_base64() -> None:
    """A sketch is written as the base64 of its hashes (two thirds of its hex)."""
    record = _history(SKETCH).to_record()
    assert SKETCH in str(record["families"]) and SKETCH_HEX not in str(record["families"])


@pytest.mark.parametrize("bad", ["~not base64!", "~" + base64.b64encode(b"abc").decode(), "abc"])
def test_a_json_row_with_a_bad_sketch_is_refused(bad: str) -> None:
    """A JSON row's sketch that is not base64 of whole 4-byte hashes, nor whole hex hashes, is a ValueError naming
    the entries field (fail closed: the admission fails, detection is not skipped)."""
    history = _history(SKETCH)
    rows = old_rows(history)
    rows[0][2] = bad
    with pytest.raises(ValueError, match="entries"):
        LoopHistory.from_record(old_record(history, rows=rows))


@pytest.mark.parametrize(
    "families",
    [
        "a|b",  # not nine fields an entry
        f"a|fp|{SKETCH}|x|1.0|1.0|c||0",  # a count that is not an integer
        f"a|fp|{SKETCH}|-1|1.0|1.0|c||0",  # a negative count
        f"a|fp|{SKETCH}|1|nan|1.0|c||0",  # a time that is not one
        "a|fp|not-base64!|1|1.0|1.0|c||0",  # a sketch that is not base64
        f"a|fp|{base64.b64encode(b'abc').decode()}|1|1.0|1.0|c||0",  # not whole 4-byte hashes
    ],
)
def test_a_families_field_that_does_not_read_is_refused(families: str) -> None:
    """A families field that is not whole entries of valid fields is a ValueError naming it (fail closed)."""
    record = {**_history(SKETCH).to_record(), "families": families}
    with pytest.raises(ValueError, match="families"):
        LoopHistory.from_record(record)
