"""The row of one loop scope: its request families, its turns and its lock (see :mod:`.loops`).

One state row per loop scope (``loop``, ``level:scope``). Its size is bounded whatever
the texts' length: at most ``history_max`` entries of fixed size (a fingerprint of 32 hex
digits, a sketch of at most 256, a template key of 16) and ``alternation_turns_max + 1``
agents of turns. In the row a sketch is written as ``~`` and the base64 of its bytes (two thirds
of its hex; a 32-entry row in the bench is 6.8 KB, not 8.4); a row written before that, with hex
sketches, still reads. Pure: no I/O and no clock.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

import orjson

from comptroller.domain.defenses import _records as rec
from comptroller.domain.defenses.loop_lock import LoopLock
from comptroller.domain.defenses.verdict import JsonScalar
from comptroller.domain.scopes import Level

__all__ = ["LoopEntry", "LoopHistory"]


@dataclass(frozen=True, slots=True)
class LoopEntry:
    """One request family of a loop history: who, its identity, how often in the current run, when.

    Attributes:
        agent: the agent that sends it.
        fingerprint: the request's fingerprint (first 32 hex digits; "" if none).
        sketch: the :func:`.similarity.mask_volatile` text's :class:`.similarity.Sketch` as hex
            ("" for short or no text).
        count: admissions in the current run (a gap of ``lookback_s`` starts a new run).
        first_at, last_at: the run's first and last admission.
        last_call_id: the last call admitted in it (a repeated admission is idempotent).
        template: :func:`.similarity.template_key` of the last admission's text ("" for short or no text).
        reserved_mc: the ceilings its admissions in the run reserved, millicents.
    """

    agent: str
    fingerprint: str
    sketch: str
    count: int
    first_at: datetime
    last_at: datetime
    last_call_id: str
    template: str = ""
    reserved_mc: int = 0
    _row: str = field(default="", init=False, repr=False, compare=False)  # the JSON row, encoded once, when written

    def row(self) -> str:
        """The entry as a JSON list (its sketch packed by :func:`_packed`), encoded at the first call only."""
        if not self._row:
            object.__setattr__(
                self,
                "_row",
                orjson.dumps(
                    [
                        self.agent,
                        self.fingerprint,
                        _packed(self.sketch),
                        self.count,
                        self.first_at.timestamp(),
                        self.last_at.timestamp(),
                        self.last_call_id,
                        self.template,
                        self.reserved_mc,
                    ]
                ).decode(),
            )
        return self._row


@dataclass(frozen=True, slots=True)
class LoopHistory:
    """Request families and turns of one loop scope, and its lock; one row per scope in a store.

    Attributes:
        level, scope: the loop scope (conversation, else agent).
        entries: the families, least recently seen first.
        turns: the agents of the last turns, oldest first (the alternation detector's input).
        turn_at: when the last turn was admitted.
        lock: the lock-out state.
        version: incremented by every change; the compare-and-set token.
    """

    level: Level
    scope: str
    entries: tuple[LoopEntry, ...] = ()
    turns: tuple[str, ...] = ()
    turn_at: datetime | None = None
    lock: LoopLock = field(default_factory=LoopLock)
    version: int = 0

    def to_record(self) -> dict[str, JsonScalar]:
        """A flat JSON record (entries and turns as JSON text, times as UTC epoch seconds)."""
        entries = "[" + ",".join(map(LoopEntry.row, self.entries)) + "]"  # each entry's row is encoded once
        return {
            "level": str(self.level),
            "scope": self.scope,
            "entries": entries,
            "turns": orjson.dumps(self.turns).decode(),
            "turn_at": None if self.turn_at is None else self.turn_at.timestamp(),
            **self.lock.to_record(),
            "version": self.version,
        }

    @classmethod
    def from_record(cls, record: Mapping[str, JsonScalar]) -> LoopHistory:
        """Read a record written by :meth:`to_record`. Raises ValueError on a missing or mistyped field."""
        raw = orjson.loads(rec.get_str(record, "entries"))
        turns = orjson.loads(str(record.get("turns") or "[]"))
        try:
            entries = tuple(_entry(*row) for row in raw)
        except (TypeError, ValueError):
            raise ValueError(
                f"state record field 'entries' must be a JSON list of [agent, fingerprint, "
                f"sketch, count, first_at, last_at, last_call_id, template, reserved_mc] rows "
                f"(the last two optional), got {raw!r:.200}"
            ) from None
        turn_at = record.get("turn_at")
        return cls(
            level=Level(rec.get_str(record, "level")),
            scope=rec.get_str(record, "scope"),
            entries=entries,
            turns=tuple(str(t) for t in turns),
            turn_at=None if turn_at is None else _at(turn_at),
            lock=LoopLock.from_record(record),
            version=rec.get_int(record, "version"),
        )


def _entry(*row: object) -> LoopEntry:
    """One entry row (rows written before templates were kept have 7 fields, without the last two)."""
    agent, fp, sketch, count, first_at, last_at, call_id, *rest = row
    template, reserved_mc = rest if len(rest) == 2 else ("", 0) if not rest else (None, None)
    if type(count) is not int or type(reserved_mc) is not int:
        raise TypeError("count and reserved_mc must be integers")
    return LoopEntry(
        str(agent),
        str(fp),
        _unpacked(str(sketch)),
        count,
        _at(first_at),
        _at(last_at),
        str(call_id),
        str(template),
        reserved_mc,
    )


_PACKED = "~"  # marks a base64 sketch (a hex one never starts with it)


def _packed(sketch_hex: str) -> str:
    """A sketch's hex as the row writes it: ``~`` and the base64 of its bytes ("" stays "")."""
    return _PACKED + base64.b64encode(bytes.fromhex(sketch_hex)).decode() if sketch_hex else ""


def _unpacked(sketch: str) -> str:
    """A row's sketch as hex (:func:`_packed`'s, or a hex one as older rows wrote it). Raises ValueError."""
    if not sketch.startswith(_PACKED):
        return sketch
    try:
        return base64.b64decode(sketch[1:], validate=True).hex()
    except binascii.Error:
        raise ValueError(f"a loop entry's sketch is not base64: {sketch!r:.80}") from None


def _at(value: object) -> datetime:
    return datetime.fromtimestamp(float(value), UTC)  # type: ignore[arg-type]  # checked by the caller's except
