"""The action guard's service: check an action before its side effect, record the outcome after,
approve or reject held actions, and verify that "done" is done (DESIGN.md rule 9; issue 17).

State lives in the ledger's state rows, so every worker and replica sharing the ledger agrees:

* ``("action_history", tenant)``: the tenant's accepted actions (:mod:`comptroller.domain.actions.history`).
  A check reads it, runs the pure rules and writes it back with a compare-and-set on its version;
  two workers checking at once cannot both take the last slot: the loser reads again and re-checks.
* ``("action", "tenant|id")``: one action's record (:class:`~comptroller.domain.actions.ActionRecord`),
  created once (expected version 0, so the id is an idempotency key) and moved by compare-and-set
  (:mod:`comptroller.engine.action_rows`); an unverified action's next check is due at its
  ``verify_next_at`` (:mod:`comptroller.engine.verification`).

An allowed action takes its slot in the history first, then its record is written; a crash in
between leaves the slot held (conservative) and a retry of the same id finds it and answers allowed.
Refusals, holds and actions left unverified are events (kind ``action``), appended with the write
and handed to the engine's sinks (webhooks, log) like the defenses' events.

Time comes from the injected clock only: in tests and simulations a :class:`~comptroller.clock.VirtualClock`.
"""

from __future__ import annotations

import builtins
import time
from collections.abc import Callable
from datetime import datetime, timedelta

from comptroller.actions_config import ActionPolicy
from comptroller.domain.actions import Action, ActionRecord, ActionStatus, History, HistoryEntry, Reason, check
from comptroller.domain.actions.history import HISTORY
from comptroller.domain.actions.model import ACTIVE, TransitionError
from comptroller.domain.actions.rules import ActionRules
from comptroller.domain.state import StateKey, StoredState
from comptroller.engine.action_rows import (
    ACTION,
    ActionConflictError,
    ActionRows,
    UnknownActionError,
    transition_events,
)
from comptroller.engine.verification import DUE_MAX, Fetch, Verifier, http_fetch
from comptroller.ports import Clock, EventSink, LedgerStore

__all__ = ["ACTION", "ActionAlreadyDecidedError", "ActionConflictError", "ActionExpiredError", "ActionService",
           "UnknownActionError", "http_fetch"]

_ATTEMPTS = 64


class ActionAlreadyDecidedError(ActionConflictError):
    """Approving or rejecting an action that is not pending: decided already (approved, rejected) or never held."""

    code = "action_already_decided"


class ActionExpiredError(ActionConflictError):
    """Approving or rejecting a held action past its ``expires_at``: the hold lapsed, nothing happens."""

    code = "action_expired"


