"""The row of one loop scope: its request families, its turns and its lock (see :mod:`.loops`).

One state row per loop scope (``loop``, ``level:scope``). Its size is bounded whatever
the texts' length: at most ``history_max`` entries of fixed size (a fingerprint of 32 hex
digits, a sketch of at most 172 base64 characters, a template key of 16) and
``alternation_turns_max + 1`` agents of turns.

The row's ``families`` field holds every entry's nine fields joined by ``|`` (entries one after
another), and ``turns`` each agent after a ``|``: text without a quote, backslash or control
character, so the store's JSON encoder copies it without escaping it (a JSON list nested as a string
had every quote escaped). A field that could hold such a character or a ``|`` (an agent, a fingerprint,
a call id) is written as is when it holds none of them and no ``%``, else percent-encoded
(:func:`urllib.parse.quote`), so reading it back is exact. Rows written before, with a JSON ``entries``
list (sketches in hex, or ``~`` and base64) and JSON ``turns``, still read; a row that reads neither
way is a ValueError (the admission fails closed). In memory a sketch is its base64 form
(:meth:`.similarity.Sketch.to_b64`). Pure: no I/O and no clock.

Entries and histories are slotted dataclasses that are never changed once built (each step
builds new ones): a frozen dataclass costs about four times as much to build in Python 3.11,
and the admission builds one of each per call.
"""

from __future__ import annotations

import binascii
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from operator import attrgetter
from urllib.parse import quote, unquote

import orjson

from comptroller.domain.defenses import _records as rec
from comptroller.domain.defenses.loop_lock import UNTRIPPED, LoopLock
from comptroller.domain.defenses.state_rows import EncodedRecord
from comptroller.domain.defenses.verdict import JsonScalar
from comptroller.domain.scopes import Level

__all__ = ["Columns", "LoopEntry", "LoopHistory", "epoch_s"]

_FIELDS = 9  # of an entry in the families field
_SEP = "|"
# What a raw field may not hold: the separator, "%" (the quoting's escape), what JSON escapes, lone surrogates.
_UNSAFE = re.compile(r'[|%"\\\x00-\x1f\ud800-\udfff]')
_CALL_ID, _AGENT = attrgetter("last_call_id"), attrgetter("agent")
Columns = tuple[tuple[str, ...], tuple[str, ...], tuple[float, ...], tuple[str, ...]]
"""A history's entries as columns: last call ids, agents, last admissions (UTC epoch seconds), row encodings."""


@dataclass(slots=True)
class LoopEntry:
    """One request family of a loop history: who, its identity, how often in the current run, when.

    Never changed once built (see the module docstring).

    Attributes:
        agent: the agent that sends it.
        fingerprint: the request's fingerprint (first 32 hex digits; "" if none).
        sketch: the :func:`.similarity.mask_volatile` text's :class:`.similarity.Sketch` as base64
            (:meth:`.similarity.Sketch.to_b64`; "" for short or no text).
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
    _row: str = field(default="", init=False, repr=False, compare=False)  # the families field's part, once

    def row(self) -> str:
        """The entry's nine fields joined by ``|`` (see the module docstring), encoded at the first call only."""
        if not self._row:
            agent, fingerprint, call_id = self.agent, self.fingerprint, self.last_call_id
            first_at = repr(epoch_s(self.first_at))
            if _UNSAFE.search("".join((agent, fingerprint, call_id))) is not None:  # rare: one scan for the three
                agent, fingerprint, call_id = _field(agent), _field(fingerprint), _field(call_id)
            self._row = _SEP.join(
                (
                    agent,
                    fingerprint,
                    self.sketch,
                    str(self.count),
                    first_at,
                    first_at if self.last_at is self.first_at else repr(epoch_s(self.last_at)),  # a new family
                    call_id,
                    self.template,
                    str(self.reserved_mc),
                )
            )
        return self._row


