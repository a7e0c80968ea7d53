"""The guards' parse memo: a hit only for the very record object it parsed, never for another."""

from __future__ import annotations

from collections.abc import Mapping

from comptroller.domain.defenses.chain import ParsedStates
from comptroller.domain.defenses.verdict import JsonScalar
from comptroller.domain.state import StateKey, StoredState

KEY = StateKey("test", "k")


class Counter:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, record: Mapping[str, JsonScalar]) -> object:
        self.calls += 1
        return dict(record)


def test_same_record_object_is_parsed_once_and_an_equal_copy_again() -> None:
    """Identity, not equality, decides: an equal but new record (a row read again) is parsed afresh."""
    memo, parse = ParsedStates(), Counter()
    record = {"v": 1}
    stored = {KEY: StoredState(KEY, 1, record)}
    first = memo.load(stored, KEY, parse, dict)
    assert memo.load(stored, KEY, parse, dict) is first and parse.calls == 1
    changed = {KEY: StoredState(KEY, 2, {"v": 2})}
    assert memo.load(changed, KEY, parse, dict) == {"v": 2} and parse.calls == 2
    assert memo.load({}, KEY, parse, lambda: "missing") == "missing"


def test_a_bounded_memo_starts_over_when_full() -> None:
    """Past entries_max rows the memo forgets and parses again (memory stays bounded)."""
    memo, parse = ParsedStates(entries_max=2), Counter()
    rows = {StateKey("test", str(i)): StoredState(StateKey("test", str(i)), 1, {"i": i}) for i in range(3)}
    for key in rows:
        memo.load(rows, key, parse, dict)
    memo.load(rows, StateKey("test", "0"), parse, dict)
    assert parse.calls == 4
