"""Durable re-verification: unverified actions are re-checked on a schedule kept in their ledger rows,
so a new gateway resumes what a stopped one left (virtual time; loopback stub platform; real HTTP)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from actions_kit import T0, TUMBLR, RecordingSink, StubPlatform
from loopback import LoopbackServer

from comptroller.actions_config import parse_actions
from comptroller.bootstrap import build_engine
from comptroller.clock import VirtualClock
from comptroller.config import load_policy
from comptroller.domain.actions import Action, ActionRecord, ActionStatus
from comptroller.domain.actions.rules import Verification
from comptroller.domain.actions.schedule import VERIFY_HORIZON_S, backoff_s
from comptroller.engine import Engine
from comptroller.engine.action_rows import action_key
from comptroller.engine.actions import ActionService
from comptroller.engine.verification import BODY_BYTES_MAX, http_fetch
from comptroller.gateway.app import create_app
from comptroller.gateway.config import GatewayConfig
from comptroller.gateway.reverify import Reverifier
from comptroller.storage import store_from_url
from comptroller.storage.keys import SQLiteKeyStore, new_key

START_S, MAX_S, ATTEMPTS = 60.0, 240.0, 2
TEXT = "Five lessons from running six AI agents in production for a month. Read the thread."
POLICY = f"""namespace = "test"
[actions.tumblr]
count_max = 3
window_s = 86400
verify_url = "{{url}}"
verify_attempts = {ATTEMPTS}
verify_backoff_s_start = {START_S}
verify_backoff_s_max = {MAX_S}
"""


def _wait(what: Callable[[], ActionRecord], until: Callable[[ActionRecord], bool]) -> ActionRecord:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        record = what()
        if until(record):
            return record
        time.sleep(0.05)
    raise AssertionError(f"not reached within 20 s; last seen {what()}")


class Gateways:
    """Gateways started one after another on one SQLite ledger and one virtual clock, as restarted workers."""

    def __init__(self, tmp_path: Path) -> None:
        self.db = tmp_path / "ledger.db"
        self.policy = load_policy(tmp_path / "policy.toml")
        self.clock = VirtualClock(T0)
        self.running: list[LoopbackServer] = []

    def start(self) -> tuple[str, Engine]:
        """A new gateway (its own engine and key store) on the ledger: its URL and engine."""
        engine = build_engine(db_url=f"sqlite:///{self.db}", policy=self.policy, clock=self.clock, sinks=[])
        app = create_app(engine=engine, keys=SQLiteKeyStore(self.db), config=GatewayConfig(admin_key_env=None),
                         namespace="test")
        self.running.append(LoopbackServer(app).__enter__())
        return self.running[-1].url, engine

    def stop_oldest(self) -> None:
        """Close the oldest gateway still running (its app shuts down; its re-verifier stops)."""
        self.running.pop(0).__exit__(None, None, None)


@pytest.fixture
def gateways(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Gateways]:
    """Gateways on the test's ledger with POLICY as COMPTROLLER_CONFIG; every one still running is closed at the end."""
    (tmp_path / "policy.toml").write_text(POLICY, encoding="utf-8")
    monkeypatch.setenv("COMPTROLLER_CONFIG", str(tmp_path / "policy.toml"))
    started = Gateways(tmp_path)
    yield started
    while started.running:
        started.stop_oldest()


