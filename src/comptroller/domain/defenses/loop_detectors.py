"""The four loop detectors, the trip that locks a scope, and the refusals they answer (see :mod:`.loops`).

Each detector takes the loop scope's history, the thresholds, the request as compared
(:class:`Seen`) and the agent's live families, and returns None or the :class:`.loop_config.LoopStep`
of a trip: the lock opened (:mod:`.loop_lock`), a ``loop_detected`` verdict with its evidence, and
the ``loop`` event. Pure: ``now`` is an argument.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import datetime
from itertools import compress, repeat
from operator import attrgetter, eq

from comptroller.domain.codes import Code
from comptroller.domain.defenses.loop_config import LoopConfig, LoopRequest, LoopStep
from comptroller.domain.defenses.loop_history import LoopEntry, LoopHistory
from comptroller.domain.defenses.loop_lock import LoopTransition
from comptroller.domain.defenses.similarity import Sketch
from comptroller.domain.defenses.verdict import JsonScalar, Rule, Verdict
from comptroller.domain.defenses.windows import seconds_until
from comptroller.domain.ledger import Event

__all__ = [
    "TEMPLATE",
    "Seen",
    "alternation",
    "alternation_run",
    "locked_verdict",
    "loop_event",
    "near_duplicate",
    "repeated_template",
    "same_request",
    "trip",
]

_COUNT, _RESERVED, _TEMPLATE_OF = attrgetter("count"), attrgetter("reserved_mc"), attrgetter("template")


class Seen:
    """The request as the detectors compare it (built once per admission).

    Attributes:
        request: the request.
        fingerprint: its fingerprint, cut to the length the history keeps.
        sketch: the :class:`.similarity.Sketch` of its masked text (None for a short or no text).
        sketch_b64: that sketch as a history entry keeps it ("" without one).
        template: its :func:`.similarity.template_key` ("" without a sketch).
        reserved_mc: its ceiling, or the highest spend floor when unknown, millicents.
    """

    __slots__ = ("fingerprint", "request", "reserved_mc", "sketch", "sketch_b64", "template")

    def __init__(
        self, request: LoopRequest, fingerprint: str, sketch: Sketch | None, template: str, reserved_mc: int
    ) -> None:
        self.request = request
        self.fingerprint = fingerprint
        self.sketch = sketch
        self.sketch_b64 = "" if sketch is None else sketch.to_b64()
        self.template = template
        self.reserved_mc = reserved_mc

    @property
    def sketch_hex(self) -> str:
        """The sketch's hex, as a lock keeps it ("" without one)."""
        return "" if self.sketch is None else self.sketch.to_hex()


def trip(
    history: LoopHistory,
    config: LoopConfig,
    seen: Seen,
    now: datetime,
    *,
    detector: str,
    other: str | None,
    evidence: dict[str, JsonScalar],
    transition: LoopTransition,
) -> LoopStep:
    agent = seen.request.agent
    kept = history.lock.agent if transition is LoopTransition.REOPENED and other is not None else None
    template = seen.template if detector == TEMPLATE and not other else None  # only a template trip locks it
    lock = history.lock.trip(
        detector=detector,
        agent=kept or agent,
        other_agent=other,  # a ping-pong keeps its pair
        fingerprint=None if other else (seen.fingerprint or None),
        sketch=None if other else (seen.sketch_hex or None),
        template=template or None,
        now=now,
        cooldown_s_start=config.cooldown_s_start,
        cooldown_s_max=config.cooldown_s_max,
        memory_s=config.memory_s,
    )
    locked = replace(history, lock=lock, version=history.version + 1)
    assert lock.open_until is not None  # trip always opens
    cooldown = (lock.open_until - now).total_seconds()
    full: dict[str, JsonScalar] = {
        "agent": agent,
        **evidence,
        "trips": lock.trips,
        "cooldown_s": cooldown,
        "open_until": lock.open_until.isoformat(),
    }
    what = _DETECTOR_TEXT.get(detector, detector)
    message = (
        f"loop_detected: {what} by agent {agent!r}"
        f"{f' and {other!r}' if other else ''} in {history.level} {history.scope!r}; the scope is locked "
        f"for {cooldown:g} s (trip {lock.trips}; each trip doubles it, up to {config.cooldown_s_max:g} s) "
        "and this loop's own retries stay refused after it, before they are paid. Change the request, "
        "stop the loop, or reset it: `comptroller loop reset`."
    )
    verdict = Verdict(
        code=Code.LOOP_DETECTED,
        rule=Rule.LOOP,
        detector=detector,
        level=history.level,
        scope=history.scope,
        message=message,
        retry_after_s=cooldown,
        evidence=full,
    )
    return LoopStep(locked, verdict, (loop_event(locked, transition, now, {"detector": detector, **full}),))


TEMPLATE = "repeated_template"
_DETECTOR_TEXT = {
    "same_request": "the same request repeated",
    "near_duplicate": "near-identical requests repeated (times, and ids and numbers of error lines, masked)",
    "ab_alternation": "a ping-pong of alternating turns",
    TEMPLATE: "one template filled with different numbers, repeated at a cost",
}


def locked_verdict(history: LoopHistory, now: datetime) -> Verdict:
    lock = history.lock
    assert lock.open_until is not None  # only an open lock refuses this way
    wait = seconds_until(lock.open_until, now)
    return Verdict(
        code=Code.LOOP_DETECTED,
        rule=Rule.LOOP,
        detector="locked",
        level=history.level,
        scope=history.scope,
        retry_after_s=wait,
        evidence={
            "trips": lock.trips,
            "locked_by": lock.detector,
            "agent": lock.agent,
            "open_until": lock.open_until.isoformat(),
        },
        message=(
            f"loop_detected: {history.level} {history.scope!r} is locked after a loop "
            f"({lock.detector} by {lock.agent!r}, trip {lock.trips}); one call may probe in {wait:.0f} s "
            "and the loop's own retry will be refused again. Stop the loop, or reset it: "
            "`comptroller loop reset`."
        ),
    )


