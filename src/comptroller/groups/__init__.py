"""Group chats at the edge: group files, the group budget from the ledger, and the service API.

* :mod:`.config`: ``[groups.NAME]`` TOML -> :class:`GroupDefinition`;
* :mod:`.budget`: the conversation budget's remaining fraction, read from the store;
* :mod:`.service`: :class:`GroupService` (``dispatch(group_id, message)``, ``context``,
  ``attribution``/``call``/``admit`` for the dispatched agents' calls).
"""

from comptroller.groups.budget import group_budget_remaining
from comptroller.groups.config import GroupDefinition, GroupFileError, load_groups, parse_groups
from comptroller.groups.service import GroupService, UnknownGroupError

__all__ = [
    "GroupDefinition",
    "GroupFileError",
    "GroupService",
    "UnknownGroupError",
    "group_budget_remaining",
    "load_groups",
    "parse_groups",
]