@dataclass(slots=True)
class LoopHistory:
    """Request families and turns of one loop scope, and its lock; one row per scope in a store.

    Never changed once built (see the module docstring).

    Attributes:
        level, scope: the loop scope (conversation, else agent).
        entries: the families, least recently seen first.
        turns: the agents of the last turns, oldest first (the alternation detector's input).
        turn_at: when the last turn was admitted.
        lock: the lock-out state.
        version: incremented by every change; the compare-and-set token.
        known_columns: the entries' :meth:`columns` when the builder has them (None: built when first asked).
    """

    level: Level
    scope: str
    entries: tuple[LoopEntry, ...] = ()
    turns: tuple[str, ...] = ()
    turn_at: datetime | None = None
    lock: LoopLock = UNTRIPPED
    version: int = 0
    known_columns: Columns | None = field(default=None, repr=False, compare=False)

    def columns(self) -> Columns:
        """The entries' last call ids, agents, last admissions (UTC epoch seconds) and :meth:`LoopEntry.row`
        encodings, in entry order.

        Built once per history (or handed over by the step that built it): the admission scans them
        in C, and fetching an attribute of each entry costs more than comparing it.
        """
        if self.known_columns is None:
            entries = self.entries
            self.known_columns = (
                tuple(map(_CALL_ID, entries)),
                tuple(map(_AGENT, entries)),
                tuple(epoch_s(e.last_at) for e in entries),
                tuple(map(LoopEntry.row, entries)),
            )
        return self.known_columns

    def to_record(self) -> dict[str, JsonScalar]:
        """A flat JSON record (families and turns as ``|``-joined text, times as UTC epoch seconds).

        An :class:`.state_rows.EncodedRecord`: its JSON text is the JSON of the other fields with the
        families field spliced in first (it sorts first and needs no escape), not the whole re-encoded.
        """
        record = self.lock.to_record()
        record["level"] = str(self.level)
        record["scope"] = self.scope
        record["turns"] = "".join(map(_SEP.__add__, map(_known_field, self.turns)))  # each turn after a "|"
        record["turn_at"] = None if self.turn_at is None else epoch_s(self.turn_at)
        record["version"] = self.version
        families = _SEP.join(self.columns()[3])  # each entry's part is encoded once
        rest = orjson.dumps(record, option=orjson.OPT_SORT_KEYS).decode()  # "{...}": every key sorts after "families"
        encoded = EncodedRecord(record, "".join(('{"families":"', families, '",', rest[1:])))
        encoded["families"] = families
        return encoded

    @classmethod
    def from_record(cls, record: Mapping[str, JsonScalar]) -> LoopHistory:
        """Read a record written by :meth:`to_record`, or by the JSON ``entries`` format before it.

        Raises:
            ValueError: on a missing or mistyped field (the row is not read, never half read).
        """
        if "families" in record:
            entries = _families(rec.get_str(record, "families"))
            text = rec.get_str(record, "turns")
            if text and not text.startswith(_SEP):
                raise ValueError(f"state record field 'turns' must be agents each after a '|', got {text!r:.200}")
            turns = tuple(map(_unfield, text.split(_SEP)[1:]))
        else:
            entries = _json_entries(rec.get_str(record, "entries"))
            turns = tuple(str(t) for t in orjson.loads(str(record.get("turns") or "[]")))
        turn_at = record.get("turn_at")
        return cls(
            level=Level(rec.get_str(record, "level")),
            scope=rec.get_str(record, "scope"),
            entries=entries,
            turns=turns,
            turn_at=None if turn_at is None else _at(turn_at),
            lock=LoopLock.from_record(record),
            version=rec.get_int(record, "version"),
        )


def _field(text: str) -> str:
    """A text field as the row writes it: as is, or percent-encoded when it holds an unsafe character."""
    return text if _UNSAFE.search(text) is None else quote(text, safe="", errors="surrogatepass")


@lru_cache(maxsize=4_096)
def _known_field(text: str) -> str:
    """:func:`_field`, memoised (a history's turns are a few agents, encoded at every write)."""
    return _field(text)


_last_epoch: tuple[datetime | None, float] = (None, 0.0)


def epoch_s(at: datetime) -> float:
    """``at.timestamp()``, remembered for the last datetime object asked (an admission's time is asked for
    its new entry, its turn and its columns)."""
    global _last_epoch  # noqa: PLW0603  # one tuple, replaced whole: threads see a matching pair
    last = _last_epoch
    if last[0] is at:
        return last[1]
    seconds = at.timestamp()
    _last_epoch = (at, seconds)
    return seconds


def _unfield(text: str) -> str:
    return unquote(text, errors="surrogatepass") if "%" in text else text


