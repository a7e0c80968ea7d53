"""Attribution of a call and the budget scopes it falls under.

A call is attributed to a namespace (the platform), a tenant (a user or customer),
an agent, optionally a conversation (a 1:1 chat, a group, a task channel), a task,
and a phase (a label for reports, never budgeted). From it derive the scopes whose
budgets apply (DESIGN.md rule 1, after KinthAI's "Your AI Agent Needs a Wallet"):

=====================  =========================================  ==============
level                  scope key                                  needs
=====================  =========================================  ==============
``namespace``          ``ns``                                     always
``tenant``             ``ns|tenant``                              always
``agent``              ``ns|tenant|agent``                        always
``agent_conversation`` ``ns|tenant|agent|conversation``           conversation
``conversation``       ``ns|conversation`` (the group budget)     conversation
``task``               ``ns|task``                                task
=====================  =========================================  ==============

A conversation belongs to the namespace, not to one tenant, so a group budget is
shared by every agent in the room whoever owns it. Key parts are joined with
``|``; a ``|`` or ``\\`` inside an id is escaped with a backslash.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

__all__ = ["LEVELS", "Attribution", "AttributionError", "Level", "scope_key"]

_MAX_ID_LEN = 256


class AttributionError(ValueError):
    """An attribution id is empty, too long or not a string."""


class Level(StrEnum):
    """The levels a budget can be set on, broadest first."""

    NAMESPACE = "namespace"
    TENANT = "tenant"
    AGENT = "agent"
    AGENT_CONVERSATION = "agent_conversation"
    CONVERSATION = "conversation"
    TASK = "task"


LEVELS: tuple[Level, ...] = tuple(Level)


def _escape(part: str) -> str:
    return part.replace("\\", "\\\\").replace("|", "\\|")


def scope_key(*parts: str) -> str:
    """Join attribution ids into one scope key, escaping ``|`` and ``\\``."""
    return "|".join(_escape(p) for p in parts)


def _check_id(name: str, value: str | None, *, required: bool) -> None:
    if value is None:
        if required:
            raise AttributionError(f"attribution.{name} is required")
        return
    if not isinstance(value, str) or not value.strip():
        raise AttributionError(f"attribution.{name} must be a non-empty string, got {value!r}")
    if len(value) > _MAX_ID_LEN:
        raise AttributionError(f"attribution.{name} is {len(value)} characters; the limit is {_MAX_ID_LEN}")


@dataclass(frozen=True, slots=True)
class Attribution:
    """Who a call is for.

    Attributes:
        namespace: the platform (default ``"default"``).
        tenant: the user or customer (default ``"default"``).
        agent: the agent making the call (default ``"default"``).
        conversation: the chat the call belongs to, if any.
        task: the task the call works on, if any.
        phase: a free label for reports (e.g. ``Coding``); never budgeted.

    Raises:
        AttributionError: on an empty or over-long id (256 characters at most).
    """

    namespace: str = "default"
    tenant: str = "default"
    agent: str = "default"
    conversation: str | None = None
    task: str | None = None
    phase: str | None = None

    def __post_init__(self) -> None:
        for name in ("namespace", "tenant", "agent"):
            _check_id(name, getattr(self, name), required=True)
        for name in ("conversation", "task", "phase"):
            _check_id(name, getattr(self, name), required=False)

    def scopes(self) -> tuple[tuple[Level, str], ...]:
        """``(level, scope key)`` for every level that applies to this call, broadest first."""
        ns, tenant, agent = self.namespace, self.tenant, self.agent
        out: list[tuple[Level, str]] = [
            (Level.NAMESPACE, scope_key(ns)),
            (Level.TENANT, scope_key(ns, tenant)),
            (Level.AGENT, scope_key(ns, tenant, agent)),
        ]
        if self.conversation is not None:
            out.append((Level.AGENT_CONVERSATION, scope_key(ns, tenant, agent, self.conversation)))
            out.append((Level.CONVERSATION, scope_key(ns, self.conversation)))
        if self.task is not None:
            out.append((Level.TASK, scope_key(ns, self.task)))
        return tuple(out)