class ActionService:
    """Check, hold, record and verify actions on one ledger.

    Args:
        store: the ledger (its state rows hold histories and actions).
        clock: the time source (UTC).
        policy: the ``[actions]`` sections.
        sinks: told of every action event after it is committed (the engine's ``sinks``).
        fetch: the verifier's HTTP GET (default :func:`http_fetch`).
        sleep: how the verifier waits between attempts, seconds (default ``time.sleep``; a virtual
            clock's ``advance`` in simulations).
    """

    def __init__(self, store: LedgerStore, clock: Clock, policy: ActionPolicy, *, sinks: EventSink | None = None,
                 fetch: Fetch = http_fetch, sleep: Callable[[float], None] = time.sleep) -> None:
        self.store, self.clock, self.policy = store, clock, policy
        self.rows = ActionRows(store, sinks)
        self.verifier = Verifier(self.rows, clock, policy, fetch=fetch, sleep=sleep)

    # -- check -----------------------------------------------------------------------------------------
    def check(self, action: Action) -> ActionRecord:
        """Decide ``action`` before its side effect: ``allowed``, ``pending_approval`` or ``refused`` (with reasons).

        Checking an id again answers the stored record (as it reads now).

        Raises:
            ActionConflictError: the id was checked before with different fields, or the history kept changing.
        """
        for _ in range(_ATTEMPTS):
            now = self.clock.now()
            stored = self.get(action.tenant, action.id)
            if stored is not None:
                if stored.action != action:
                    raise ActionConflictError(f"action id {action.id!r} was already checked with other fields; "
                                              "use a new id for a new action")
                return stored.at(now)
            rules = self.policy.rules_for(action.platform, action.kind)
            if rules is None:
                reason = Reason("unknown_platform", f"no [actions.{action.platform}] section (nor [actions.\"*\"]) "
                                "in the policy, so nothing limits it and it is refused; add one")
                self._create(ActionRecord(action, ActionStatus.REFUSED, now, (reason,), version=1), now)
                return self._must(action.tenant, action.id)
            decided = self._decide(action, rules, now)
            if decided is not None:
                return decided
        raise ActionConflictError(f"the history of tenant {action.tenant!r} changed {_ATTEMPTS} times; retry")

    def _decide(self, action: Action, rules: ActionRules, now: datetime) -> ActionRecord | None:
        stored_history = self.store.state(StateKey(HISTORY, action.tenant))
        history = History(action.tenant) if stored_history is None else History.from_record(stored_history.record)
        taken = any(e.id == action.id for e in history.entries)
        reasons = [] if taken else check(action, rules, history, now)
        if reasons:
            record = ActionRecord(action, ActionStatus.REFUSED, now, tuple(reasons), version=1)
        elif rules.approval and not taken:
            expires = now + timedelta(seconds=rules.approval_ttl_s)
            record = ActionRecord(action, ActionStatus.PENDING_APPROVAL, now, expires_at=expires, version=1)
        else:
            if not taken and not self._take(history, action, now):
                return None
            record = ActionRecord(action, ActionStatus.ALLOWED, now, version=1)
        self._create(record, now)  # if another check of this id won the race, its record is the answer
        return self._must(action.tenant, action.id)

    def _take(self, history: History, action: Action, now: datetime) -> bool:
        nxt = history.added(HistoryEntry.of(action, now), now, keep_s=self.policy.keep_s(), keep_n=self.policy.keep_n())
        return self.store.put_state(StoredState(StateKey(HISTORY, action.tenant), nxt.version, nxt.to_record()),
                                    history.version)

    def _create(self, record: ActionRecord, now: datetime) -> bool:
        return self.rows.create(record, transition_events(record, now))

    # -- read ------------------------------------------------------------------------------------------
    def get(self, tenant: str, action_id: str) -> ActionRecord | None:
        """One action's stored record (status as stored; ``.at(now)`` reads expiry), or None."""
        return self.rows.get(tenant, action_id)

    def list(self, tenant: str | None = None, status: ActionStatus | None = None) -> list[ActionRecord]:
        """Actions (of one tenant, in one status as read now), oldest first."""
        now = self.clock.now()
        found = [ActionRecord.from_record(s.record).at(now) for s in self.store.states(ACTION)]
        return sorted((r for r in found if (tenant is None or r.action.tenant == tenant)
                       and (status is None or r.status is status)), key=lambda r: (r.created_at, r.action.id))

    # -- approval --------------------------------------------------------------------------------------
    def decide(self, tenant: str, action_id: str, *, approve: bool, by: str) -> ActionRecord:
        """Approve or reject a held action. An approved one then takes its slot: the rate and
        near-duplicate rules run again at the approval's time, and refuse it if they must.

        Raises:
            UnknownActionError: no such action.
            ActionExpiredError: the hold lapsed (past ``expires_at``).
            ActionAlreadyDecidedError: it is not pending (approved, rejected, never held).
            ActionConflictError: no decider named, or the row kept changing.
        """
        for _ in range(_ATTEMPTS):
            now = self.clock.now()
            record = self._must(tenant, action_id)
            try:
                decided = record.decide(approve, now, by=by)
            except TransitionError as exc:
                status = record.at(now).status
                if status is ActionStatus.EXPIRED:
                    raise ActionExpiredError(str(exc)) from None
                if status is not ActionStatus.PENDING_APPROVAL:
                    raise ActionAlreadyDecidedError(str(exc)) from None
                raise ActionConflictError(str(exc)) from None
            if not approve:
                if self._move(record, decided, now):
                    return decided
                continue
            rules = self.policy.rules_for(record.action.platform, record.action.kind)
            stored_history = self.store.state(StateKey(HISTORY, tenant))
            history = History(tenant) if stored_history is None else History.from_record(stored_history.record)
            reasons = check(record.action, rules, history, now) if rules is not None else []
            if reasons:
                refused = record.moved(ActionStatus.REFUSED, now, decided_by=by, reasons=tuple(reasons))
                if self._move(record, refused, now):
                    return refused
                continue
            if not self._take(history, record.action, now):
                continue
            if self._move(record, decided, now):
                return decided
            self._give_back(tenant, action_id)
        raise ActionConflictError(f"action {action_id!r} kept changing; retry")

    # -- outcome and verification ----------------------------------------------------------------------
    def record_outcome(self, tenant: str, action_id: str, *, published: bool, url: str | None = None) -> ActionRecord:
        """Record what happened after an allowed or approved action: ``unverified`` (its first check due at
        once: :meth:`check_once`, :meth:`reverify_due`) or ``failed`` (its slot in the history returns).
        A repeat answers the stored record.

        Raises:
            UnknownActionError: no such action.
            ActionConflictError: the action was never allowed (refused, pending, rejected, expired).
        """
        for _ in range(_ATTEMPTS):
            now = self.clock.now()
            record = self._must(tenant, action_id).at(now)
            if record.status in (ActionStatus.UNVERIFIED, ActionStatus.DONE, ActionStatus.FAILED):
                return record
            if record.status not in ACTIVE:
                raise ActionConflictError(f"action {action_id!r} is {record.status}; only an allowed or approved "
                                          "action has an outcome")
            nxt = record.moved(ActionStatus.UNVERIFIED if published else ActionStatus.FAILED, now, outcome_url=url,
                               published_at=now if published else None, verify_next_at=now if published else None)
            if self._move(record, nxt, now):
                if not published:
                    self._give_back(tenant, action_id)
                self.verifier.watch(nxt)
                return nxt
        raise ActionConflictError(f"action {action_id!r} kept changing; retry")

    def verify(self, tenant: str, action_id: str) -> ActionRecord:
        """Check an ``unverified`` action up to its rules' ``attempts`` times with backoff (``sleep``):
        ``done`` when confirmed, else it stays ``unverified``, its durable schedule goes on, and the
        ``attempts``-th failed check raises an ``action/unverified`` event (:class:`~.verification.Verifier`).

        Raises:
            UnknownActionError: no such action.
        """
        return self.verifier.verify(tenant, action_id)

    def check_once(self, tenant: str, action_id: str) -> ActionRecord:
        """One check of an ``unverified`` action (``done``, or counted and re-scheduled).

        Raises:
            UnknownActionError: no such action.
        """
        return self.verifier.check_once(tenant, action_id)

    def reverify_due(self, limit: int = DUE_MAX) -> builtins.list[ActionRecord]:
        """Check every unverified action whose ``verify_next_at`` is due now (at most ``limit``): what a
        gateway worker runs every round, so checks a dead worker left resume. The records after."""
        return self.verifier.reverify_due(limit)

    # -- rows ------------------------------------------------------------------------------------------
    def _must(self, tenant: str, action_id: str) -> ActionRecord:
        return self.rows.must(tenant, action_id)

    def _move(self, current: ActionRecord, nxt: ActionRecord, now: datetime) -> bool:
        return self.rows.move(current, nxt, transition_events(nxt, now))

    def _give_back(self, tenant: str, action_id: str) -> None:
        for _ in range(_ATTEMPTS):
            stored = self.store.state(StateKey(HISTORY, tenant))
            if stored is None:
                return
            history = History.from_record(stored.record)
            if all(e.id != action_id for e in history.entries):
                return
            nxt = history.without(action_id)
            if self.store.put_state(StoredState(stored.key, nxt.version, nxt.to_record()), history.version):
                return
