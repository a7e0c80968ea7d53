"""check_loops calls a detector only when it could fire: its verdicts and recorded families are those of the plain
definition, the four detectors run in order on every request over the live families (any request stream)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import example, given, settings
from hypothesis import strategies as st

from comptroller.domain.defenses.loop_detectors import (
    Seen,
    alternation,
    near_duplicate,
    repeated_template,
    same_request,
)
from comptroller.domain.defenses.loop_lock import LockStatus
from comptroller.domain.defenses.loops import LoopConfig, LoopHistory, LoopRequest, check_loops
from comptroller.domain.defenses.similarity import Sketch, mask_volatile, template_key, words_of
from comptroller.domain.scopes import Level

T0 = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)
BASE = "please review the draft of chapter three and list every factual error you can find in it today"
TEXTS = [
    BASE,
    BASE + " again",
    BASE.replace("three", "four"),
    "ok",
    "continue please",
    "Classify ticket #1234: price 19.99 EUR for customer 50001",
    "Classify ticket #1235: price 4.50 EUR for customer 50002",
    "Traceback: request 8f3a9c1e failed at 12:00:01 line 42 in /srv/app.py",
    "Traceback: request 1b2c3d4e failed at 12:00:07 line 42 in /srv/app.py",
    "",
]
CONFIGS = [
    LoopConfig(),
    LoopConfig(repeat_spend_mc_min=0, template_spend_mc_min=1),
    LoopConfig(identical_max=2, near_duplicates_max=2, alternation_turns_max=3, repeat_spend_mc_min=0,
               template_spend_mc_min=1, lookback_s=60, history_max=4),
    LoopConfig(alternation_turns_max=None, near_duplicates_max=1, repeat_spend_mc_min=100, template_spend_mc_min=100),
    LoopConfig(alternation_turns_max=3),
]
# Two agents ping-ponging the same two requests: the 5th turn repeats agent a's request exactly (same_request does
# not fire yet) and extends the A-B run past 3 turns, so ab_alternation must still fire.
PING_PONG = [("a", "ok", "F1", 100, 10), ("b", "ok", "F2", 100, 10)] * 2 + [("a", "ok", "F1", 100, 10)]
requests = st.tuples(
    st.sampled_from(["a", "b", "c"]),  # agent
    st.sampled_from(TEXTS),
    st.sampled_from(["", "F1", "F2", "F3"]),  # fingerprint ("" none)
    st.sampled_from([None, 10, 100, 30_000, 200_000]),  # ceiling, millicents
    st.sampled_from([1, 10, 45, 200]),  # seconds since the previous request
)


def _text_sketch(config: LoopConfig, text: str) -> tuple[Sketch | None, str]:
    """The definition: the masked text's words, sketched and keyed, when it has enough whitespace-separated words."""
    volatile = mask_volatile(text)[: config.text_chars_max] if text else ""
    if not volatile or len(volatile.split()) < config.near_duplicate_words_min:
        return None, ""
    words = words_of(volatile)
    return Sketch.of_words(words), template_key(words)


def _expected(history: LoopHistory, config: LoopConfig, request: LoopRequest, now: datetime
              ) -> tuple[str | None, tuple[str, str, str, int] | None]:
    """The detector that fires by the definition (None: none), and the family recorded (agent, fingerprint, sketch,
    count) when none fires."""
    sketch, template = _text_sketch(config, request.text)
    ceiling = request.ceiling_mc
    reserved = max(config.repeat_spend_mc_min, config.template_spend_mc_min) if ceiling is None else ceiling
    seen = Seen(request, request.fingerprint[:32], sketch, template, reserved)
    horizon = now - timedelta(seconds=config.lookback_s)
    live = [e for e in history.entries if e.last_at > horizon]
    turns = history.turns if history.turn_at is not None and history.turn_at > horizon else ()
    mine = [e for e in live if e.agent == request.agent]
    fp = seen.fingerprint
    exact = next((e for e in mine if e.fingerprint == fp), None) if fp else None
    fired = (
        same_request(history, config, exact, seen, now)
        or alternation(history, config, turns, seen, now)
        or near_duplicate(history, config, mine, seen, now, exact=exact)
        or repeated_template(history, config, mine, seen, now, exact=exact)
    )
    if fired is not None:
        assert fired.verdict is not None
        return fired.verdict.detector, None
    sk = seen.sketch_b64
    match = next((e for e in reversed(mine) if (fp and e.fingerprint == fp) or (sk and e.sketch == sk)), None)
    if match is None:
        return None, (request.agent, fp, sk, 1)
    return None, (match.agent, match.fingerprint, match.sketch, match.count + 1)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(CONFIGS), st.lists(requests, min_size=1, max_size=40))
@example(CONFIGS[-1], PING_PONG)
def test_check_loops_decides_as_the_four_detectors_in_order(
    config: LoopConfig, stream: list[tuple[str, str, str, int | None, int]]
) -> None:
    history, now = LoopHistory(Level.CONVERSATION, "acme|room"), T0
    for i, (agent, text, fp, ceiling, gap_s) in enumerate(stream):
        now += timedelta(seconds=gap_s)
        request = LoopRequest(call_id=f"c{i}", agent=agent, fingerprint=fp, text=text, ceiling_mc=ceiling)
        closed = history.lock.status(now) is LockStatus.CLOSED
        expected = _expected(history, config, request, now) if closed else None
        step = check_loops(history, config, request, now)
        if expected is not None:
            detector, family = expected
            assert (None if step.verdict is None else step.verdict.detector) == detector
            if family is not None:
                last = step.history.entries[-1]
                assert (last.agent, last.fingerprint, last.sketch, last.count) == family
        history = step.history
