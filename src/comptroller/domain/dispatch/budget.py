"""The group budget's step function: how many may answer as the conversation budget drains.

The group budget is the ledger's conversation budget (DESIGN.md rule 1; level
``conversation``). The edge reads its remaining fraction, ``(limit - settled -
reserved) / limit`` of the tightest conversation budget, and :func:`budget_mode`
maps it to a mode and the number of responders ``k`` (DESIGN.md rule 8: "fewer
responders as the group budget nears its cap"):

=======================================  ==========================  ====================================
remaining fraction ``r``                 mode                        who may answer
=======================================  ==========================  ====================================
no conversation budget, or ``r`` >=      ``full``                    up to ``k``
the first step's fraction with ``k``
a step ``(fraction, k_step)`` with       ``reduced``                 up to ``k_step`` (mentions always)
``r`` >= fraction, ``k_step < k``
``0 < r < mentions_only_below``          ``mentions_and_decider``    mentions, and the decider
``r <= 0``                               ``wrap_up``                 the decider only, asked to close
=======================================  ==========================  ====================================

The default steps for ``k``: ``(0.50, k)``, ``(0.25, ceil(k / 2))``, ``(0.10, 1)``, and
``mentions_only_below = 0.10``. Between ``mentions_only_below`` and the lowest step the
lowest step's ``k`` applies. The numbers are our defaults; the source gives the behaviour.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from comptroller.domain.dispatch.errors import GroupConfigError

__all__ = ["BudgetMode", "BudgetStep", "Mode", "budget_mode", "check_k", "check_steps", "default_steps"]


class Mode(StrEnum):
    """How the group budget limits a dispatch."""

    FULL = "full"
    REDUCED = "reduced"
    MENTIONS_AND_DECIDER = "mentions_and_decider"
    WRAP_UP = "wrap_up"


@dataclass(frozen=True, slots=True)
class BudgetStep:
    """From ``remaining_min`` (a fraction of the group budget, 0..1) down to the next step, at most ``k`` answer."""

    remaining_min: float
    k: int


@dataclass(frozen=True, slots=True)
class BudgetMode:
    """The mode and the responder limit for one dispatch.

    Attributes:
        mode: see :class:`Mode`.
        k: responders chosen by relevance may fill up to this many (mentions count toward it).
        remaining: the remaining fraction it was computed from (None: no conversation budget).
    """

    mode: Mode
    k: int
    remaining: float | None


def check_k(k: object) -> int:
    """Return ``k`` if it is an integer >= 1; else raise GroupConfigError."""
    if type(k) is not int or k < 1:
        raise GroupConfigError(f"k (the most responders per message) must be an integer >= 1, got {k!r}; "
                               f"3 is a good start")
    return k


def default_steps(k: int) -> tuple[BudgetStep, ...]:
    """``(0.50, k)``, ``(0.25, ceil(k/2))``, ``(0.10, 1)``."""
    return (BudgetStep(0.5, k), BudgetStep(0.25, math.ceil(k / 2)), BudgetStep(0.1, 1))


def check_steps(steps: Sequence[BudgetStep], k: int, mentions_only_below: float) -> tuple[BudgetStep, ...]:
    """Validate steps: fractions in [mentions_only_below, 1] descending, ks in 1..k non-increasing.

    Raises:
        GroupConfigError: naming the step at fault.
    """
    if not steps:
        raise GroupConfigError("budget steps must hold at least one (remaining_min, k) step")
    previous: BudgetStep | None = None
    for i, step in enumerate(steps):
        frac = step.remaining_min
        if isinstance(frac, bool) or not isinstance(frac, int | float) or not mentions_only_below <= frac <= 1:
            raise GroupConfigError(f"budget step {i}: remaining_min must be a fraction in "
                                   f"[{mentions_only_below:g}, 1] (at least mentions_only_below), got {frac!r}")
        if type(step.k) is not int or not 1 <= step.k <= k:
            raise GroupConfigError(f"budget step {i}: k must be an integer in 1..{k} (the group's k), got {step.k!r}")
        if previous is not None and (frac >= previous.remaining_min or step.k > previous.k):
            raise GroupConfigError(f"budget step {i} ({frac:g}, {step.k}) must have a lower fraction and no more "
                                   f"responders than step {i - 1} ({previous.remaining_min:g}, {previous.k})")
        previous = step
    return tuple(steps)


def budget_mode(remaining: float | None, *, k: int, steps: Sequence[BudgetStep],
                mentions_only_below: float) -> BudgetMode:
    """The mode and responder limit for a group budget with ``remaining`` left.

    Args:
        remaining: the remaining fraction of the tightest conversation budget (may be
            negative after a ceiling miss), or None when the conversation has no budget.
        k: the group's most responders per message.
        steps: validated steps (:func:`check_steps`), highest fraction first.
        mentions_only_below: below this fraction only mentions and the decider answer.
    """
    if remaining is None:
        return BudgetMode(Mode.FULL, k, None)
    if remaining <= 0:
        return BudgetMode(Mode.WRAP_UP, 0, remaining)
    if remaining < mentions_only_below:
        return BudgetMode(Mode.MENTIONS_AND_DECIDER, 0, remaining)
    k_step = next((s.k for s in steps if remaining >= s.remaining_min), steps[-1].k)
    return BudgetMode(Mode.FULL if k_step >= k else Mode.REDUCED, k_step, remaining)
