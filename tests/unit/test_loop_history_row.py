"""The loop history row's sketch encoding: base64 in the row, hex in memory; older hex rows still read."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
import pytest

from comptroller.domain.defenses.loop_history import LoopEntry, LoopHistory
from comptroller.domain.scopes import Level

T0 = datetime(2025, 1, 6, 12, 0, tzinfo=UTC)
SKETCH = "06b14e2918075a4a3dd995dd4b2cc4037897880b78b74e9f813b530a8860fc8a"


def _history(sketch: str) -> LoopHistory:
    entry = LoopEntry("agent-0", "9ebf59f55e6219e282b492df361cdc3c", sketch, 2, T0, T0, "c-1", "0b1e63fe436cd543", 80)
    return LoopHistory(Level.CONVERSATION, "ns|t|c", entries=(entry,), turns=("agent-0",), turn_at=T0, version=4)


@pytest.mark.parametrize("sketch", [SKETCH, ""])
def test_a_history_round_trips_and_its_row_holds_the_sketch_as_base64(sketch: str) -> None:
    """to_record then from_record gives the same history; the row's sketch is "~" + base64, shorter than hex."""
    history = _history(sketch)
    record = history.to_record()
    assert LoopHistory.from_record(record) == history
    if sketch:
        row = orjson.loads(str(record["entries"]))[0]
        assert row[2].startswith("~") and len(row[2]) < len(sketch)


def test_a_row_written_with_hex_sketches_still_reads() -> None:
    """A row from before the base64 encoding (hex sketches) reads to the same hex sketch."""
    record = _history(SKETCH).to_record()
    rows = orjson.loads(str(record["entries"]))
    rows[0][2] = SKETCH  # how rows were written before
    old = {**record, "entries": orjson.dumps(rows).decode()}
    assert LoopHistory.from_record(old).entries[0].sketch == SKETCH


def test_a_sketch_that_is_not_base64_is_refused() -> None:
    """A "~" sketch that is not base64 is a ValueError naming the entries field (fail closed on a bad row)."""
    record = _history(SKETCH).to_record()
    rows = orjson.loads(str(record["entries"]))
    rows[0][2] = "~not base64!"
    with pytest.raises(ValueError, match="entries"):
        LoopHistory.from_record({**record, "entries": orjson.dumps(rows).decode()})
