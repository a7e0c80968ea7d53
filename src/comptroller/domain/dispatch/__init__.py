"""Group-chat dispatch (DESIGN.md rule 8): who may answer each message of a group, and why not.

Pure domain: no I/O and no clock. The edge (:mod:`comptroller.groups`) keeps the room's
history, reads the group budget from the ledger and logs each decision.

* :mod:`.group`: members, flags, role rules; :mod:`.message`: messages and mentions;
* :mod:`.budget`: the group-budget step function that drives k;
* :mod:`.relevance`: BM25 relevance of a message to each member;
* :mod:`.loops`: ping-pong, deference and near-duplicate cut-offs;
* :mod:`.isolation`: what independence-critical roles may read;
* :mod:`.dispatcher`: the rules in their precedence, and the decision with reasons;
* :mod:`.errors`: the exception tree.
"""

from comptroller.domain.dispatch.budget import BudgetMode, BudgetStep, Mode, budget_mode, default_steps
from comptroller.domain.dispatch.dispatcher import Dispatch, DispatchConfig, Dispatcher, LeftOut, Pick, Reason
from comptroller.domain.dispatch.errors import (
    GroupConfigError,
    GroupError,
    MessageError,
    NoDeciderError,
    RoleRuleCycleError,
    UnknownMemberError,
)
from comptroller.domain.dispatch.group import Flag, Group, Kind, Member, RoleRule
from comptroller.domain.dispatch.isolation import visible_history
from comptroller.domain.dispatch.loops import LoopConfig, LoopFinding, LoopKind, detect_loop
from comptroller.domain.dispatch.message import Message, mentions_in
from comptroller.domain.dispatch.relevance import Bm25Relevance, Relevance

__all__ = [
    "Bm25Relevance",
    "BudgetMode",
    "BudgetStep",
    "Dispatch",
    "DispatchConfig",
    "Dispatcher",
    "Flag",
    "Group",
    "GroupConfigError",
    "GroupError",
    "Kind",
    "LeftOut",
    "LoopConfig",
    "LoopFinding",
    "LoopKind",
    "Member",
    "Message",
    "MessageError",
    "Mode",
    "NoDeciderError",
    "Pick",
    "Reason",
    "Relevance",
    "RoleRule",
    "RoleRuleCycleError",
    "UnknownMemberError",
    "budget_mode",
    "default_steps",
    "detect_loop",
    "mentions_in",
    "visible_history",
]
