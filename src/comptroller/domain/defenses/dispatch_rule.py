"""Dispatch enforced at admit: in a ``strict`` group, only a member dispatched for a message may answer it.

Source: DESIGN.md rule 8 ("What 221 AI Agents in One Chat Taught Us": every agent paid to
read the room and 10-20 % did the work; thundering herds answered one message at once).
Advice is not enough: an agent the dispatcher left out can still call a model in the
group's conversation. In a group whose mode is ``strict`` the admit guard refuses such a
call with ``not_dispatched``, inside the reservation's transaction, so the refused call
reserves nothing and consumes no retry, loop slot or probe lease.

The state is one row per group conversation (kind ``dispatch``, key ``ns|conversation``,
the same for every tenant, so a call is checked whatever scope its gateway worker gave it):
the group's id and mode, and the responders of its last :data:`DISPATCHES_KEPT` dispatched
messages, oldest first. The group service writes it (compare-and-set) after each dispatch
and when a group is created, changed or removed; the guard only reads it.

Which message a call answers: the id it names (``X-Comptroller-Message`` through the
gateway, ``CallRequest.message_id`` in Python), else the room's latest dispatched message.
A member answering an earlier message names it, so a slow responder is not refused
because the room moved on; an id no longer among the last :data:`DISPATCHES_KEPT` is refused.

Pure: no I/O and no clock.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum

from comptroller.domain.codes import Code
from comptroller.domain.defenses import _records as rec
from comptroller.domain.defenses.verdict import JsonScalar, Rule, Verdict
from comptroller.domain.scopes import Attribution, Level, scope_key
from comptroller.domain.state import StateKey

__all__ = ["DISPATCH", "DISPATCHES_KEPT", "DispatchGate", "GroupMode", "check_dispatched", "gate_key"]

DISPATCH = "dispatch"
DISPATCHES_KEPT = 64
"""Dispatched messages a gate remembers (a member may answer any of them)."""


class GroupMode(StrEnum):
    """How a group's dispatch binds: ``advisory`` (the decision is advice) or ``strict`` (enforced at admit)."""

    ADVISORY = "advisory"
    STRICT = "strict"


def gate_key(namespace: str, conversation: str) -> StateKey:
    """The gate row of a group conversation: ``dispatch`` / ``ns|conversation`` (tenant-free)."""
    return StateKey(DISPATCH, scope_key(namespace, conversation))


@dataclass(frozen=True, slots=True)
class DispatchGate:
    """Who may answer which message in one group conversation, as a store keeps it.

    Attributes:
        group: the group id.
        mode: ``strict`` refuses undispatched members' calls; ``advisory`` checks nothing.
        dispatched: ``(message id, responders)`` of the last dispatched messages, oldest first.
        version: incremented by every change; the compare-and-set token.
    """

    group: str
    mode: GroupMode = GroupMode.ADVISORY
    dispatched: tuple[tuple[str, tuple[str, ...]], ...] = ()
    version: int = 0

    def to_record(self) -> dict[str, JsonScalar]:
        """A flat JSON record (``dispatched`` as JSON text)."""
        return {"group": self.group, "mode": str(self.mode), "version": self.version,
                "dispatched": json.dumps([[m, list(agents)] for m, agents in self.dispatched])}

    @classmethod
    def from_record(cls, record: Mapping[str, JsonScalar]) -> DispatchGate:
        """Read :meth:`to_record`. Raises ValueError on a missing or mistyped field."""
        raw = json.loads(rec.get_str(record, "dispatched"))
        try:
            dispatched = tuple((str(m), tuple(str(a) for a in agents)) for m, agents in raw)
        except (TypeError, ValueError):
            raise ValueError(f"state record field 'dispatched' must be [message, [agents]] rows, "
                             f"got {raw!r:.200}") from None
        return cls(rec.get_str(record, "group"), GroupMode(rec.get_str(record, "mode")), dispatched,
                   rec.get_int(record, "version"))

    def with_mode(self, group: str, mode: GroupMode) -> DispatchGate:
        """The gate of a (re)defined group: its id and mode (the next version if either changed)."""
        if (group, mode) == (self.group, self.mode):
            return self
        return replace(self, group=group, mode=mode, version=self.version + 1)

    def with_dispatch(self, message_id: str, agents: Sequence[str]) -> DispatchGate:
        """The gate after a dispatch (unchanged if the message is already there: a retry)."""
        if any(m == message_id for m, _ in self.dispatched):
            return self
        kept = (*self.dispatched, (message_id, tuple(agents)))[-DISPATCHES_KEPT:]
        return replace(self, dispatched=kept, version=self.version + 1)

    def responders(self, message_id: str | None) -> tuple[str, tuple[str, ...]] | None:
        """``(message id, responders)`` of the named message, or of the latest one (None: not kept)."""
        if message_id is None:
            return self.dispatched[-1] if self.dispatched else None
        return next(((m, agents) for m, agents in self.dispatched if m == message_id), None)


def check_dispatched(gate: DispatchGate, attribution: Attribution, message_id: str | None) -> Verdict | None:
    """Refuse a call in a strict group's conversation by a member not dispatched for the message it answers.

    Args:
        gate: the conversation's gate as read.
        attribution: who calls (its ``agent`` must be among the message's responders).
        message_id: the message the call answers (None: the latest dispatched message).

    Returns:
        None when the group is advisory or the agent was dispatched; else a ``not_dispatched``
        verdict (``retry_after_s`` None: waiting alone never helps, a dispatch naming the agent does).
    """
    if gate.mode is not GroupMode.STRICT:
        return None
    found = gate.responders(message_id)
    agent = attribution.agent
    if found is not None and agent in found[1]:
        return None
    scope = dict(attribution.scopes())[Level.CONVERSATION]
    if not attribution.conversation_shared:  # a worker that has not loaded the group yet: say nothing of it
        found = None if found is None else (found[0], ())
    evidence: dict[str, JsonScalar] = {"group": gate.group, "agent": agent, "message_id": message_id}
    if found is None:
        detector = "no_dispatch" if message_id is None else "unknown_message"
        what = ("no message has been dispatched in it yet" if message_id is None else
                f"message {message_id!r} is not among its last {DISPATCHES_KEPT} dispatched messages")
    else:
        detector = "not_dispatched"
        evidence |= {"message_id": found[0], "responders": ",".join(found[1])}
        responders = f" (responders: {', '.join(found[1])})" if found[1] else ""
        what = f"agent {agent!r} was not dispatched for message {found[0]!r}{responders}"
    return Verdict(
        code=Code.NOT_DISPATCHED, rule=Rule.DISPATCH, detector=detector, level=Level.CONVERSATION, scope=scope,
        retry_after_s=None, evidence=evidence,
        message=(f"not_dispatched: group {gate.group!r} is strict and {what}, so this call in its conversation "
                 f"was refused. Answer only a message you were dispatched for (name it with X-Comptroller-Message; "
                 f"default: the latest), or post a message that mentions @{agent}: "
                 f"POST /v1/groups/{gate.group}/dispatch."))