def test_a_restarted_gateway_resumes_re_verifying(gateways: Gateways, tmp_path: Path) -> None:
    """A post the stub answered 200 for without publishing is checked once by the first gateway, which then
    stops; a new gateway on the same ledger re-checks it when due (the unverified event at the attempts-th
    check), and marks it done once the stub publishes it."""
    clock = gateways.clock
    with StubPlatform(publishes=False) as liar:
        url, _ = gateways.start()
        record, plain = new_key(tenant="acme", agent="writer")
        SQLiteKeyStore(tmp_path / "ledger.db").add(record)
        auth = {"Authorization": f"Bearer {plain}"}
        body = {"id": "p1", "platform": "tumblr", "kind": "post", "text": TEXT}
        assert httpx.post(f"{url}/v1/actions/check", json=body, headers=auth, timeout=10).status_code == 200
        liar.publish(TEXT)  # answered 200, published nothing
        outcome = httpx.post(f"{url}/v1/actions/p1/outcome", json={"published": True, "url": liar.url},
                             headers=auth, timeout=10)
        assert outcome.json()["action"]["status"] == "unverified"

        reader = store_from_url(f"sqlite:///{tmp_path / 'ledger.db'}")

        def stored() -> ActionRecord:
            found = reader.state(action_key("acme", "p1"))
            assert found is not None
            return ActionRecord.from_record(found.record)
        checked = _wait(stored, lambda r: r.verify_attempts == 1)
        assert (checked.status, checked.verify_next_at, liar.gets) == (
            ActionStatus.UNVERIFIED, T0 + timedelta(seconds=START_S), 1)
        gateways.stop_oldest()  # the first gateway stops
        assert stored().verify_attempts == 1 and liar.gets == 1  # nothing re-checked it: it was not due

        _, second = gateways.start()  # a new gateway on the same ledger, as after a restart
        clock.advance(START_S)  # the second check falls due
        again = _wait(stored, lambda r: r.verify_attempts == 2)
        assert again.status is ActionStatus.UNVERIFIED
        assert again.verify_next_at == clock.now() + timedelta(seconds=backoff_s(Verification(
            backoff_s_start=START_S, backoff_s_max=MAX_S), 2))
        events = [e for e in second.store.events("action") if e.code == "unverified"]
        assert [(e.detail["action"], e.detail["attempts"]) for e in events] == [("p1", ATTEMPTS)]

        liar.publishes = True
        liar.publish(TEXT)  # the platform finally shows the post
        clock.advance(backoff_s(Verification(backoff_s_start=START_S, backoff_s_max=MAX_S), 2))
        done = _wait(stored, lambda r: r.status is ActionStatus.DONE)
        assert (done.verify_attempts, done.verified_at, done.verify_next_at) == (3, clock.now(), None)
        assert liar.gets == 3
        reader.close()


def test_the_schedule_backs_off_and_stops_at_the_horizon() -> None:
    """Checks of an action that never shows up fall due at start, 2x start ... capped at the maximum, are
    counted once each, raise unverified once, and stop one horizon after the outcome (verification_stopped)."""
    clock, sink = VirtualClock(T0), RecordingSink()
    with StubPlatform(publishes=False) as liar:
        spec = {**TUMBLR, "verify_url": "{url}", "verify_attempts": 3, "verify_backoff_s_start": 600,
                "verify_backoff_s_max": 7200}
        svc = ActionService(store_from_url("memory://"), clock, parse_actions({"tumblr": spec}), sinks=sink)
        svc.check(Action("a1", "acme", "writer", "tumblr", "post", TEXT))
        svc.record_outcome("acme", "a1", published=True, url=liar.url)
        waits: list[float] = []
        for _ in range(1000):  # bounded: the horizon ends it long before
            record = svc.get("acme", "a1")
            assert record is not None
            if record.verify_next_at is None:
                break
            waits.append((record.verify_next_at - clock.now()).total_seconds())
            clock.set(record.verify_next_at)
            assert svc.reverify_due() != []
            assert svc.reverify_due() == []  # the same instant again: nothing is due, nothing counted twice
    spec_ = Verification(backoff_s_start=600, backoff_s_max=7200)
    expected = [0.0]
    while sum(expected) + backoff_s(spec_, len(expected)) <= VERIFY_HORIZON_S:
        expected.append(backoff_s(spec_, len(expected)))
    assert waits == expected
    assert record.verify_attempts == len(expected) == liar.gets
    assert [e.code for e in sink.events] == ["unverified", "verification_stopped"]
    assert sink.events[0].detail["attempts"] == 3


def test_two_workers_racing_on_a_due_check_count_it_once() -> None:
    """Worker b reads a due action, and while b fetches, worker a checks it and writes: b's write loses the
    compare-and-set, sees a's check, and counts nothing (one count, two GETs)."""
    clock = VirtualClock(T0)
    store = store_from_url("memory://")
    policy = parse_actions({"tumblr": {**TUMBLR, "verify_url": "{url}"}})
    gets: list[str] = []
    a = ActionService(store, clock, policy, fetch=lambda url: (gets.append("a"), (200, "<html></html>"))[1])

    def b_fetch(url: str) -> tuple[int, str]:
        gets.append("b")
        a.check_once("acme", "a1")  # a's check lands while b is still fetching
        return 200, "<html></html>"
    b = ActionService(store, clock, policy, fetch=b_fetch)
    a.check(Action("a1", "acme", "writer", "tumblr", "post", TEXT))
    a.record_outcome("acme", "a1", published=True, url="http://127.0.0.1:9/post")
    assert [r.action.id for r in b.verifier.due(clock.now())] == ["a1"]
    assert b.reverify_due() == []  # b's check lost: it counted nothing
    record = a.get("acme", "a1")
    assert record is not None and (record.verify_attempts, record.status) == (1, ActionStatus.UNVERIFIED)
    assert gets == ["b", "a"]
    assert b.verifier.due(clock.now()) == []