def _families(text: str) -> tuple[LoopEntry, ...]:
    """The entries of a ``families`` field. Raises ValueError on a field count or value that is not an entry's."""
    if not text:
        return ()
    parts = text.split(_SEP)
    if len(parts) % _FIELDS:
        raise ValueError(f"state record field 'families' must hold {_FIELDS} fields per entry, got {text!r:.200}")
    entries = []
    try:
        for row in zip(*[iter(parts)] * _FIELDS, strict=True):  # nine fields at a time
            agent, fp, sketch, count, first_at, last_at, call_id, template, reserved_mc = row
            first = _at(float(first_at))
            entry = LoopEntry(
                _unfield(agent),
                _unfield(fp),
                _b64_sketch(sketch),
                _count(count),
                first,
                first if last_at == first_at else _at(float(last_at)),  # a family seen once
                _unfield(call_id),
                template,
                _count(reserved_mc),
            )
            entry._row = _SEP.join(row)  # its encoding is the text it was read from (it reads back to it)
            entries.append(entry)
    except (TypeError, ValueError, OverflowError, OSError):
        raise ValueError(
            f"state record field 'families' must be entries of agent|fingerprint|sketch|count|first_at|"
            f"last_at|last_call_id|template|reserved_mc, got {text!r:.200}"
        ) from None
    return tuple(entries)


def _json_entries(text: str) -> tuple[LoopEntry, ...]:
    """The entries of a row written before the ``families`` field (a JSON list of lists). Raises ValueError."""
    raw = orjson.loads(text)
    try:
        return tuple(_json_entry(*row) for row in raw)
    except (TypeError, ValueError, OverflowError, OSError):
        raise ValueError(
            f"state record field 'entries' must be a JSON list of [agent, fingerprint, "
            f"sketch, count, first_at, last_at, last_call_id, template, reserved_mc] rows "
            f"(the last two optional), got {raw!r:.200}"
        ) from None


def _json_entry(*row: object) -> LoopEntry:
    """One JSON entry row (rows written before templates were kept have 7 fields, without the last two)."""
    agent, fp, sketch, count, first_at, last_at, call_id, *rest = row
    template, reserved_mc = rest if len(rest) == 2 else ("", 0) if not rest else (None, None)
    if type(count) is not int or type(reserved_mc) is not int or count < 0 or reserved_mc < 0:
        raise TypeError("count and reserved_mc must be integers >= 0")
    return LoopEntry(
        str(agent),
        str(fp),
        _old_sketch(str(sketch)),
        count,
        _at(first_at),
        _at(last_at),
        str(call_id),
        str(template),
        reserved_mc,
    )


_PACKED = "~"  # marked a base64 sketch in the JSON rows (a hex one never starts with it)
_HASH_HEX, _SKETCH_HEX_MAX = 8, 256


def _old_sketch(sketch: str) -> str:
    """A JSON row's sketch (``~`` and base64, or hex) as the base64 kept in memory. Raises ValueError."""
    if not sketch:
        return ""
    if sketch.startswith(_PACKED):
        return _b64_sketch(sketch[1:])
    if len(sketch) % _HASH_HEX or len(sketch) > _SKETCH_HEX_MAX:
        raise ValueError(f"a loop entry's sketch is not whole 8-digit hex hashes: {sketch!r:.80}")
    return binascii.b2a_base64(bytes.fromhex(sketch), newline=False).decode()


def _b64_sketch(sketch: str) -> str:
    """A row's base64 sketch, checked: strict base64 of whole 4-byte hashes, at most 32 ("" stays ""). Raises
    ValueError."""
    if not sketch:
        return ""
    try:
        raw = binascii.a2b_base64(sketch, strict_mode=True)
    except binascii.Error:
        raise ValueError(f"a loop entry's sketch is not base64: {sketch!r:.80}") from None
    if not raw or len(raw) % 4 or 2 * len(raw) > _SKETCH_HEX_MAX:
        raise ValueError(f"a loop entry's sketch is not 1 to 32 hashes of 4 bytes: {sketch!r:.80}")
    return binascii.b2a_base64(raw, newline=False).decode()  # canonical: equal sketches are equal text


def _count(text: str) -> int:
    if not text.isdigit() or not text.isascii():
        raise ValueError(f"not a count: {text!r}")
    return int(text)


def _at(value: object) -> datetime:
    return datetime.fromtimestamp(float(value), UTC)  # type: ignore[arg-type]  # checked by the caller's except
