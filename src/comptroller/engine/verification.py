"""Verified "done": check that an action an agent says it took really happened (issue 17; DESIGN.md rule 9).

An action whose outcome was recorded as published is ``unverified``. A check runs the platform's
verifier: an HTTP GET of ``verify_url`` that must answer 200 and contain the marker, a custom
callable, or (explicitly) the agent's word. A confirmed action is ``done``; otherwise the check is
counted (``verify_attempts``) and the next one is scheduled in the action's own row
(``verify_next_at``, :mod:`comptroller.domain.actions.schedule`: exponential backoff within a horizon).
Because the schedule is in the ledger, whoever runs :meth:`Verifier.reverify_due` (every gateway worker
does, :mod:`comptroller.gateway.reverify`) resumes what a dead or restarted worker left.

Finding due actions: a round reads the rows of the actions this verifier watches (those it saw
become or stay unverified); every ``SCAN_EVERY``-th round, the first included, it scans every
action row, which is how it learns what other workers, and dead ones, left. A scan of 10,000 action
rows on SQLite took 570 ms wall, 252 ms CPU on a loaded 2-core machine (BENCHMARKS.md, "Re-verification
rounds"), so it runs once a minute at the gateway's one round a second, not every round.

Events (kind ``action``), appended in the same write as the check that raises them:
``unverified`` when the ``attempts``-th check fails (once), ``verification_stopped`` when the horizon
ends the schedule with the action still unverified.

Workers may race on one due action: each fetches, one compare-and-set wins; a loser that finds the
row already checked by someone else counts nothing, so a check is counted once (at worst the
platform sees one extra GET).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime

import httpx

from comptroller.actions_config import ActionPolicy
from comptroller.domain.actions import ActionRecord, ActionStatus
from comptroller.domain.actions.rules import Verification
from comptroller.domain.actions.schedule import backoff_s, next_check_at
from comptroller.domain.events import Event
from comptroller.engine.action_rows import ActionConflictError, ActionRows, action_event
from comptroller.ports import Clock

__all__ = ["BODY_BYTES_MAX", "DUE_MAX", "SCAN_EVERY", "Fetch", "Verifier", "http_fetch"]

log = logging.getLogger("comptroller.actions")

DUE_MAX = 32
"""Due actions checked per :meth:`Verifier.reverify_due` round (the rest wait for the next round)."""
SCAN_EVERY = 60
"""Rounds of :meth:`Verifier.reverify_due` between scans of every action row (the first round scans)."""
BODY_BYTES_MAX = 4 * 1024 * 1024
"""The most of a verified page :func:`http_fetch` reads, bytes (a marker past it is not seen)."""
_ATTEMPTS = 64

Fetch = Callable[[str], tuple[int, str]]
"""An HTTP GET: url -> (status, body)."""


def http_fetch(url: str) -> tuple[int, str]:
    """GET ``url`` (10 s timeout, redirects followed, at most ``BODY_BYTES_MAX`` of the body read):
    (status, body); a transport error reads as status 0 (not confirmed)."""
    try:
        with httpx.stream("GET", url, timeout=10.0, follow_redirects=True) as response:
            body = bytearray()
            for chunk in response.iter_bytes():
                body += chunk
                if len(body) >= BODY_BYTES_MAX:
                    break
            return response.status_code, bytes(body[:BODY_BYTES_MAX]).decode(response.encoding or "utf-8",
                                                                             errors="replace")
    except httpx.HTTPError:
        return 0, ""


class Verifier:
    """Check unverified actions, once, in a loop with backoff, or as their durable schedule says.

    Args:
        rows: the action rows.
        clock: the time source (UTC).
        policy: the ``[actions]`` sections (each platform's verification rules).
        fetch: the HTTP GET (default :func:`http_fetch`).
        sleep: how :meth:`verify` waits between checks, seconds (``time.sleep``; a virtual clock's ``advance``).
    """

    def __init__(self, rows: ActionRows, clock: Clock, policy: ActionPolicy, *, fetch: Fetch = http_fetch,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.rows, self.clock, self.policy, self.fetch, self.sleep = rows, clock, policy, fetch, sleep
        self._watched: dict[tuple[str, str], datetime] = {}  # (tenant, id) -> next check, as last seen
        self._lock = threading.Lock()
        self._rounds = 0

    def spec(self, record: ActionRecord) -> Verification:
        """The verification rules of the action's platform and kind (none configured: nothing confirms it)."""
        rules = self.policy.rules_for(record.action.platform, record.action.kind)
        return Verification() if rules is None else rules.verification

    def watch(self, record: ActionRecord) -> None:
        """Note ``record``'s schedule: an unverified action with a next check is watched, any other is not."""
        key = (record.action.tenant, record.action.id)
        with self._lock:
            if record.status is ActionStatus.UNVERIFIED and record.verify_next_at is not None:
                self._watched[key] = record.verify_next_at
            else:
                self._watched.pop(key, None)

    def check_once(self, tenant: str, action_id: str) -> ActionRecord:
        """One check of an ``unverified`` action: ``done`` if confirmed, else counted and re-scheduled.
        Any other status is answered as stored, unchecked.

        Raises:
            UnknownActionError: no such action.
            ActionConflictError: the row kept changing.
        """
        return self._check(tenant, action_id, if_due=False)[0]

    def _check(self, tenant: str, action_id: str, *, if_due: bool) -> tuple[ActionRecord, bool]:
        record = self.rows.must(tenant, action_id)
        due = record.verify_next_at is not None and record.verify_next_at <= self.clock.now()
        if record.status is not ActionStatus.UNVERIFIED or (if_due and not due):
            self.watch(record)
            return record, False
        ok = self._confirmed(record)
        for _ in range(_ATTEMPTS):
            nxt, events = self._after_check(record, ok, self.clock.now())
            if self.rows.move(record, nxt, events):
                self.watch(nxt)
                return nxt, True
            fresh = self.rows.must(tenant, action_id)
            if fresh.status is not ActionStatus.UNVERIFIED or fresh.verify_attempts != record.verify_attempts:
                self.watch(fresh)
                return fresh, False  # another worker checked it meanwhile: that check counts, not this one
            record = fresh
        raise ActionConflictError(f"action {action_id!r} kept changing; retry")

    def verify(self, tenant: str, action_id: str) -> ActionRecord:
        """Check an ``unverified`` action up to its rules' ``attempts`` times, waiting the schedule's backoff
        between checks (``sleep``); ``done`` when confirmed, else it stays ``unverified`` (and its durable
        schedule goes on). For the SDK and ``comptroller action verify``; the gateway uses :meth:`reverify_due`.

        Raises:
            UnknownActionError: no such action.
        """
        record = self.rows.must(tenant, action_id)
        spec = self.spec(record)
        for checked in range(1, spec.attempts + 1):
            record = self.check_once(tenant, action_id)
            if record.status is not ActionStatus.UNVERIFIED or checked == spec.attempts:
                break
            self.sleep(backoff_s(spec, record.verify_attempts))
        return record

    def due(self, now: datetime, limit: int = DUE_MAX) -> list[ActionRecord]:
        """Unverified actions whose next check is due at ``now``, the longest-waiting first, at most ``limit``
        (a scan of every action row; each unverified one found is watched from then on)."""
        found = [r for r in self.rows.all() if r.status is ActionStatus.UNVERIFIED and r.verify_next_at is not None]
        for record in found:
            self.watch(record)
        due = [r for r in found if r.verify_next_at is not None and r.verify_next_at <= now]
        return sorted(due, key=lambda r: (r.verify_next_at or now, r.action.tenant, r.action.id))[:limit]

    def reverify_due(self, limit: int = DUE_MAX) -> list[ActionRecord]:
        """One round of the durable schedule: check every watched action due now (at most ``limit``), after a
        scan of every action row on the first and every ``SCAN_EVERY``-th round. The records checked.

        Raises:
            Exception: whatever the ledger raises (the caller logs it and tries again next round).
        """
        now = self.clock.now()
        if self._rounds % SCAN_EVERY == 0:
            self.due(now, 0)
        self._rounds += 1
        with self._lock:
            due = sorted((at, key) for key, at in self._watched.items() if at <= now)[:limit]
        checked = [self._check(tenant, action_id, if_due=True) for _, (tenant, action_id) in due]
        return [record for record, counted in checked if counted]

    def _after_check(self, record: ActionRecord, ok: bool, now: datetime) -> tuple[ActionRecord, list[Event]]:
        checks = record.verify_attempts + 1
        if ok:
            return record.moved(ActionStatus.DONE, now, verify_attempts=checks, verified_at=now,
                                verify_next_at=None), []
        spec = self.spec(record)
        confirmable = spec.url is not None or spec.verifier is not None or spec.trust_outcome
        next_at = next_check_at(spec, checks, record.published_at or record.updated_at or now, now) \
            if confirmable else None  # nothing could ever confirm it: no schedule, one event
        nxt = record.moved(ActionStatus.UNVERIFIED, now, verify_attempts=checks, verify_next_at=next_at)
        events = []
        if checks == spec.attempts:
            events.append(action_event(nxt, "unverified", now, attempts=checks, url=nxt.outcome_url,
                                       next_check_at=None if next_at is None else next_at.isoformat()))
        if next_at is None:
            events.append(action_event(nxt, "verification_stopped", now, attempts=checks, url=nxt.outcome_url))
        return nxt, events

    def _confirmed(self, record: ActionRecord) -> bool:
        # a verifier that raises (a custom callable's bug, a URL template naming an unknown field) is a failed
        # check, counted and re-scheduled like any other: never "done", and never a round stuck on one action
        try:
            return self._confirm(record)
        except Exception:
            log.exception("verifying action %s of %s raised; counted as not confirmed", record.action.id,
                          record.action.tenant)
            return False

    def _confirm(self, record: ActionRecord) -> bool:
        rules = self.policy.rules_for(record.action.platform, record.action.kind)
        if rules is None:
            return False
        spec = rules.verification
        if spec.trust_outcome:
            return True
        if spec.verifier is not None and not spec.verifier(record):
            return False
        if spec.url is not None:
            url = spec.url.format(url=record.outcome_url or "", id=record.action.id)
            marker = spec.marker.format(text40=record.action.text[:40], id=record.action.id)
            status, body = self.fetch(url)
            return status == 200 and marker in body
        return spec.verifier is not None
