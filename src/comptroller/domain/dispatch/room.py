"""A group's room as one ledger state row: the tail of its messages and the decisions to answer retries.

DESIGN.md rule 8 needs the room's recent history (cooldowns, loop tails); every gateway
worker and replica must see the same room, so the room is a state row (kind ``room``,
key ``ns|group``) written by compare-and-set, not a process's memory. To keep the row
small whatever the room's size:

* it holds the last ``messages_max`` messages (default 64; the dispatcher reads at most
  ``cooldown_messages`` and the loop detectors' ``tail_max`` of them), each text cut to
  :data:`TEXT_CHARS_KEPT` characters (what loop detection compares), with the SHA-256 of the
  whole text so a reused id with other content is still told apart;
* it remembers the ids of the last :data:`IDS_KEPT` messages (a reused id is refused);
* it keeps the full decision of the last :data:`DECISIONS_KEPT` dispatched messages, so a
  retried post answers the first decision; an older retry is told its decision is no longer kept.

Pure: no I/O and no clock.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from comptroller.domain.dispatch.budget import Mode
from comptroller.domain.dispatch.dispatcher import Dispatch, LeftOut, Pick, Reason
from comptroller.domain.dispatch.errors import MessageError
from comptroller.domain.dispatch.group import Kind
from comptroller.domain.dispatch.loops import LoopFinding, LoopKind
from comptroller.domain.dispatch.message import Message

__all__ = ["DECISIONS_KEPT", "IDS_KEPT", "ROOM", "TEXT_CHARS_KEPT", "Room", "decision_from_record"]

ROOM = "room"
TEXT_CHARS_KEPT = 4_096
IDS_KEPT = 1_024
DECISIONS_KEPT = 16


def _digest(message: Message) -> str:
    """The content of a message as a retry must repeat it (author, kind, mentions, whole text; not ``at``)."""
    content = json.dumps([message.author, str(message.kind), list(message.mentions), message.text])
    return hashlib.sha256(content.encode()).hexdigest()


def decision_from_record(record: Mapping[str, Any]) -> Dispatch:
    """Read :meth:`Dispatch.to_record` back. Raises KeyError/ValueError on a malformed record."""
    loop = record["loop"]
    finding = None
    if loop is not None:
        evidence = {k: v for k, v in loop.items() if k not in ("kind", "agents", "detail")}
        finding = LoopFinding(LoopKind(loop["kind"]), tuple(loop["agents"]), loop["detail"], evidence)
    return Dispatch(
        group=record["group"], message=record["message"], mode=Mode(record["mode"]), k=record["k"],
        remaining=record["remaining"],
        responders=tuple(Pick(p["agent"], Reason(p["reason"]), p["score"]) for p in record["responders"]),
        left_out=tuple(LeftOut(x["agent"], Reason(x["reason"]), x["detail"]) for x in record["left_out"]),
        loop=finding)


def _message_record(message: Message) -> dict[str, Any]:
    return {"id": message.id, "author": message.author, "text": message.text[:TEXT_CHARS_KEPT],
            "at": message.at.isoformat(), "kind": str(message.kind), "mentions": list(message.mentions)}


def _message(entry: Mapping[str, Any]) -> Message:
    return Message(entry["id"], entry["author"], entry["text"], datetime.fromisoformat(entry["at"]),
                   Kind(entry["kind"]), tuple(entry["mentions"]))


@dataclass(frozen=True, slots=True)
class Room:
    """One group's room as the ledger keeps it.

    Attributes:
        group: the group id.
        messages: the tail, oldest first (texts cut to :data:`TEXT_CHARS_KEPT`).
        seen: ``(message id, content digest)`` of the last :data:`IDS_KEPT` messages, oldest first.
        decisions: message id -> the decision's record, for the last :data:`DECISIONS_KEPT` dispatches.
        version: incremented by every change; the compare-and-set token.
    """

    group: str
    messages: tuple[Message, ...] = ()
    seen: tuple[tuple[str, str], ...] = ()
    decisions: tuple[tuple[str, Mapping[str, Any]], ...] = ()
    version: int = 0

    def to_record(self) -> dict[str, str | int]:
        """A flat JSON record (the lists as JSON text)."""
        return {"group": self.group, "version": self.version,
                "messages": json.dumps([_message_record(m) for m in self.messages]),
                "seen": json.dumps([list(s) for s in self.seen]),
                "decisions": json.dumps([[m, d] for m, d in self.decisions])}

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Room:
        """Read :meth:`to_record`. Raises ValueError on a malformed record."""
        try:
            return cls(str(record["group"]), tuple(_message(e) for e in json.loads(record["messages"])),
                       tuple((str(i), str(d)) for i, d in json.loads(record["seen"])),
                       tuple((str(m), d) for m, d in json.loads(record["decisions"])), int(record["version"]))
        except (KeyError, TypeError, MessageError) as exc:
            raise ValueError(f"room state record of group {record.get('group')!r} is malformed: {exc}") from None

    def repeat(self, message: Message) -> tuple[bool, Dispatch | None]:
        """(True, the first decision or None if recorded without dispatch) if this id was taken before.

        Raises:
            MessageError: the id was used for other content, or its decision is no longer kept.
        """
        digest = next((d for i, d in self.seen if i == message.id), None)
        if digest is None:
            return False, None
        if digest != _digest(message):
            raise MessageError(f"message id {message.id!r} was already used for another message in this group; "
                               f"give each message its own id")
        decision = next((d for m, d in self.decisions if m == message.id), None)
        return True, None if decision is None else decision_from_record(decision)

    def add(self, message: Message, decision: Dispatch | None, messages_max: int) -> Room:
        """The room after ``message`` (with its decision, None when only recorded), next version."""
        decisions = self.decisions if decision is None else (
            *self.decisions, (message.id, decision.to_record()))[-DECISIONS_KEPT:]
        cut = replace(message, text=message.text[:TEXT_CHARS_KEPT])
        return Room(self.group, (*self.messages, cut)[-messages_max:],
                    (*self.seen, (message.id, _digest(message)))[-IDS_KEPT:], decisions, self.version + 1)
