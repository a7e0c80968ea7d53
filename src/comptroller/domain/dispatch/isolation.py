"""Isolation views: what an independence-critical role may read of the room (DESIGN.md rule 8).

"Critics and judges see the drafts, not the room's reactions" ("What 221 AI Agents
in One Chat Taught Us"): a critic that reads the writers' replies to its critiques
drifts toward the room's mood, and a judge that reads the lobbying is no longer
independent. For a member whose role rule is ``isolated``, :func:`visible_history`
keeps only the messages of the kinds its rule ``sees`` (drafts and verdicts by
default) and the member's own messages; every other member sees the whole room.
"""

from __future__ import annotations

from collections.abc import Sequence

from comptroller.domain.dispatch.group import Group
from comptroller.domain.dispatch.message import Message

__all__ = ["visible_history"]


def visible_history(group: Group, agent: str, history: Sequence[Message]) -> list[Message]:
    """The messages ``agent`` may read, oldest first.

    Args:
        group: the room.
        agent: a member's agent id.
        history: the room's messages, oldest first.

    Raises:
        UnknownMemberError: if ``agent`` is not a member.
    """
    rule = group.rule(group.member(agent).role)
    if not rule.isolated:
        return list(history)
    return [m for m in history if m.kind in rule.sees or m.author == agent]
