"""``with comptroller.action(...) as act:``: refusal raises before the block, the outcome is recorded on exit."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from actions_kit import TUMBLR, StubPlatform

from comptroller.actions_config import parse_actions
from comptroller.bootstrap import build_engine
from comptroller.clock import VirtualClock
from comptroller.config import Policy
from comptroller.domain.actions import ActionStatus
from comptroller.sdk import Comptroller
from comptroller.sdk.actions import ActionHeldError, ActionRefusedError, use_actions

T0 = datetime(2026, 11, 2, 8, 0, tzinfo=UTC)
TEXT = "Heartbeats tell you an agent is alive; verified actions tell you it worked. Follow for more."


def _comptroller(actions: dict[str, object]) -> tuple[Comptroller, VirtualClock]:
    clock = VirtualClock(T0)
    engine = build_engine(db_url="memory://", policy=Policy(), clock=clock, sinks=[])
    comptroller = Comptroller(engine, tenant="acme", agent="writer")
    use_actions(comptroller, parse_actions(actions))
    return comptroller, clock


def test_an_allowed_action_runs_and_is_verified_on_exit() -> None:
    """The block runs; on exit the outcome is recorded and the verifier fetches the URL the block gave."""
    comptroller, _ = _comptroller({"tumblr": {**TUMBLR, "verify_url": "{url}"}})
    with StubPlatform(publishes=True) as platform, comptroller.action(platform="tumblr", kind="post", text=TEXT,
                                                                      task="t1") as act:
        platform.publish(TEXT)
        act.published(platform.url)
    assert (act.record.status, act.record.action.agent, act.record.action.task) == (ActionStatus.DONE, "writer", "t1")


def test_a_refusal_raises_before_the_block() -> None:
    """Inside the gap the second action raises ActionRefusedError with min_gap and its wait; the block never runs."""
    comptroller, _ = _comptroller({"tumblr": {**TUMBLR, "trust_outcome": True}})
    with comptroller.action(platform="tumblr", kind="post", text=TEXT):
        pass
    ran = False
    with pytest.raises(ActionRefusedError) as refused, comptroller.action(platform="tumblr", kind="post",
                                                                          text="another post on pacing"):
        ran = True
    assert not ran
    assert (refused.value.codes, refused.value.retry_after_s) == (("min_gap",), TUMBLR["gap_s"])


def test_a_failing_block_records_failed_and_returns_the_slot() -> None:
    """An exception in the block records the action failed, re-raises, and the next action may go at once."""
    comptroller, _ = _comptroller({"tumblr": {**TUMBLR, "trust_outcome": True}})
    with pytest.raises(ConnectionError), comptroller.action(platform="tumblr", kind="post", text=TEXT):
        raise ConnectionError("tumblr is down")
    with comptroller.action(platform="tumblr", kind="post", text="another post on pacing") as act:
        pass
    assert act.record.status is ActionStatus.DONE


def test_a_held_action_raises_held() -> None:
    """An action needing approval raises ActionHeldError naming the id to approve."""
    comptroller, _ = _comptroller({"tumblr": {**TUMBLR, "approval": True}})
    with pytest.raises(ActionHeldError) as held, comptroller.action(platform="tumblr", kind="post", text=TEXT,
                                                                    action_id="p1"):
        pass
    assert held.value.record.action.id == "p1"
    assert held.value.record.status is ActionStatus.PENDING_APPROVAL
