"""Defense state a store keeps beside the ledger, and the guards that read and change it.

The runtime defenses (breakers, kill switches, retry counters, loop histories,
scheduled runs; DESIGN.md rules 5 and 6) keep small states that every process
must share and that must survive a restart. A store keeps each as one row
``(kind, key) -> (version, record)``, where ``record`` is a flat JSON object.

Guards make them atomic with the money. The engine hands a store a guard with
each reserve, settle and release; inside the same transaction (under the write
lock in SQLite, with ``SELECT ... FOR UPDATE`` in PostgreSQL, under a lock in
memory) the store reads the guard's states, calls the guard (a pure function),
and commits the guard's writes and events together with the ledger change, or
not at all. So a refused call never consumes a retry, a loop-history slot or a
probe lease, and a settle counted by a breaker is the settle the ledger charged.

Outside the call path (an admin trips a kill switch or resets a breaker, a
scheduler opens a run) a state is written with :meth:`LedgerStore.put_state`,
a compare-and-set on ``version``: it succeeds only if the stored version is still
the one read.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, NamedTuple, Protocol

from comptroller.domain.ledger import AccountView, Event, Reservation, ReserveRequest

if TYPE_CHECKING:
    from comptroller.domain.defenses.verdict import JsonScalar, Verdict

__all__ = ["AdmitGuard", "GuardOutcome", "SettleGuard", "StateKey", "StoredState"]


class StateKey(NamedTuple):
    """Which state: ``kind`` (``breaker``, ``kill_switch``, ``retry``, ``loop``, ``run``) and its ``key``.

    Stores lock and read keys in sorted order, so two transactions never wait on
    each other in a cycle. A named tuple, so hashing, equality and order (by kind, then
    key) run in C: a call's guards look a dozen keys up in several dicts.
    """

    kind: str
    key: str


@dataclass(frozen=True, slots=True)
class StoredState:
    """One state row: its key, its version (the compare-and-set token) and its flat JSON record."""

    key: StateKey
    version: int
    record: Mapping[str, JsonScalar]


@dataclass(frozen=True, slots=True)
class GuardOutcome:
    """What a guard decided inside a store transaction.

    Attributes:
        verdict: admit guards only: the first rule that refuses, or None to go on to the budgets.
        writes: states to write (each with its new version), committed only with the ledger change.
        events: events to append in the same transaction (trips, closes, ...).
        request: admit guards only: a replacement request (a paced downgrade to a cheaper
            model, with its own ceiling), or None to reserve the original.
    """

    verdict: Verdict | None = None
    writes: tuple[StoredState, ...] = ()
    events: tuple[Event, ...] = ()
    request: ReserveRequest | None = None


class AdmitGuard(Protocol):
    """The defenses of one call, run by ``LedgerStore.reserve`` inside its transaction.

    The store answers an idempotency key it has seen (``already_reserved`` /
    ``idempotency_conflict``) before calling the guard. If the guard refuses, the store
    commits the outcome's writes and events (a refusing guard returns only what must
    persist, such as a kill switch it tripped) and the verdict's refusal event; if the
    budgets then refuse, the guard's writes and events are dropped with the reservation.
    """

    def state_keys(self) -> Sequence[StateKey]:
        """The states :meth:`apply` reads."""
        ...

    def apply(self, states: Mapping[StateKey, StoredState], accounts: Sequence[AccountView],
              now: datetime) -> GuardOutcome:
        """Decide; ``states`` holds the keys that exist, ``accounts`` the call's budget accounts."""
        ...


class SettleGuard(Protocol):
    """What a settled or released call changes in the defenses (breaker spend, probe leases, kill switch).

    ``LedgerStore.settle`` calls it only when it charges (``settled``/``settled_late``),
    and ``release`` only when it releases, never on a repeat, so nothing is counted twice.
    """

    def state_keys(self, reservation: Reservation) -> Sequence[StateKey]:
        """The states :meth:`apply` reads for this reservation."""
        ...

    def apply(self, reservation: Reservation, cost_mc: int | None, states: Mapping[StateKey, StoredState],
              now: datetime) -> GuardOutcome:
        """The writes and events for a settle (``cost_mc``, millicents) or a release (``cost_mc`` None)."""
        ...