def same_request(
    history: LoopHistory, config: LoopConfig, same: LoopEntry | None, seen: Seen, now: datetime
) -> LoopStep | None:
    if same is None or same.count < config.identical_max or same.reserved_mc < config.repeat_spend_mc_min:
        return None
    evidence: dict[str, JsonScalar] = {
        "fingerprint": seen.fingerprint,
        "seen": same.count,
        "identical_max": config.identical_max,
        "reserved_mc": same.reserved_mc,
        "repeat_spend_mc_min": config.repeat_spend_mc_min,
        "first_seen_at": same.first_at.isoformat(),
        "last_call_id": same.last_call_id,
    }
    return trip(
        history,
        config,
        seen,
        now,
        detector="same_request",
        other=None,
        evidence=evidence,
        transition=LoopTransition.OPENED,
    )


def alternation_run(agents: Sequence[str]) -> int:
    """Length of the strict two-agent alternation at the end of ``agents`` (1 if the last two are equal)."""
    if len(agents) < 2 or agents[-1] == agents[-2]:
        return min(len(agents), 1)
    pair = (agents[-1], agents[-2])
    run = 2
    while run < len(agents) and agents[-run - 1] == pair[run % 2]:
        run += 1
    return run


def alternation(
    history: LoopHistory, config: LoopConfig, turns: tuple[str, ...], seen: Seen, now: datetime
) -> LoopStep | None:
    if config.alternation_turns_max is None:
        return None
    agents = [*turns, seen.request.agent]
    run = alternation_run(agents)
    if run <= config.alternation_turns_max:
        return None
    return trip(
        history,
        config,
        seen,
        now,
        detector="ab_alternation",
        other=agents[-2],
        evidence={
            "other_agent": agents[-2],
            "run_turns": run - 1,
            "alternation_turns_max": config.alternation_turns_max,
        },
        transition=LoopTransition.OPENED,
    )


def near_duplicate(
    history: LoopHistory,
    config: LoopConfig,
    mine: Sequence[LoopEntry],
    seen: Seen,
    now: datetime,
    *,
    exact: LoopEntry | None,
) -> LoopStep | None:
    sketch = seen.sketch
    if sketch is None or exact is not None:
        return None  # an exact repeat is same_request's to judge (identical_max may be set high)
    level, template, sketch_b64 = config.near_duplicate_min, seen.template, seen.sketch_b64
    candidates = [
        e
        for e in mine
        if e.sketch  # the same template with other values is repeated_template's
        and (e.sketch == sketch_b64 or e.template != template)
    ]
    if (
        sum(map(_COUNT, candidates)) < config.near_duplicates_max
        or sum(map(_RESERVED, candidates)) < config.repeat_spend_mc_min
    ):
        return None  # could not fire even if every candidate were close: no similarity computed
    close = [
        (score, e)
        for e in candidates
        if (score := sketch.similarity_at_least(Sketch.from_b64(e.sketch), level)) is not None
    ]
    similar = sum(e.count for _, e in close)
    reserved = sum(e.reserved_mc for _, e in close)
    if similar < config.near_duplicates_max or reserved < config.repeat_spend_mc_min:
        return None
    best, nearest = max(close, key=lambda pair: pair[0])
    return trip(
        history,
        config,
        seen,
        now,
        detector="near_duplicate",
        other=None,
        evidence={
            "similar": similar,
            "near_duplicates_max": config.near_duplicates_max,
            "reserved_mc": reserved,
            "repeat_spend_mc_min": config.repeat_spend_mc_min,
            "near_duplicate_min": config.near_duplicate_min,
            "closest_similarity": round(best, 4),
            "closest_call_id": nearest.last_call_id,
            "measure": "bottom_k_minhash_word_3_shingles",
        },
        transition=LoopTransition.OPENED,
    )


def repeated_template(
    history: LoopHistory,
    config: LoopConfig,
    mine: Sequence[LoopEntry],
    seen: Seen,
    now: datetime,
    *,
    exact: LoopEntry | None,
) -> LoopStep | None:
    """The agent's recent calls of this template (numbers masked) reserved the template floor."""
    template = seen.template
    if not template or exact is not None:
        return None  # an exact repeat is same_request's to judge (identical_max may be set high)
    same = list(compress(mine, map(eq, repeat(template), map(_TEMPLATE_OF, mine))))
    calls, reserved = sum(map(_COUNT, same)), sum(map(_RESERVED, same))
    if calls < config.near_duplicates_max or reserved < config.template_spend_mc_min:
        return None
    return trip(
        history,
        config,
        seen,
        now,
        detector=TEMPLATE,
        other=None,
        evidence={
            "calls": calls,
            "near_duplicates_max": config.near_duplicates_max,
            "template": template,
            "reserved_mc": reserved,
            "template_spend_mc_min": config.template_spend_mc_min,
            "first_seen_at": min(e.first_at for e in same).isoformat(),
        },
        transition=LoopTransition.OPENED,
    )


def loop_event(
    history: LoopHistory, transition: LoopTransition, now: datetime, detail: Mapping[str, JsonScalar]
) -> Event:
    return Event(
        ts=now, kind="loop", code=str(transition), level=str(history.level), scope=history.scope, detail=dict(detail)
    )
