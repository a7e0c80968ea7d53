"""Layer 2b: loop detectors fire before the repeated call is paid, and the lock they trip does not forget."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from comptroller.domain.codes import Code
from comptroller.domain.defenses.errors import DefenseConfigError
from comptroller.domain.defenses.loop_lock import LockStatus
from comptroller.domain.defenses.loops import (
    LoopConfig,
    LoopHistory,
    LoopRequest,
    check_loops,
    loop_scope,
    reset_loops,
)
from comptroller.domain.defenses.similarity import fingerprint, similarity
from comptroller.domain.defenses.verdict import Rule
from comptroller.domain.scopes import Attribution, Level

T0 = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)
ROOM = "acme|room"
CFG = LoopConfig()
LONG = ("please review the draft of chapter three and list every factual error you can find "
        "and then summarise the chapter in five short bullet points for the editor please")
# LONG has n words; LONG + one other word shares n - 2 of its n - 1 trigrams with LONG + another
# word, so their similarity is (n - 2) / n, near-identical at the default 0.9 (checked below).


def history() -> LoopHistory:
    """An empty history of one conversation."""
    return LoopHistory(level=Level.CONVERSATION, scope=ROOM)


def req(n: int, agent: str = "writer", text: str = LONG, fp: str | None = None) -> LoopRequest:
    """Request number ``n`` (its own call id); the fingerprint defaults to one of the text."""
    return LoopRequest(call_id=f"c{n}", agent=agent, fingerprint=fp or fingerprint("m", [{"content": text}]),
                       text=text)


def feed(requests: list[LoopRequest], config: LoopConfig = CFG, step_s: float = 10) -> list[str | None]:
    """Run the requests in order, ``step_s`` apart; each entry is the detector that fired, or None."""
    state, fired = history(), []
    for i, request in enumerate(requests):
        step = check_loops(state, config, request, T0 + timedelta(seconds=i * step_s))
        state = step.history
        fired.append(None if step.verdict is None else step.verdict.detector)
    return fired


def varied(n: int, agent: str = "writer") -> LoopRequest:
    """A request unlike the others (its own words)."""
    words = " ".join(f"w{n}x{k}" for k in range(8))
    return req(n, agent, text=words)


N_ID, N_NEAR, TURNS = CFG.identical_max, CFG.near_duplicates_max, CFG.alternation_turns_max or 0


@pytest.mark.parametrize(("name", "requests", "expected"), [
    ("identical requests pass up to identical_max and the next is refused",
     [req(i) for i in range(N_ID + 1)], [None] * N_ID + ["same_request"]),
    ("identical requests by different agents are not a repeat",
     [req(i, "abc"[i % 3], fp="F") for i in range(N_ID + 2)], [None] * (N_ID + 2)),
    ("A-B alternation up to the limit passes and the next turn is refused",
     [varied(i, "ab"[i % 2]) for i in range(TURNS + 1)], [None] * TURNS + ["ab_alternation"]),
    ("a third agent breaks the alternation",
     [varied(i, "abc"[0 if i % 2 == 0 else (2 if i == 3 else 1)]) for i in range(TURNS)] + [varied(99, "a")],
     [None] * (TURNS + 1)),
    ("near-identical texts pass up to near_duplicates_max and the next is refused",
     [req(i, text=f"{LONG} {chr(ord('p') + i)}", fp=f"F{i}") for i in range(N_NEAR + 1)],
     [None] * N_NEAR + ["near_duplicate"]),
    ("short texts are not compared for near-duplicates",
     [req(i, text="continue", fp=f"F{i}") for i in range(N_NEAR + 3)], [None] * (N_NEAR + 3)),
])
def test_detectors_table(name: str, requests: list[LoopRequest], expected: list[str | None]) -> None:
    """Each detector fires on its pattern, at its threshold, and not before."""
    assert feed(requests) == expected, name


def test_a_users_first_test_loop_of_three_identical_calls_passes() -> None:
    """The default tells a few repeats from a loop: three identical calls in a row are all admitted."""
    assert feed([req(i) for i in range(3)]) == [None, None, None]


def test_identical_max_may_exceed_one_hundred_and_the_row_stays_small() -> None:
    """A benchmark sets identical_max = 500: 500 identical calls pass, the 501st is refused, one entry is kept."""
    config = LoopConfig(identical_max=500)
    fired = feed([req(i) for i in range(501)], config, step_s=1)
    assert fired == [None] * 500 + ["same_request"]


def test_retries_differing_only_in_ids_times_paths_and_numbers_are_one_family() -> None:
    """An error line with a new timestamp, UUID, hex id, path and line number each time is a near-duplicate."""
    def retry(i: int) -> LoopRequest:
        text = (f"Error at 2024-06-01T12:{i:02d}:07Z: request {i:08x}-0000-4000-8000-{i:012x} failed in "
                f"/srv/app/jobs/run_{i}.py line {100 + i}, pointer 0x{i + 4096:x}; please retry the job now")
        return req(i, text=text, fp=f"F{i}")
    assert feed([retry(i) for i in range(N_NEAR + 1)]) == [None] * N_NEAR + ["near_duplicate"]


def test_the_near_duplicate_texts_are_near_identical_by_construction() -> None:
    """LONG plus one differing word is (n - 2) / n similar to LONG plus another, above the threshold."""
    n = len(LONG.split())
    assert similarity(f"{LONG} w", f"{LONG} x") == pytest.approx((n - 2) / n)
    assert (n - 2) / n >= CFG.near_duplicate_min


def test_detectors_fire_in_a_fixed_order() -> None:
    """A request that is both an identical repeat and near-identical is reported as same_request."""
    assert feed([req(1), req(2), req(3)], LoopConfig(identical_max=2, near_duplicates_max=2))[-1] == "same_request"


def test_alternation_can_be_switched_off() -> None:
    """With alternation_turns_max None a long two-agent dialogue passes."""
    config = LoopConfig(alternation_turns_max=None)
    assert feed([varied(i, "ab"[i % 2]) for i in range(20)], config) == [None] * 20


def _tripped(config: LoopConfig = CFG) -> tuple[LoopHistory, datetime]:
    """A history whose lock the identical-request detector just tripped, and the time of the trip."""
    state = history()
    for i in range(config.identical_max):
        state = check_loops(state, config, req(i), T0 + timedelta(seconds=i)).history
    at = T0 + timedelta(seconds=config.identical_max)
    step = check_loops(state, config, req(config.identical_max), at)
    assert step.verdict is not None and step.verdict.detector == "same_request"
    return step.history, at


def test_a_trip_locks_the_scope_with_evidence_and_an_event() -> None:
    """loop_detected names the detector, the agent and counts; the lock is written and an opened event sent."""
    state = history()
    for i in range(N_ID):
        state = check_loops(state, CFG, req(i), T0 + timedelta(seconds=i)).history
    step = check_loops(state, CFG, req(N_ID), T0 + timedelta(seconds=N_ID))
    verdict = step.verdict
    assert verdict is not None
    assert (verdict.code, verdict.rule, verdict.level, verdict.scope) == (Code.LOOP_DETECTED, Rule.LOOP,
                                                                          Level.CONVERSATION, ROOM)
    assert (verdict.evidence["seen"], verdict.evidence["identical_max"]) == (N_ID, N_ID)
    assert verdict.retry_after_s == pytest.approx(CFG.cooldown_s_start)
    assert step.history.entries == state.entries  # the refused request is not counted
    assert step.history.lock.status(T0 + timedelta(seconds=N_ID)) is LockStatus.OPEN
    assert [e.code for e in step.events] == ["opened"]


def test_an_open_lock_refuses_every_call_of_the_scope() -> None:
    """While the cooldown runs even another agent's new request is refused (detector locked)."""
    state, at = _tripped()
    step = check_loops(state, CFG, varied(100, "other"), at + timedelta(seconds=CFG.cooldown_s_start / 2))
    assert step.verdict is not None and step.verdict.detector == "locked"
    assert step.verdict.retry_after_s == pytest.approx(CFG.cooldown_s_start / 2)


