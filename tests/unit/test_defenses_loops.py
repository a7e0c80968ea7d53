"""Layer 2b: loop detectors fire before the repeated call is paid."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from comptroller.domain.codes import Code
from comptroller.domain.defenses.errors import DefenseConfigError
from comptroller.domain.defenses.loops import (
    LoopConfig,
    LoopHistory,
    LoopRequest,
    check_loops,
    loop_scope,
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


@pytest.mark.parametrize(("name", "requests", "expected"), [
    ("the third identical request is refused",
     [req(1), req(2), req(3)], [None, None, "same_request"]),
    ("identical requests by different agents are not a repeat",
     [req(1, "a", fp="F"), req(2, "b", fp="F"), req(3, "c", fp="F")], [None, None, None]),
    ("A-B alternation up to 8 turns passes and the 9th is refused",
     [varied(i, "ab"[i % 2]) for i in range(9)], [None] * 8 + ["ab_alternation"]),
    ("a third agent breaks the alternation",
     [varied(i, "abacabab"[i]) for i in range(8)] + [varied(8, "a")], [None] * 9),
    ("the fourth near-identical text is refused",
     [req(i, text=f"{LONG} {suffix}", fp=f"F{i}") for i, suffix in enumerate("wxyz")],
     [None, None, None, "near_duplicate"]),
    ("short texts are not compared for near-duplicates",
     [req(i, text="continue", fp=f"F{i}") for i in range(6)], [None] * 6),
])
def test_detectors_table(name: str, requests: list[LoopRequest], expected: list[str | None]) -> None:
    """Each detector fires on its pattern, at its threshold, and not before."""
    assert feed(requests) == expected, name


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


def test_a_refusal_carries_its_evidence_and_leaves_the_history_alone() -> None:
    """loop_detected names the detector, the agent and counts; the refused request is not recorded."""
    state = history()
    for i in (1, 2):
        state = check_loops(state, CFG, req(i), T0 + timedelta(seconds=i)).history
    step = check_loops(state, CFG, req(3), T0 + timedelta(seconds=3))
    verdict = step.verdict
    assert verdict is not None and step.history is state
    assert (verdict.code, verdict.rule, verdict.level, verdict.scope) == (Code.LOOP_DETECTED, Rule.LOOP,
                                                                          Level.CONVERSATION, ROOM)
    assert (verdict.evidence["seen"], verdict.evidence["identical_max"]) == (2, CFG.identical_max)
    # waiting helps once the oldest repeat leaves the lookback
    assert verdict.retry_after_s == pytest.approx(CFG.lookback_s + 1 - 3)


def test_repeats_older_than_the_lookback_are_forgotten() -> None:
    """A request seen only before the lookback counts as new."""
    assert feed([req(1), req(2), req(3)], step_s=CFG.lookback_s)[-1] is None


def test_admitting_the_same_call_again_is_idempotent() -> None:
    """A retried admission of a recorded call id changes nothing and is not a repeat."""
    state = check_loops(history(), CFG, req(1), T0).history
    step = check_loops(state, CFG, req(1), T0 + timedelta(seconds=1))
    assert step.verdict is None and step.history is state


def test_the_scope_is_the_conversation_else_the_agent() -> None:
    """Calls in a conversation share its history; calls without one use the agent's."""
    assert loop_scope(Attribution(namespace="acme", agent="w", conversation="room")) == (Level.CONVERSATION, ROOM)
    assert loop_scope(Attribution(namespace="acme", tenant="t", agent="w")) == (Level.AGENT, "acme|t|w")


@pytest.mark.parametrize(("field", "value"), [
    ("identical_max", 0),
    ("near_duplicate_min", 0),
    ("near_duplicate_min", 1.5),
    ("alternation_turns_max", 1),
    ("alternation_turns_max", 64),  # longer than the history can hold
    ("lookback_s", 0),
    ("history_max", 1),
])
def test_invalid_thresholds_are_clear_errors(field: str, value: object) -> None:
    """Out-of-range thresholds raise DefenseConfigError naming the field."""
    with pytest.raises(DefenseConfigError, match=field):
        LoopConfig(**{field: value})  # type: ignore[arg-type]


@given(agents=st.lists(st.sampled_from("abc"), max_size=60), history_max=st.integers(8, 40))
def test_history_stays_bounded(agents: list[str], history_max: int) -> None:
    """However many requests pass, a history keeps at most history_max entries."""
    config = LoopConfig(history_max=history_max)
    state = history()
    for i, agent in enumerate(agents):
        state = check_loops(state, config, varied(i, agent), T0 + timedelta(seconds=i)).history
        assert len(state.entries) <= history_max
