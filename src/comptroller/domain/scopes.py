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
``conversation``       ``ns|tenant|conversation``                 conversation
                       ``ns|conversation`` (a shared group)       shared conversation
``task``               ``ns|tenant|task``                         task
=====================  =========================================  ==============

Tenants are walls (DESIGN.md rule 13): a conversation or task id a tenant names is
that tenant's, so another tenant naming the same id gets its own scope and can never
spend, read or exhaust it (budgets, re-attempts, loop history and breakers are all
keyed by these scopes). The one exception is a registered shared group (the group
chat of rule 1, ``[groups.NAME]``): its calls carry ``conversation_shared=True`` and
its conversation scope is the namespace's, ``ns|conversation``, one group budget for
every agent in the room whatever its tenant. Whoever sets ``conversation_shared``
(the gateway, the group service) must have checked that the caller's tenant is a
member. The two forms never collide: a shared key has two parts, a tenant's three.
Key parts are joined with ``|``; a ``|`` or ``\\`` inside an id is escaped with a
backslash.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from functools import lru_cache

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
    if "|" not in part and "\\" not in part:  # the usual id: nothing to escape, no copies
        return part
    return part.replace("\\", "\\\\").replace("|", "\\|")


def scope_key(*parts: str) -> str:
    """Join attribution ids into one scope key, escaping ``|`` and ``\\``."""
    return "|".join(map(_escape, parts))


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
        conversation_shared: the conversation is a registered shared group: its scope
            is ``ns|conversation`` (every member's calls share it) instead of the
            tenant's ``ns|tenant|conversation``. Set only after a membership check.
        key_id: the id of the API key the call came with (the gateway sets it), for spend per
            key and per-key rate limits; a label, never a budget scope. None for in-process calls.

    Raises:
        AttributionError: on an empty or over-long id (256 characters at most), or
            ``conversation_shared`` without a conversation.
    """

    namespace: str = "default"
    tenant: str = "default"
    agent: str = "default"
    conversation: str | None = None
    task: str | None = None
    phase: str | None = None
    conversation_shared: bool = False
    key_id: str | None = None

    def __post_init__(self) -> None:
        for name in ("namespace", "tenant", "agent"):
            _check_id(name, getattr(self, name), required=True)
        for name in ("conversation", "task", "phase", "key_id"):
            _check_id(name, getattr(self, name), required=False)
        if self.conversation_shared is not False and (self.conversation_shared is not True
                                                      or self.conversation is None):
            raise AttributionError("attribution.conversation_shared must be a bool, and True only with a "
                                   "conversation (the shared group's)")

    def scopes(self) -> tuple[tuple[Level, str], ...]:
        """``(level, scope key)`` for every level that applies to this call, broadest first.

        Memoised per attribution (pure, bounded): one call asks for its scopes several times.
        """
        return _scopes(self)


@lru_cache(maxsize=8_192)
def _scopes(attribution: Attribution) -> tuple[tuple[Level, str], ...]:
    # each id escaped once; joining escaped ids with "|" is scope_key(*ids)
    ns = _escape(attribution.namespace)
    tenant_key = f"{ns}|{_escape(attribution.tenant)}"
    agent_key = f"{tenant_key}|{_escape(attribution.agent)}"
    out: list[tuple[Level, str]] = [
        (Level.NAMESPACE, ns),
        (Level.TENANT, tenant_key),
        (Level.AGENT, agent_key),
    ]
    if attribution.conversation is not None:
        conversation = _escape(attribution.conversation)
        out.append((Level.AGENT_CONVERSATION, f"{agent_key}|{conversation}"))
        owner = ns if attribution.conversation_shared else tenant_key
        out.append((Level.CONVERSATION, f"{owner}|{conversation}"))
    if attribution.task is not None:
        out.append((Level.TASK, f"{tenant_key}|{_escape(attribution.task)}"))
    return tuple(out)