def test_the_loops_own_probe_is_refused_again_and_the_cooldown_doubles() -> None:
    """Half-open, the looping request is refused (never paid) and re-opens the lock for twice as long."""
    state, at = _tripped()
    cooldowns = []
    for _ in range(4):
        at += timedelta(seconds=CFG.cooldown_s_max)  # past any cooldown: half-open
        step = check_loops(state, CFG, req(1000 + len(cooldowns)), at)
        assert step.verdict is not None and step.verdict.detector == "same_request"
        assert [e.code for e in step.events] == ["reopened"]
        state = step.history
        cooldowns.append(step.verdict.retry_after_s)
    expected = [min(CFG.cooldown_s_start * 2 ** n, CFG.cooldown_s_max) for n in range(1, 5)]
    assert cooldowns == pytest.approx(expected)


def test_a_different_probe_closes_the_lock() -> None:
    """Half-open, another request is admitted and closes the lock."""
    state, at = _tripped()
    step = check_loops(state, CFG, varied(7), at + timedelta(seconds=CFG.cooldown_s_start))
    assert step.verdict is None and [e.code for e in step.events] == ["closed"]
    assert step.history.lock.status(at + timedelta(seconds=CFG.cooldown_s_start)) is LockStatus.CLOSED


def test_the_lookback_expiring_does_not_let_a_locked_loop_through() -> None:
    """A day later, the loop's own request is still refused at the probe."""
    state, at = _tripped()
    step = check_loops(state, CFG, req(5000), at + timedelta(days=1))
    assert step.verdict is not None


