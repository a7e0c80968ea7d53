"""Loop history rows as earlier versions wrote them (a JSON ``entries`` list, JSON ``turns``), for the reading tests."""

from __future__ import annotations

import base64

import orjson

from comptroller.domain.defenses.loop_history import LoopHistory
from comptroller.domain.defenses.verdict import JsonScalar


def old_sketch(sketch_b64: str, *, packed: bool) -> str:
    """A sketch as a JSON row held it: ``~`` and base64 (``packed``), or hex before that ("" stays "")."""
    if not sketch_b64:
        return ""
    return "~" + sketch_b64 if packed else base64.b64decode(sketch_b64).hex()


def old_rows(history: LoopHistory, *, packed: bool = True) -> list[list[object]]:
    """The JSON ``entries`` rows of ``history`` as the format before the ``families`` field wrote them."""
    return [
        [e.agent, e.fingerprint, old_sketch(e.sketch, packed=packed), e.count, e.first_at.timestamp(),
         e.last_at.timestamp(), e.last_call_id, e.template, e.reserved_mc]
        for e in history.entries
    ]


def old_record(history: LoopHistory, *, packed: bool = True,
               rows: list[list[object]] | None = None) -> dict[str, JsonScalar]:
    """``history``'s record in the format before the ``families`` field (``rows`` instead of its own, if given)."""
    record = history.to_record()
    del record["families"]
    record["entries"] = orjson.dumps(old_rows(history, packed=packed) if rows is None else rows).decode()
    record["turns"] = orjson.dumps(history.turns).decode()
    return record
