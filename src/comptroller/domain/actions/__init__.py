"""The action guard's pure rules (DESIGN.md rule 9): rate limits, near-duplicates, quality gates,
approval holds and verified "done" for the side effects agents take (publish a post, send a message).

* :mod:`.model`: an :class:`~.model.Action`, its :class:`~.model.ActionRecord` and statuses.
* :mod:`.rules`: the per-platform/kind :class:`~.rules.ActionRules` and :func:`~.rules.check`.
* :mod:`.history`: the accepted actions a tenant's rate and duplicate rules look back on.
* :mod:`.similarity`: the near-duplicate measure (rapidfuzz).
"""

from comptroller.domain.actions.history import History, HistoryEntry
from comptroller.domain.actions.model import Action, ActionRecord, ActionStatus, Reason
from comptroller.domain.actions.rules import ActionRules, RateLimit, check
from comptroller.domain.actions.similarity import similarity

__all__ = ["Action", "ActionRecord", "ActionRules", "ActionStatus", "History", "HistoryEntry", "RateLimit",
           "Reason", "check", "similarity"]