def test_a_ping_pong_lock_refuses_both_agents_and_admits_a_third() -> None:
    """After an A-B trip, half-open probes by A or B are refused; a third agent's call closes it."""
    state = history()
    step = None
    for i in range(TURNS + 1):
        step = check_loops(state, CFG, varied(i, "ab"[i % 2]), T0 + timedelta(seconds=i))
        state = step.history
    assert step is not None and step.verdict is not None and step.verdict.detector == "ab_alternation"
    later = T0 + timedelta(seconds=TURNS + CFG.cooldown_s_max + 1)
    for i, agent in enumerate("abab"):
        probe = check_loops(state, CFG, varied(200 + i, agent), later)
        assert probe.verdict is not None and probe.verdict.detector == "ab_alternation"
        state = probe.history
        later += timedelta(seconds=CFG.cooldown_s_max + 1)
    assert check_loops(state, CFG, varied(300, "c"), later).verdict is None


def test_reset_clears_the_lock_and_the_history() -> None:
    """An admin reset closes the lock, forgets the trips and the families, and sends a reset event."""
    state, at = _tripped()
    step = reset_loops(state, at)
    assert step.history.lock.trips == 0 and step.history.entries == ()
    assert step.history.version == state.version + 1 and [e.code for e in step.events] == ["reset"]
    assert check_loops(step.history, CFG, req(9000), at).verdict is None


def test_the_history_record_round_trips_with_its_lock() -> None:
    """from_record(to_record(h)) == h, lock included."""
    state, _ = _tripped()
    assert LoopHistory.from_record(state.to_record()) == state


def test_repeats_after_a_gap_of_the_lookback_start_a_new_run() -> None:
    """A request seen only before a lookback-long gap counts as new."""
    assert feed([req(i) for i in range(N_ID + 1)], step_s=CFG.lookback_s)[-1] is None


def test_admitting_the_same_call_again_is_idempotent() -> None:
    """A retried admission of a recorded call id changes nothing and is not a repeat."""
    state = check_loops(history(), CFG, req(1), T0).history
    step = check_loops(state, CFG, req(1), T0 + timedelta(seconds=1))
    assert step.verdict is None and step.history is state


def test_the_scope_is_the_conversation_else_the_agent() -> None:
    """Calls in a conversation share its history; calls without one use the agent's."""
    in_room, alone = Attribution(namespace="acme", agent="w", conversation="room"), Attribution(namespace="acme",
                                                                                               tenant="t", agent="w")
    assert loop_scope(in_room) == (Level.CONVERSATION, dict(in_room.scopes())[Level.CONVERSATION])
    assert loop_scope(alone) == (Level.AGENT, dict(alone.scopes())[Level.AGENT])


@pytest.mark.parametrize(("field", "value"), [
    ("identical_max", 0),
    ("near_duplicate_min", 0),
    ("near_duplicate_min", 1.5),
    ("alternation_turns_max", 1),
    ("lookback_s", 0),
    ("history_max", 1),
    ("cooldown_s_max", 1),  # below the start
])
def test_invalid_thresholds_are_clear_errors(field: str, value: object) -> None:
    """Out-of-range thresholds raise DefenseConfigError naming the field."""
    with pytest.raises(DefenseConfigError, match=field):
        LoopConfig(**{field: value})  # type: ignore[arg-type]


@given(agents=st.lists(st.sampled_from("abc"), max_size=60), history_max=st.integers(8, 40),
       words=st.integers(5, 400))
def test_history_stays_bounded_whatever_the_text_length(agents: list[str], history_max: int, words: int) -> None:
    """However many requests pass and however long their texts, a history keeps at most history_max
    families of fixed-size signatures."""
    config = LoopConfig(history_max=history_max, alternation_turns_max=None)
    state = history()
    for i, agent in enumerate(agents):
        text = " ".join(f"w{i}x{k}" for k in range(words))
        state = check_loops(state, config, req(i, agent, text=text), T0 + timedelta(seconds=i)).history
        assert len(state.entries) <= history_max
        assert all(len(e.sketch) <= 8 * 32 for e in state.entries)
