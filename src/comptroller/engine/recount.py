"""Recount a call's input exactly, only near a budget's edge (issue 14, "Ceilings").

Every call is admitted on the byte bound first
(:func:`~comptroller.domain.tokens.request_input_tokens_max`: cheap, and 4-6x the billed input on
English and code). Near a budget's edge that over-count refuses calls that fit: with 64 agents
racing for a budget of 10 exact ceilings, 8 byte-bound ceilings fill it. Refusing first and
recounting then is too late (the 8 holds already took the money), so the recount starts a little
before the edge: when fewer than :data:`RECOUNT_WINDOW_CEILINGS` byte-bound ceilings of the call
are left in any of its budgets.

A call that carries an ``input_recount`` (:func:`comptroller.exact_input.input_recount`) is
reserved under :class:`RecountGuard`: inside the store's transaction, after the defenses, it
compares the ceiling with the budget accounts the store has read
(:func:`~comptroller.domain.admission.decide`, the store's own rule). Within the window, unless
even the call's output bound alone would be refused, it raises :class:`RecountNeeded`: the
transaction rolls back (as on any error, on every backend), so nothing is written, no refusal is
recorded and no lock is held while the text is tokenized. The engine recounts outside the
transaction and reserves once more on the tighter bound; the store decides that reservation as
usual, so a budget admits exactly what fits, never more. Far from every edge (the common case),
the guard costs one more :func:`~comptroller.domain.admission.decide` and nothing is recounted.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Protocol

from comptroller.domain.admission import decide
from comptroller.domain.ledger import AccountView, ReserveRequest
from comptroller.domain.state import AdmitGuard, GuardOutcome, StateKey, StoredState

__all__ = ["RECOUNT_WINDOW_CEILINGS", "InputRecount", "RecountGuard", "RecountNeeded"]

RECOUNT_WINDOW_CEILINGS = 64
"""A call is recounted when one of its budgets has room for fewer than this many of its byte-bound
ceilings: as many as the agents racing in the issue's benchmark, so a whole first wave near the
edge is held on recounted ceilings. Larger: more calls pay a recount and a second transaction."""


class InputRecount(Protocol):
    """A call's exact input recount (:class:`comptroller.exact_input.ExactRecount` is one)."""

    def covers(self, model: str) -> bool:
        """True if :meth:`__call__` can count the input for this priced model (cheap: no counting)."""
        ...

    def __call__(self, model: str) -> int | None:
        """An upper bound on the input tokens for this priced model, or None when it has none."""
        ...


class RecountNeeded(Exception):  # noqa: N818  (a signal to the engine, not an error anyone sees)
    """Raised by :class:`RecountGuard` to roll back a reservation that a recount may let fit.

    Attributes:
        models: the priced models the call could be reserved on (the routed one and any paced
            downgrade): the recount must bound the input for each of them.
    """

    def __init__(self, models: Sequence[str]) -> None:
        super().__init__(f"recount the input for {', '.join(models)}")
        self.models = tuple(models)


class RecountGuard:
    """An :class:`~comptroller.domain.state.AdmitGuard` wrapping the call's defenses (module docstring).

    Args:
        inner: the call's defenses (:class:`~comptroller.domain.defenses.chain.AdmitDefenses`).
        request: the call's reserve request on the byte bound (the routed model).
        models: every priced model the call may be reserved on (the routed one and any paced
            downgrade).
        floor_mc: the least ceiling any recount could give a request at a time (its output bound
            with no input), millicents; when even that does not fit, the refusal stands without a
            recount.
        window: :data:`RECOUNT_WINDOW_CEILINGS`.
    """

    def __init__(self, inner: AdmitGuard, request: ReserveRequest, models: Sequence[str],
                 floor_mc: Callable[[ReserveRequest, datetime], int], window: int = RECOUNT_WINDOW_CEILINGS) -> None:
        self.inner = inner
        self.request = request
        self.models = tuple(models)
        self.floor_mc = floor_mc
        self.window = window

    def state_keys(self) -> Sequence[StateKey]:
        """The inner guard's states."""
        return self.inner.state_keys()

    def apply(self, states: Mapping[StateKey, StoredState], accounts: Sequence[AccountView],
              now: datetime) -> GuardOutcome:
        """The inner guard's outcome, unless the call is near a budget's edge and a recount may help.

        Raises:
            RecountNeeded: some account has room for fewer than ``window`` of the call's ceilings,
                and every account has room for its output bound alone.
        """
        outcome = self.inner.apply(states, accounts, now)
        if outcome.verdict is not None:
            return outcome
        request = outcome.request or self.request
        near_edge = decide(request.ceiling_mc * self.window, accounts) is not None
        if not near_edge or decide(self.floor_mc(request, now), accounts) is not None:
            return outcome
        raise RecountNeeded(self.models)
