"""A group chat's members and role rules (DESIGN.md rule 8, after "What 221 AI Agents in One Chat Taught Us").

A :class:`Group` is the room: its members (an agent id, a role, a description of the
member's domain that topical relevance reads, and flags such as ``decides``) and one
:class:`RoleRule` per role saying which kinds of message the role answers, which
roles must answer before it, and whether it is isolated (independence-critical: it
sees the drafts and verdicts, not the room's reactions to them).

A role without a rule answers ``chat`` only. Roles are ordered among one message's
responders by their ``after`` rules (a judge after the critics); a cycle in those
rules is an error, since no order could satisfy it.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType

from comptroller.domain.dispatch.errors import GroupConfigError, RoleRuleCycleError, UnknownMemberError

__all__ = ["Flag", "Group", "Kind", "Member", "RoleRule"]

_ID_CHARS_MAX = 256


class Kind(StrEnum):
    """What a message is: talk, a piece of work to review, or a final decision."""

    CHAT = "chat"
    DRAFT = "draft"
    VERDICT = "verdict"


class Flag(StrEnum):
    """Member flags."""

    DECIDES = "decides"
    """The member may ship a final decision (post a verdict); wrap-ups and loop escalations go to it."""


def _check_id(what: str, value: object) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > _ID_CHARS_MAX:
        raise GroupConfigError(f"{what} must be a non-empty string of at most {_ID_CHARS_MAX} characters, "
                               f"got {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class Member:
    """One agent in a group.

    Attributes:
        agent: the agent id (the ``agent`` of its calls' attribution).
        role: its role, e.g. ``writer``, ``critic``, ``judge``.
        description: what it knows about, in words; topical relevance scores messages against it.
        flags: e.g. ``{Flag.DECIDES}``.

    Raises:
        GroupConfigError: on an empty id or role, or an unknown flag.
    """

    agent: str
    role: str
    description: str = ""
    flags: frozenset[Flag] = frozenset()

    def __post_init__(self) -> None:
        _check_id("member agent", self.agent)
        _check_id(f"role of member {self.agent!r}", self.role)
        if not isinstance(self.description, str):
            raise GroupConfigError(f"description of member {self.agent!r} must be text, got {self.description!r}")
        try:
            object.__setattr__(self, "flags", frozenset(Flag(str(f)) for f in self.flags))
        except ValueError:
            raise GroupConfigError(f"member {self.agent!r} has an unknown flag in {sorted(map(str, self.flags))}; "
                                   f"known flags: {', '.join(Flag)}") from None

    @property
    def decides(self) -> bool:
        """True if the member may ship a final decision."""
        return Flag.DECIDES in self.flags


@dataclass(frozen=True, slots=True)
class RoleRule:
    """What one role answers, after whom, and what it sees.

    Attributes:
        role: the role the rule is for.
        answers: the kinds of message its members may answer unless mentioned
            (e.g. critics ``{draft}``, writers ``{chat, draft}``: writers do not answer verdicts).
        after: roles whose members answer before this role's when both answer one message.
        isolated: independence-critical (critics, judges): its context is
            :func:`~comptroller.domain.dispatch.isolation.visible_history`, not the whole room.
        sees: the kinds an isolated role sees besides its own messages (default drafts and verdicts).

    Raises:
        GroupConfigError: on an empty role, no kind to answer given as a non-set, or a role after itself.
    """

    role: str
    answers: frozenset[Kind] = frozenset({Kind.CHAT})
    after: tuple[str, ...] = ()
    isolated: bool = False
    sees: frozenset[Kind] = frozenset({Kind.DRAFT, Kind.VERDICT})

    def __post_init__(self) -> None:
        _check_id("role rule role", self.role)
        for name in ("answers", "sees"):
            try:
                object.__setattr__(self, name, frozenset(Kind(str(k)) for k in getattr(self, name)))
            except ValueError:
                raise GroupConfigError(f"role rule {self.role!r}: {name} holds an unknown kind in "
                                       f"{sorted(map(str, getattr(self, name)))}; kinds: {', '.join(Kind)}") from None
        object.__setattr__(self, "after", tuple(dict.fromkeys(self.after)))
        if self.role in self.after:
            raise RoleRuleCycleError(f"role rule {self.role!r} says it answers after itself; remove it from `after`")


def _ranks(rules: Mapping[str, RoleRule]) -> dict[str, int]:
    """Depth of each role in the ``after`` graph (0: after nobody); raises on a cycle."""
    ranks: dict[str, int] = {}
    visiting: list[str] = []

    def visit(role: str) -> int:
        if role in ranks:
            return ranks[role]
        if role in visiting:
            cycle = " -> ".join([*visiting[visiting.index(role):], role])
            raise RoleRuleCycleError(f"role rules order roles in a cycle ({cycle}: each answers after the next); "
                                     f"remove one `after` entry to break it")
        visiting.append(role)
        rule = rules.get(role)
        rank = 1 + max((visit(r) for r in rule.after), default=-1) if rule else 0
        visiting.pop()
        ranks[role] = rank
        return rank

    for role in rules:
        visit(role)
    return ranks


@dataclass(frozen=True, slots=True)
class Group:
    """A group chat: its members in a fixed order and its role rules.

    Attributes:
        id: the group id.
        members: the members; their order breaks ties in relevance.
        rules: role rules by role (a role without one answers ``chat``).
        conversation: the conversation id its calls are attributed to (default: ``id``);
            its conversation budget is the group budget.

    Raises:
        GroupConfigError: on no members, a repeated agent, a rule for a role no member
            has, an ``after`` naming such a role; RoleRuleCycleError on a cycle of ``after``.
    """

    id: str
    members: tuple[Member, ...]
    rules: Mapping[str, RoleRule] = field(default_factory=dict)
    conversation: str = ""
    _by_agent: Mapping[str, Member] = field(init=False, repr=False, compare=False)
    _rank: Mapping[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _check_id("group id", self.id)
        object.__setattr__(self, "members", tuple(self.members))
        object.__setattr__(self, "conversation", self.conversation or self.id)
        if not self.members:
            raise GroupConfigError(f"group {self.id!r} has no members; add at least one [[groups.{self.id}.members]]")
        by_agent: dict[str, Member] = {}
        for member in self.members:
            if member.agent in by_agent:
                raise GroupConfigError(f"group {self.id!r} lists agent {member.agent!r} twice; list each agent once")
            by_agent[member.agent] = member
        roles = {m.role for m in self.members}
        for role, rule in self.rules.items():
            if role != rule.role:
                raise GroupConfigError(f"group {self.id!r}: rule filed under {role!r} is for role {rule.role!r}")
            for name in (role, *rule.after):
                if name not in roles:
                    raise GroupConfigError(f"group {self.id!r}: role rule {role!r} names role {name!r}, which no "
                                           f"member has (roles: {', '.join(sorted(roles))})")
        object.__setattr__(self, "rules", MappingProxyType(dict(self.rules)))
        object.__setattr__(self, "_by_agent", MappingProxyType(by_agent))
        object.__setattr__(self, "_rank", MappingProxyType(_ranks(self.rules)))

    def member(self, agent: str) -> Member:
        """The member with this agent id.

        Raises:
            UnknownMemberError: naming the closest members.
        """
        found = self._by_agent.get(agent)
        if found is None:
            close = difflib.get_close_matches(agent, list(self._by_agent), n=3)
            hint = f"; did you mean {', '.join(map(repr, close))}?" if close else f"; members: {self.agent_list()}"
            raise UnknownMemberError(f"{agent!r} is not a member of group {self.id!r}{hint}")
        return found

    def has(self, agent: str) -> bool:
        """True if ``agent`` is a member."""
        return agent in self._by_agent

    def agent_list(self, limit: int = 8) -> str:
        """The first ``limit`` agent ids, comma-separated, for messages."""
        ids = list(self._by_agent)
        return ", ".join(ids[:limit]) + (f" and {len(ids) - limit} more" if len(ids) > limit else "")

    def rule(self, role: str) -> RoleRule:
        """The role's rule, or the default (answers chat, not isolated)."""
        return self.rules.get(role) or RoleRule(role=role)

    def rank(self, role: str) -> int:
        """The role's place in the ``after`` order (0 answers first)."""
        return self._rank.get(role, 0)

    @property
    def deciders(self) -> tuple[Member, ...]:
        """Members with ``decides``, in member order (the first is asked to wrap up or break a loop)."""
        return tuple(m for m in self.members if m.decides)

    def in_order(self, agents: Iterable[str]) -> list[str]:
        """``agents`` reordered so each role comes after the roles its rule names; otherwise order kept."""
        position = {agent: i for i, agent in enumerate(agents)}
        return sorted(position, key=lambda a: (self.rank(self.member(a).role), position[a]))
