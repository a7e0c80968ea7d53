"""The action service on a real ledger: idempotent checks, approval holds, outcomes, verified "done"."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from actions_kit import TUMBLR, RecordingSink, StubPlatform

from comptroller.actions_config import parse_actions
from comptroller.clock import VirtualClock
from comptroller.domain.actions import Action, ActionStatus
from comptroller.engine.actions import (
    ActionAlreadyDecidedError,
    ActionConflictError,
    ActionExpiredError,
    ActionService,
)
from comptroller.ports import LedgerStore

T0 = datetime(2026, 11, 2, 8, 0, tzinfo=UTC)
TEXT = "Five lessons from running six AI agents in production for a month. Read the thread."


@pytest.fixture
def ledger(store: LedgerStore) -> LedgerStore:
    """The ledger under test: every backend of ``ledger_kit.BACKENDS`` (memory, SQLite, PostgreSQL)."""
    return store


def _service(store: LedgerStore, actions: dict[str, Any], clock: VirtualClock,
             sink: RecordingSink) -> ActionService:
    return ActionService(store, clock, parse_actions(actions), sinks=sink, sleep=clock.advance)


@pytest.fixture
def clock() -> VirtualClock:
    """Virtual time from T0."""
    return VirtualClock(T0)


@pytest.fixture
def sink() -> RecordingSink:
    """The events handed to sinks."""
    return RecordingSink()


def _act(i: int | str, text: str = TEXT, **kw: Any) -> Action:
    return Action(id=f"a{i}", tenant="acme", agent="writer", platform=kw.pop("platform", "tumblr"),
                  kind="post", text=text, **kw)


def test_a_check_is_idempotent_by_id(ledger: LedgerStore, clock: VirtualClock, sink: RecordingSink) -> None:
    """Checking an id again answers the stored decision and takes no second slot; other fields conflict."""
    svc = _service(ledger, {"tumblr": {**TUMBLR, "trust_outcome": True}}, clock, sink)
    assert svc.check(_act(1)).status is ActionStatus.ALLOWED
    assert svc.check(_act(1)).status is ActionStatus.ALLOWED
    with pytest.raises(ActionConflictError):
        svc.check(_act(1, "another text"))
    clock.advance(TUMBLR["gap_s"])
    assert svc.check(_act(2, "a different post about something else entirely")).status is ActionStatus.ALLOWED


def test_an_unconfigured_platform_is_refused(ledger: LedgerStore, clock: VirtualClock, sink: RecordingSink) -> None:
    """No section for the platform means refused (unknown_platform), and the refusal is an event."""
    svc = _service(ledger, {"tumblr": TUMBLR}, clock, sink)
    record = svc.check(_act(1, platform="mastodon"))
    assert (record.status, [r.code for r in record.reasons]) == (ActionStatus.REFUSED, ["unknown_platform"])
    assert [(e.kind, e.code) for e in sink.events] == [("action", "refused")]
    assert [e.code for e in svc.store.events("action")] == ["refused"]


def test_approval_pending_approved_executed(ledger: LedgerStore, clock: VirtualClock, sink: RecordingSink) -> None:
    """A held action waits in pending_approval, is approved, then executed and verified done."""
    svc = _service(ledger, {"tumblr": {**TUMBLR, "approval": True, "trust_outcome": True}}, clock, sink)
    assert svc.check(_act(1)).status is ActionStatus.PENDING_APPROVAL
    with pytest.raises(ActionConflictError):
        svc.record_outcome("acme", "a1", published=True)  # not yet approved: it may not have happened
    clock.advance(600)
    approved = svc.decide("acme", "a1", approve=True, by="ops@acme")
    assert (approved.status, approved.decided_by) == (ActionStatus.APPROVED, "ops@acme")
    assert svc.record_outcome("acme", "a1", published=True).status is ActionStatus.UNVERIFIED
    assert svc.verify("acme", "a1").status is ActionStatus.DONE
    assert [e.code for e in sink.events] == ["pending_approval"]


def test_approval_pending_rejected(ledger: LedgerStore, clock: VirtualClock, sink: RecordingSink) -> None:
    """A rejected action cannot be approved afterwards nor executed, and takes no slot."""
    svc = _service(ledger, {"tumblr": {**TUMBLR, "approval": True}}, clock, sink)
    svc.check(_act(1))
    assert svc.decide("acme", "a1", approve=False, by="ops").status is ActionStatus.REJECTED
    with pytest.raises(ActionAlreadyDecidedError):
        svc.decide("acme", "a1", approve=True, by="ops")
    with pytest.raises(ActionConflictError):
        svc.record_outcome("acme", "a1", published=True)
    assert svc.check(_act(2, "a different post about budgets")).status is ActionStatus.PENDING_APPROVAL


def test_approval_pending_expired(ledger: LedgerStore, clock: VirtualClock, sink: RecordingSink) -> None:
    """A hold not decided within approval_ttl_s reads expired and can no longer be approved."""
    ttl_s = 3600
    svc = _service(ledger, {"tumblr": {**TUMBLR, "approval": True, "approval_ttl_s": ttl_s}}, clock, sink)
    svc.check(_act(1))
    clock.advance(ttl_s - 1)
    assert svc.list("acme")[0].status is ActionStatus.PENDING_APPROVAL
    clock.advance(1)
    assert svc.list("acme")[0].status is ActionStatus.EXPIRED
    with pytest.raises(ActionExpiredError):
        svc.decide("acme", "a1", approve=True, by="ops")


def test_approval_rechecks_the_rate_rules(ledger: LedgerStore, clock: VirtualClock, sink: RecordingSink) -> None:
    """An approval inside another action's gap is refused with min_gap: approving never skips a limit."""
    svc = _service(ledger, {"tumblr": {**TUMBLR, "approval": True}}, clock, sink)
    svc.check(_act(1))
    svc.check(_act(2, "a different post about budgets and pacing of monthly spend"))
    assert svc.decide("acme", "a1", approve=True, by="ops").status is ActionStatus.APPROVED
    second = svc.decide("acme", "a2", approve=True, by="ops")
    assert (second.status, [r.code for r in second.reasons]) == (ActionStatus.REFUSED, ["min_gap"])


