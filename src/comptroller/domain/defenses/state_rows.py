"""The defenses' state rows: their kinds and keys, a memo of parsed records, a guard's pending changes.

See :mod:`comptroller.domain.defenses.chain` for the table of kinds and what each row holds.
Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

import orjson

from comptroller.domain.defenses.verdict import JsonScalar, Verdict
from comptroller.domain.ledger import Event, ReserveRequest
from comptroller.domain.scopes import Level
from comptroller.domain.state import GuardOutcome, StateKey, StoredState

__all__ = [
    "BREAKER",
    "FAN_OUT",
    "JSON_INT_MAX",
    "JSON_INT_MIN",
    "KILL",
    "LOOP",
    "PIN_DRIFT",
    "RATE",
    "RETRY",
    "RUN",
    "Changes",
    "EncodedRecord",
    "ParsedStates",
    "scoped_key",
    "stored_state",
    "text_parts",
]

BREAKER, KILL, RETRY, LOOP, RUN, RATE = "breaker", "kill_switch", "retry", "loop", "run", "rate"
FAN_OUT = "fan_out"
PIN_DRIFT = "pin_drift"


class EncodedRecord(dict[str, JsonScalar]):
    """A state record that carries its JSON text, keys sorted, as a store would write it (a store writes that text
    instead of encoding the record again).

    A state whose record holds one long field that needs no JSON escape (the loop history's families)
    splices it into the JSON of its other fields: a copy, where the encoder would scan it byte by byte.
    Never changed once built, like every state record.

    Args:
        fields: the record's fields.
        json_text: ``orjson.dumps(record, option=OPT_SORT_KEYS)`` as text, of the record handed out (the builder
            guarantees it; it may set fields of the new record before handing it out).
    """

    __slots__ = ("json_text",)

    def __init__(self, fields: Mapping[str, JsonScalar], json_text: str) -> None:
        super().__init__(fields)
        self.json_text = json_text


def text_parts(record: Mapping[str, JsonScalar], names: tuple[str, ...]) -> tuple[str, ...] | None:
    """The JSON text of ``record`` (keys sorted, as ``orjson.dumps(..., option=OPT_SORT_KEYS)`` writes it) cut around
    the values of ``names``; None if it cannot be cut so.

    With ``parts`` so cut, ``parts[0] + str(v[0]) + parts[1] + ... + parts[-1]`` is the JSON text of ``record``
    with ``names`` set to the integers ``v`` (each from :data:`JSON_INT_MIN` to :data:`JSON_INT_MAX`): a state
    whose next record only moves integer counters builds its text without the encoder (a 22-field breaker
    row: ~5 k instructions instead of ~15 k).

    Args:
        record: a flat JSON record holding every name.
        names: fields in sorted order (the order of their values in the text).

    Raises:
        TypeError: when ``record`` is not JSON (orjson refuses it).
    """
    probe = dict(record)
    marks = [f"\x00{i}\x00" for i in range(len(names))]  # sentinels no field of a state row holds (checked below)
    for name, mark in zip(names, marks, strict=True):
        if name not in probe:
            return None
        probe[name] = mark
    text = orjson.dumps(probe, option=orjson.OPT_SORT_KEYS).decode()
    parts: list[str] = []
    for mark in marks:
        quoted = orjson.dumps(mark).decode()
        if text.count(quoted) != 1:
            return None
        head, _, text = text.partition(quoted)  # a mark out of order is then not in the rest: None above
        parts.append(head)
    parts.append(text)
    return tuple(parts)


JSON_INT_MIN, JSON_INT_MAX = -(2**63), 2**64 - 1
"""The integers orjson writes (it refuses others)."""


_new = object.__new__
_set_key, _set_version, _set_record = (vars(StoredState)[name].__set__ for name in ("key", "version", "record"))


def stored_state(key: StateKey, version: int, record: Mapping[str, JsonScalar]) -> StoredState:
    """``StoredState(key, version, record)`` with its slots set directly: a frozen dataclass's ``__init__`` pays
    an ``object.__setattr__`` per field (~5.8 k instructions, ~3.6 k so); a guard writes a few per call."""
    state = _new(StoredState)
    _set_key(state, key)
    _set_version(state, version)
    _set_record(state, record)
    return state


def scoped_key(kind: str, level: Level, scope: str) -> StateKey:
    """The state key of a per-scope state (``level:scope``; levels contain no ``:``)."""
    return StateKey(kind, f"{level}:{scope}")


class _Versioned(Protocol):
    @property
    def version(self) -> int: ...

    def to_record(self) -> dict[str, JsonScalar]: ...


_S = TypeVar("_S")


class ParsedStates:
    """A memo of parsed state records, keyed by the record object itself (one per engine).

    A store hands out the same record object while its row is unchanged (memory always;
    SQLite while the row's text is unchanged), and the record a guard writes is memoised
    with the state it came from, so most reads skip parsing. The memo holds each record
    object, so an identity match is always the same record. Bounded; safe across threads
    (a race only costs a parse).

    Args:
        entries_max: rows remembered; beyond it the memo starts over.
    """

    def __init__(self, entries_max: int = 16_384) -> None:
        self._memo: dict[StateKey, tuple[Mapping[str, JsonScalar], object]] = {}
        self._entries_max = entries_max

    def load(self, states: Mapping[StateKey, StoredState], key: StateKey,
             parse: Callable[[Mapping[str, JsonScalar]], _S], default: Callable[[], _S]) -> _S:
        """The parsed state of ``key`` (``default()`` when the row does not exist)."""
        stored = states.get(key)
        if stored is None:
            return default()
        hit = self._memo.get(key)
        if hit is not None and hit[0] is stored.record:
            return hit[1]  # type: ignore[return-value]  # memoised from parse(record) of this very object
        value = parse(stored.record)
        self._remember(key, stored.record, value)
        return value

    def write(self, key: StateKey, before: _Versioned, after: _Versioned) -> tuple[StoredState, ...]:
        """The write of a changed state (none if its version did not move), memoised for the next read."""
        if after.version == before.version:
            return ()
        record = after.to_record()
        self._remember(key, record, after)
        return (stored_state(key, after.version, record),)

    def _remember(self, key: StateKey, record: Mapping[str, JsonScalar], value: object) -> None:
        if len(self._memo) >= self._entries_max:
            self._memo.clear()
        self._memo[key] = (record, value)


@dataclass
class Changes:
    """What a guard's checks decided to write and append so far (a refusal's own in ``kept_*``)."""

    writes: list[StoredState] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    kept_writes: list[StoredState] = field(default_factory=list)  # a refusal's own state (a loop lock tripping)
    kept_events: list[Event] = field(default_factory=list)

    def outcome(self, verdict: Verdict | None = None, request: ReserveRequest | None = None) -> GuardOutcome:
        """The guard's answer: ``verdict`` (None: admit), these writes and events, ``request`` (a downgrade)."""
        return GuardOutcome(verdict, tuple(self.writes), tuple(self.events), request)
