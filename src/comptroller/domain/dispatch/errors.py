"""Errors of group dispatch: mistakes are exceptions, decisions are values.

The tree::

    ValueError
    └── GroupError                  any misuse of a group or the dispatcher
        ├── GroupConfigError        a bad member, role rule, k, cooldown or budget step
        │   ├── NoDeciderError      a rule needs a member with ``decides`` and there is none
        │   └── RoleRuleCycleError  role rules order roles in a cycle (a after b after a)
        └── MessageError            a message the group cannot take
            └── UnknownMemberError  a mention (or a lookup) names an agent not in the group

Who may answer a message, and why the others may not, is never an exception: it is a
:class:`~comptroller.domain.dispatch.dispatcher.Dispatch`.
"""

from __future__ import annotations

__all__ = [
    "GroupConfigError",
    "GroupError",
    "MessageError",
    "NoDeciderError",
    "RoleRuleCycleError",
    "UnknownMemberError",
]


class GroupError(ValueError):
    """A group or a message was defined or used wrongly."""


class GroupConfigError(GroupError):
    """A group definition or dispatch setting is invalid; the message names the field, the value and the fix."""


class NoDeciderError(GroupConfigError):
    """A rule needs a deciding member (wrap-up, loop escalation, verdicts) and no member has ``decides``."""


class RoleRuleCycleError(GroupConfigError):
    """Role rules say role A answers after role B and, through a chain, B after A."""


class MessageError(GroupError):
    """A message is invalid for its group (empty text, a verdict from a non-decider, too many mentions)."""


class UnknownMemberError(MessageError):
    """An agent id names nobody in the group."""