def test_a_failed_outcome_returns_the_slot(ledger: LedgerStore, clock: VirtualClock, sink: RecordingSink) -> None:
    """An action whose outcome failed no longer counts against the rate limit."""
    svc = _service(ledger, {"tumblr": {"count_max": 1, "window_s": 86_400}}, clock, sink)
    svc.check(_act(1))
    assert svc.check(_act(2, "another post entirely, on pacing")).status is ActionStatus.REFUSED
    assert svc.record_outcome("acme", "a1", published=False).status is ActionStatus.FAILED
    assert svc.check(_act(3, "another post entirely, on pacing")).status is ActionStatus.ALLOWED


@pytest.fixture
def liar() -> Iterator[StubPlatform]:
    """A platform that answers 200 and publishes nothing."""
    with StubPlatform(publishes=False) as platform:
        yield platform


def test_a_platform_that_answers_200_and_publishes_nothing(ledger: LedgerStore, clock: VirtualClock,
                                                           sink: RecordingSink, liar: StubPlatform) -> None:
    """The action stays unverified, is re-checked with backoff (virtual waits), and raises an event."""
    attempts, start_s = 4, 30.0
    svc = _service(ledger, {"tumblr": {**TUMBLR, "verify_url": "{url}", "verify_attempts": attempts,
                                    "verify_backoff_s_start": start_s}}, clock, sink)
    assert svc.check(_act(1)).status is ActionStatus.ALLOWED
    liar.publish(TEXT)
    svc.record_outcome("acme", "a1", published=True, url=liar.url)
    record = svc.verify("acme", "a1")
    assert (record.status, record.verify_attempts, liar.gets) == (ActionStatus.UNVERIFIED, attempts, attempts)
    waited_s = (clock.now() - T0).total_seconds()
    assert waited_s >= start_s * (attempts - 1)  # tenacity slept between attempts, on the virtual clock
    assert [(e.code, e.detail["attempts"]) for e in sink.events if e.code == "unverified"] == [("unverified", attempts)]
    assert [e.code for e in svc.store.events("action")] == ["unverified"]


def test_a_platform_that_publishes_is_verified_done(ledger: LedgerStore, clock: VirtualClock,
                                                    sink: RecordingSink) -> None:
    """The same check against a platform whose page holds the post confirms it at the first attempt."""
    with StubPlatform(publishes=True) as honest:
        svc = _service(ledger, {"tumblr": {**TUMBLR, "verify_url": "{url}"}}, clock, sink)
        svc.check(_act(1))
        honest.publish(TEXT)
        svc.record_outcome("acme", "a1", published=True, url=honest.url)
        record = svc.verify("acme", "a1")
    assert (record.status, record.verify_attempts, record.verified_at) == (ActionStatus.DONE, 1, T0)


def test_no_verifier_means_never_done(ledger: LedgerStore, clock: VirtualClock, sink: RecordingSink) -> None:
    """Without verify_url, a verifier or trust_outcome = true an action stays unverified: no silent "done"."""
    svc = _service(ledger, {"tumblr": {**TUMBLR, "verify_attempts": 1}}, clock, sink)
    svc.check(_act(1))
    svc.record_outcome("acme", "a1", published=True)
    assert svc.verify("acme", "a1").status is ActionStatus.UNVERIFIED


def test_concurrent_checks_take_exactly_the_limit(ledger: LedgerStore, clock: VirtualClock,
                                                  sink: RecordingSink) -> None:
    """32 threads checking distinct actions at one instant on one ledger: exactly count_max are allowed."""
    count_max, agents = 3, 32
    svc = _service(ledger, {"tumblr": {"count_max": count_max, "window_s": 86_400}}, clock, sink)
    barrier = threading.Barrier(agents)
    statuses: list[ActionStatus] = []

    def agent(i: int) -> None:
        barrier.wait(timeout=30)
        statuses.append(svc.check(Action(f"c{i}", "acme", f"agent{i}", "tumblr", "post", f"post {i}")).status)

    threads = [threading.Thread(target=agent, args=(i,)) for i in range(agents)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert (statuses.count(ActionStatus.ALLOWED), len(statuses)) == (count_max, agents)