def test_a_failing_round_is_logged_once_and_the_rounds_go_on(caplog: pytest.LogCaptureFixture) -> None:
    """While rounds fail (a ledger outage) the re-verifier logs the first failure only, backs off, keeps going,
    and says when rounds work again."""
    class Flaky:
        def __init__(self) -> None:
            self.calls = 0

        def reverify_due(self) -> list[ActionRecord]:
            self.calls += 1
            if self.calls <= 3:
                raise ConnectionError("ledger down")
            return []

    flaky = Flaky()

    class Services:
        def actions(self, gw: object) -> Flaky:
            return flaky

    async def run() -> None:
        reverifier = Reverifier(object(), Services(), interval_s=0.01)  # type: ignore[arg-type]
        await reverifier.start()
        for _ in range(2000):  # bounded: about 20 s at most
            if flaky.calls >= 5:
                break
            await asyncio.sleep(0.01)
        await reverifier.aclose()

    with caplog.at_level(logging.INFO, logger="comptroller.gateway"):
        asyncio.run(run())
    assert flaky.calls >= 5
    failures = [r for r in caplog.records if "round failed" in r.getMessage()]
    assert len(failures) == 1 and failures[0].exc_info is not None
    assert [r.getMessage() for r in caplog.records if "work again" in r.getMessage()] == [
        "re-verification rounds work again"]


def test_an_unverified_row_written_before_the_schedule_is_due_at_once() -> None:
    """A row without published_at/verify_next_at (written before the schedule existed) reads as due at its last
    update if unverified, and unscheduled otherwise, so an upgrade forgets no pending verification."""
    action = Action("a1", "acme", "writer", "tumblr", "post", TEXT)
    for status, due in [(ActionStatus.UNVERIFIED, T0), (ActionStatus.DONE, None), (ActionStatus.ALLOWED, None)]:
        old = ActionRecord(action, status, T0 - timedelta(hours=1), updated_at=T0, version=3).to_record()
        del old["published_at"], old["verify_next_at"]
        assert ActionRecord.from_record(old).verify_next_at == due


def test_the_verifier_reads_at_most_body_bytes_max() -> None:
    """A marker past BODY_BYTES_MAX of the page is not seen (the read is bounded); one before it is; a closed
    port reads as status 0."""
    with StubPlatform(publishes=True) as platform:
        platform.publish("early marker")
        platform.publish("x" * BODY_BYTES_MAX)
        platform.publish("late marker")
        status, body = http_fetch(platform.url)
    assert status == 200 and "early marker" in body and "late marker" not in body
    assert len(body.encode()) <= BODY_BYTES_MAX
    assert http_fetch(platform.url) == (0, "")  # the stub is closed now


def explodes_on_a1(record: ActionRecord) -> bool:
    """A custom verifier with a bug: it raises for action a1 and confirms every other action."""
    if record.action.id == "a1":
        raise RuntimeError("verifier bug")
    return True


def test_a_verifier_that_raises_is_a_failed_check_and_does_not_stall_the_round() -> None:
    """A custom verifier raising for one action counts a failed check for it (re-scheduled, never done), and the
    same round still verifies the other due action."""
    clock = VirtualClock(T0)
    svc = ActionService(store_from_url("memory://"), clock,
                        parse_actions({"tumblr": {"count_max": 10, "verifier": "test_reverify:explodes_on_a1"}}))
    for i in (1, 2):
        svc.check(Action(f"a{i}", "acme", "writer", "tumblr", "post", f"{TEXT} ({i})"))
        svc.record_outcome("acme", f"a{i}", published=True)
    checked = {r.action.id: r for r in svc.reverify_due()}
    assert (checked["a1"].status, checked["a1"].verify_attempts) == (ActionStatus.UNVERIFIED, 1)
    assert checked["a1"].verify_next_at is not None and checked["a1"].verify_next_at > clock.now()
    assert checked["a2"].status is ActionStatus.DONE
