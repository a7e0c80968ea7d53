"""Layer 2b: loop detectors that fire before the repeated call is paid, and a lock that remembers.

Sources: "Multi-Agent Mesh Economics" (layer 2, anti-loop; a $47,000 bill from a loop
that ran for 11 days); "What 221 AI Agents in One Chat Taught Us" (ping-pong and
deference loops are cut off, DESIGN.md rule 8); "Running 6 AI Agents in Production"
(a near-duplicate check against recent output).

Each admission passes its request (call id, agent, :func:`.similarity.fingerprint`, the
text the agent adds this turn, and the call's reservation ceiling) through four detectors,
in this order, over the history of its loop scope (the conversation, else the agent; see
:func:`loop_scope`):

=====================  =========================================================  ==================
detector               fires when                                                 default
=====================  =========================================================  ==================
``same_request``       the agent already sent this fingerprint ``identical_max``  5 (6th refused),
                       times in a run, reserving ``repeat_spend_mc_min`` or more  $0.25 reserved
``ab_alternation``     the call would extend a strict A-B-A-B run of turns        8 (9th refused)
                       between two agents beyond ``alternation_turns_max``
``near_duplicate``     the agent already sent ``near_duplicates_max`` texts this  5 at >= 0.9,
                       close (after :func:`.similarity.mask_volatile`: numbers    $0.25 reserved
                       masked on error-looking lines only), reserving
                       ``repeat_spend_mc_min`` or more
``repeated_template``  the agent already sent ``near_duplicates_max`` texts of    5, $1.00 reserved
                       this template (:func:`.similarity.template_key`: every
                       word starting with a digit masked), reserving
                       ``template_spend_mc_min`` or more
=====================  =========================================================  ==================

A run of a family is its admissions without a gap of ``lookback_s``.

Few repeats and templated requests versus a sustained loop (issue 13's false alarm: a
classifier filling one template with different ticket numbers and prices was locked
after 5 calls):

* **Numbers are content outside error lines.** The near-duplicate detector compares texts
  masked by :func:`.similarity.mask_volatile`: a retry's error line (traceback, ``...Error``,
  "failed", ``line N``) has its numbers, ids, paths and times masked, so a retry loop whose
  error line changes each time is one family and is stopped after 5 calls; an ordinary
  line keeps its numbers, so ``Classify ticket #1234: price 19.99`` and ``... #1235: price
  4.50`` are two requests, not a loop (texts of one template with other values are left to
  ``repeated_template``, however alike).
* **A template is a loop only when it costs.** Requests that differ only in numbers (one
  template) are counted as a template family; they trip ``repeated_template`` only once the
  agent's recent calls of the template (at most ``history_max`` families) reserved
  ``template_spend_mc_min`` (default $1.00). A 200-call classifier at $0.001 a call never
  gets there; two agents ping-ponging 20,000-token turns get there after about 18 turns each.
* **A few repeats are free.** An exact or near-duplicate repeat trips only once its family
  reserved ``repeat_spend_mc_min`` (default $0.25) in the run: a user's test loop or a
  benchmark of 200 identical $0.001 calls passes; an identical retry of 20,000-token
  gpt-4o calls ($0.058 each) is stopped after 5 calls. Set ``repeat_spend_mc_min = 0`` to
  count repeats whatever they cost, or raise ``identical_max`` (up to 1,000,000).
* A call whose ceiling is unknown counts as reaching both floors (fail closed).

The history keeps one entry per distinct request family (agent + fingerprint, or agent +
masked-text sketch) with a repeat count and the ceilings it reserved, so the history row's
size is bounded by ``history_max`` families of fixed size (a 256-character sketch and a
16-character template key each), whatever the texts' length.

When a detector fires, the scope is locked (:mod:`.loop_lock`): open for a cooldown that
doubles each trip, then half-open, where the loop's own retry is refused again (never
paid) and any other call closes the lock. So a loop is stopped for good, not for an
hour. An admin reset (:func:`reset_loops`) clears the lock and the history.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from functools import lru_cache

from comptroller.domain.codes import Code
from comptroller.domain.defenses._checks import require_aware, require_int, require_seconds, require_text
from comptroller.domain.defenses.errors import DefenseConfigError
from comptroller.domain.defenses.loop_history import LoopEntry, LoopHistory
from comptroller.domain.defenses.loop_lock import LockStatus, LoopLock, LoopTransition
from comptroller.domain.defenses.similarity import Sketch, mask_volatile, template_key, words_of
from comptroller.domain.defenses.verdict import JsonScalar, Rule, Verdict
from comptroller.domain.defenses.windows import seconds_until
from comptroller.domain.ledger import Event
from comptroller.domain.scopes import Attribution, Level

__all__ = ["LoopConfig", "LoopEntry", "LoopHistory", "LoopRequest", "LoopStep", "check_loops", "loop_scope",
           "reset_loops"]

_FINGERPRINT_CHARS = 32  # 128 bits of the SHA-256: collision-free for a history of 32 families


@dataclass(frozen=True, slots=True)
class LoopConfig:
    """Thresholds of the loop detectors and of the lock.

    Attributes:
        identical_max: identical requests (same fingerprint, same agent) admitted in a
            run; the next is refused (1..1,000,000; default 5: a user's test loop of a few
            calls passes, a retry loop pays at most 5 calls).
        alternation_turns_max: the longest strict A-B-A-B run of turns admitted
            (2..1,000; default 8), or None to switch the detector off (a two-agent
            dialogue such as writer and critic alternates by design).
        near_duplicate_min: the estimated similarity at or above which two masked texts
            are near-identical (0 < s <= 1; default 0.9).
        near_duplicates_max: near-identical earlier texts of the agent tolerated; one
            more is refused (1..1,000,000; default 5).
        near_duplicate_words_min: texts with fewer words are not compared (short replies
            like "continue" repeat legitimately; exact repeats are still caught by
            ``same_request``) (default 5).
        repeat_spend_mc_min: what an exact or near-duplicate family must have reserved in its
            run before ``same_request`` or ``near_duplicate`` may fire, millicents (0..10**12;
            default 25,000 = $0.25: a benchmark of cheap identical calls passes, an expensive
            retry loop is stopped after ``identical_max`` calls).
        template_spend_mc_min: what the agent's recent calls of one template must have reserved
            before ``repeated_template`` fires, millicents (1..10**12; default 100,000 = $1.00).
        lookback_s: a family's count starts over after this long without it, seconds
            (default 3,600).
        history_max: request families kept per loop scope (2..1,000; default 32).
        text_chars_max: characters of masked text sketched per request (default 4,000).
        cooldown_s_start: the lock's first cooldown, seconds (default 30).
        cooldown_s_max: the longest cooldown, seconds (default 900: a locked loop is
            probed, and refused again, at most every 15 minutes; its probes are never paid).
        memory_s: trips are forgotten this long after the last one, seconds (default 86,400).

    Raises:
        DefenseConfigError: on a value out of range.
    """

    identical_max: int = 5
    alternation_turns_max: int | None = 8
    near_duplicate_min: float = 0.9
    near_duplicates_max: int = 5
    near_duplicate_words_min: int = 5
    repeat_spend_mc_min: int = 25_000
    template_spend_mc_min: int = 100_000
    lookback_s: float = 3_600.0
    history_max: int = 32
    text_chars_max: int = 4_000
    cooldown_s_start: float = 30.0
    cooldown_s_max: float = 900.0
    memory_s: float = 86_400.0

    def __post_init__(self) -> None:
        owner = "loops"
        require_int(owner, "history_max", self.history_max, low=2, high=1_000)
        require_int(owner, "identical_max", self.identical_max, low=1, high=1_000_000)
        require_int(owner, "near_duplicates_max", self.near_duplicates_max, low=1, high=1_000_000)
        require_int(owner, "near_duplicate_words_min", self.near_duplicate_words_min, low=1, high=10_000)
        require_int(owner, "text_chars_max", self.text_chars_max, low=1, high=1_000_000)
        require_int(owner, "repeat_spend_mc_min", self.repeat_spend_mc_min, low=0, high=10**12)
        require_int(owner, "template_spend_mc_min", self.template_spend_mc_min, low=1, high=10**12)
        if self.alternation_turns_max is not None:
            require_int(owner, "alternation_turns_max", self.alternation_turns_max, low=2, high=1_000)
        level = self.near_duplicate_min
        if isinstance(level, bool) or not isinstance(level, int | float) or not 0 < level <= 1:
            raise DefenseConfigError(
                f"loops.near_duplicate_min must be a similarity in (0, 1], got {level!r}; 0.9 is a good start")
        object.__setattr__(self, "near_duplicate_min", float(level))
        for name, high in (("lookback_s", 7 * 86_400.0), ("cooldown_s_start", 86_400.0),
                           ("cooldown_s_max", 7 * 86_400.0), ("memory_s", 30 * 86_400.0)):
            object.__setattr__(self, name, require_seconds(owner, name, getattr(self, name), high=high))
        if self.cooldown_s_max < self.cooldown_s_start:
            raise DefenseConfigError(
                f"loops.cooldown_s_max ({self.cooldown_s_max:g} s) is below loops.cooldown_s_start "
                f"({self.cooldown_s_start:g} s); set cooldown_s_max >= cooldown_s_start")


@dataclass(frozen=True, slots=True)
class LoopRequest:
    """What the detectors see of a call about to be made.

    Attributes:
        call_id: the caller's id for the call (the reservation's idempotency key).
        agent: the agent making it.
        fingerprint: :func:`.similarity.fingerprint` of the model and messages ("" if none).
        text: what the agent adds in this turn (its last message), not the history ("" if none).
        ceiling_mc: the call's reservation ceiling, millicents (None: unknown, counted as
            reaching every spend floor, so an unknown cost never hides a loop).
    """

    call_id: str
    agent: str
    fingerprint: str
    text: str
    ceiling_mc: int | None = None


@dataclass(frozen=True, slots=True)
class LoopStep:
    """The new history (write it if its version moved), the refusal if any, and ``loop`` events."""

    history: LoopHistory
    verdict: Verdict | None = None
    events: tuple[Event, ...] = ()


def loop_scope(attribution: Attribution) -> tuple[Level, str]:
    """The scope whose history a call is checked against: its conversation, else its agent."""
    scopes = dict(attribution.scopes())
    if Level.CONVERSATION in scopes:
        return Level.CONVERSATION, scopes[Level.CONVERSATION]
    return Level.AGENT, scopes[Level.AGENT]


@dataclass(frozen=True, slots=True)
class _Seen:
    """The request as the detectors compare it."""

    request: LoopRequest
    fingerprint: str
    sketch: Sketch | None
    sketch_hex: str  # "" without a sketch
    template: str  # "" without a sketch
    reserved_mc: int  # the ceiling, or the highest spend floor when unknown


def _seen(config: LoopConfig, request: LoopRequest) -> _Seen:
    sketch, template = _text_sketch(request.text, config.text_chars_max, config.near_duplicate_words_min)
    ceiling = request.ceiling_mc
    reserved = max(config.repeat_spend_mc_min, config.template_spend_mc_min) if ceiling is None else ceiling
    return _Seen(request, request.fingerprint[:_FINGERPRINT_CHARS], sketch, "" if sketch is None else sketch.to_hex(),
                 template, reserved)


@lru_cache(maxsize=4_096)
def _text_sketch(text: str, chars_max: int, words_min: int) -> tuple[Sketch | None, str]:
    """The sketch of the volatile-masked text and the template key, (None, "") for a text of fewer words.

    Memoised: a loop repeats its text.
    """
    if not text:
        return None, ""
    volatile = mask_volatile(text)[:chars_max]
    if len(volatile.split()) < words_min:
        return None, ""
    words = words_of(volatile)
    return Sketch.of_words(words), template_key(words)


def check_loops(history: LoopHistory, config: LoopConfig, request: LoopRequest, now: datetime) -> LoopStep:
    """Apply the lock, then run the detectors on a request; record it if none fires.

    Args:
        history: the loop scope's history as read.
        config: the thresholds.
        request: the call about to be made.
        now: the admission time (aware UTC).

    Returns:
        A step with the request recorded, or a ``loop_detected`` verdict naming the detector
        (``locked`` while the lock's cooldown runs) and its evidence; a trip or re-trip
        writes the lock (the refused call is not recorded in the families).

    Raises:
        ValueError: on a naive ``now``; DefenseConfigError on an empty call id or agent.
    """
    require_aware("now", now)
    require_text("loop request", "call_id", request.call_id)
    require_text("loop request", "agent", request.agent)
    if any(e.last_call_id == request.call_id for e in history.entries):
        return LoopStep(history)
    seen = _seen(config, request)
    status = history.lock.status(now)
    events: tuple[Event, ...] = ()
    if status is LockStatus.OPEN:
        return LoopStep(history, _locked_verdict(history, now))
    if status is LockStatus.HALF_OPEN:
        if _is_locked_loop(history.lock, config, seen):
            return _trip(history, config, seen, now, detector=history.lock.detector or "same_request",
                         other=history.lock.other_agent, evidence={"probe": True},
                         transition=LoopTransition.REOPENED)
        history = replace(history, lock=history.lock.close(), version=history.version + 1)
        events = (_event(history, LoopTransition.CLOSED, now, {"probe_call_id": request.call_id}),)
    horizon = now - timedelta(seconds=config.lookback_s)
    live = tuple(e for e in history.entries if e.last_at > horizon)
    turns = history.turns if history.turn_at is not None and history.turn_at > horizon else ()
    mine = [e for e in live if e.agent == seen.request.agent]  # the detectors compare an agent with itself
    exact = next((e for e in mine if e.fingerprint == seen.fingerprint), None) if seen.fingerprint else None
    fired = (_same_request(history, config, exact, seen, now) or _alternation(history, config, turns, seen, now)
             or _near_duplicate(history, config, mine, seen, now, exact=exact)
             or _repeated_template(history, config, mine, seen, now, exact=exact))
    if fired is not None:
        return replace(fired, events=(*events, *fired.events))
    return LoopStep(_record(history, config, live, turns, _family(mine, seen), seen=seen, now=now), None, events)


def reset_loops(history: LoopHistory, now: datetime, *, by: str = "admin") -> LoopStep:
    """Close the lock, forget its trips and clear the history (an admin saw to the loop)."""
    cleared = LoopHistory(history.level, history.scope, version=history.version + 1)
    return LoopStep(cleared, None, (_event(cleared, LoopTransition.RESET, now,
                                           {"by": by, "trips_before": history.lock.trips}),))


def _is_locked_loop(lock: LoopLock, config: LoopConfig, seen: _Seen) -> bool:
    agent = seen.request.agent
    if lock.other_agent is not None:
        return agent in (lock.agent, lock.other_agent)
    if agent != lock.agent:
        return False
    if lock.fingerprint and seen.fingerprint == lock.fingerprint:
        return True
    if lock.template and seen.template == lock.template:
        return True
    if not lock.sketch or seen.sketch is None:
        return False
    return seen.sketch.similarity(Sketch.from_hex(lock.sketch)) >= config.near_duplicate_min


def _record(history: LoopHistory, config: LoopConfig, live: tuple[LoopEntry, ...], turns: tuple[str, ...],
            match: LoopEntry | None, *, seen: _Seen, now: datetime) -> LoopHistory:
    agent, call_id = seen.request.agent, seen.request.call_id
    if match is None:
        entry = LoopEntry(agent, seen.fingerprint, seen.sketch_hex, 1, now, now, call_id, seen.template,
                          seen.reserved_mc)
        rest = live
    else:
        entry = replace(match, count=match.count + 1, last_at=now, last_call_id=call_id, template=seen.template,
                        reserved_mc=match.reserved_mc + seen.reserved_mc)
        rest = tuple(e for e in live if e is not match)
    keep = max(2, (config.alternation_turns_max or 1) + 1)
    return replace(history, entries=(*rest, entry)[-config.history_max:], turns=(*turns, agent)[-keep:],
                   turn_at=now, version=history.version + 1)


def _family(mine: Sequence[LoopEntry], seen: _Seen) -> LoopEntry | None:
    """The entry of the agent's (``mine``) this request repeats: the same fingerprint or the same sketch."""
    fingerprint, sketch = seen.fingerprint, seen.sketch_hex
    for entry in reversed(mine):
        if (fingerprint and entry.fingerprint == fingerprint) or (sketch and entry.sketch == sketch):
            return entry
    return None


def _trip(history: LoopHistory, config: LoopConfig, seen: _Seen, now: datetime, *, detector: str,
          other: str | None, evidence: dict[str, JsonScalar], transition: LoopTransition) -> LoopStep:
    agent = seen.request.agent
    kept = history.lock.agent if transition is LoopTransition.REOPENED and other is not None else None
    template = seen.template if detector == _TEMPLATE and not other else None  # only a template trip locks it
    lock = history.lock.trip(detector=detector, agent=kept or agent, other_agent=other,  # a ping-pong keeps its pair
                             fingerprint=None if other else (seen.fingerprint or None),
                             sketch=None if other else (seen.sketch_hex or None), template=template or None,
                             now=now,
                             cooldown_s_start=config.cooldown_s_start, cooldown_s_max=config.cooldown_s_max,
                             memory_s=config.memory_s)
    locked = replace(history, lock=lock, version=history.version + 1)
    assert lock.open_until is not None  # trip always opens
    cooldown = (lock.open_until - now).total_seconds()
    full: dict[str, JsonScalar] = {"agent": agent, **evidence, "trips": lock.trips, "cooldown_s": cooldown,
                                   "open_until": lock.open_until.isoformat()}
    what = _DETECTOR_TEXT.get(detector, detector)
    message = (
        f"loop_detected: {what} by agent {agent!r}"
        f"{f' and {other!r}' if other else ''} in {history.level} {history.scope!r}; the scope is locked "
        f"for {cooldown:g} s (trip {lock.trips}; each trip doubles it, up to {config.cooldown_s_max:g} s) "
        "and this loop's own retries stay refused after it, before they are paid. Change the request, "
        "stop the loop, or reset it: `comptroller loop reset`.")
    verdict = Verdict(code=Code.LOOP_DETECTED, rule=Rule.LOOP, detector=detector, level=history.level,
                      scope=history.scope, message=message, retry_after_s=cooldown, evidence=full)
    return LoopStep(locked, verdict, (_event(locked, transition, now, {"detector": detector, **full}),))


_TEMPLATE = "repeated_template"
_DETECTOR_TEXT = {
    "same_request": "the same request repeated",
    "near_duplicate": "near-identical requests repeated (times, and ids and numbers of error lines, masked)",
    "ab_alternation": "a ping-pong of alternating turns",
    _TEMPLATE: "one template filled with different numbers, repeated at a cost",
}


def _locked_verdict(history: LoopHistory, now: datetime) -> Verdict:
    lock = history.lock
    assert lock.open_until is not None  # only an open lock refuses this way
    wait = seconds_until(lock.open_until, now)
    return Verdict(
        code=Code.LOOP_DETECTED, rule=Rule.LOOP, detector="locked", level=history.level, scope=history.scope,
        retry_after_s=wait,
        evidence={"trips": lock.trips, "locked_by": lock.detector, "agent": lock.agent,
                  "open_until": lock.open_until.isoformat()},
        message=(f"loop_detected: {history.level} {history.scope!r} is locked after a loop "
                 f"({lock.detector} by {lock.agent!r}, trip {lock.trips}); one call may probe in {wait:.0f} s "
                 "and the loop's own retry will be refused again. Stop the loop, or reset it: "
                 "`comptroller loop reset`."))


def _same_request(history: LoopHistory, config: LoopConfig, same: LoopEntry | None, seen: _Seen,
                  now: datetime) -> LoopStep | None:
    if same is None or same.count < config.identical_max or same.reserved_mc < config.repeat_spend_mc_min:
        return None
    evidence: dict[str, JsonScalar] = {
        "fingerprint": seen.fingerprint, "seen": same.count, "identical_max": config.identical_max,
        "reserved_mc": same.reserved_mc, "repeat_spend_mc_min": config.repeat_spend_mc_min,
        "first_seen_at": same.first_at.isoformat(), "last_call_id": same.last_call_id}
    return _trip(history, config, seen, now, detector="same_request", other=None, evidence=evidence,
                 transition=LoopTransition.OPENED)


def _alternation_run(agents: Sequence[str]) -> int:
    """Length of the strict two-agent alternation at the end of ``agents`` (1 if the last two are equal)."""
    if len(agents) < 2 or agents[-1] == agents[-2]:
        return min(len(agents), 1)
    pair = (agents[-1], agents[-2])
    run = 2
    while run < len(agents) and agents[-run - 1] == pair[run % 2]:
        run += 1
    return run


def _alternation(history: LoopHistory, config: LoopConfig, turns: tuple[str, ...], seen: _Seen,
                 now: datetime) -> LoopStep | None:
    if config.alternation_turns_max is None:
        return None
    agents = [*turns, seen.request.agent]
    run = _alternation_run(agents)
    if run <= config.alternation_turns_max:
        return None
    return _trip(history, config, seen, now, detector="ab_alternation", other=agents[-2],
                 evidence={"other_agent": agents[-2], "run_turns": run - 1,
                           "alternation_turns_max": config.alternation_turns_max},
                 transition=LoopTransition.OPENED)


def _near_duplicate(history: LoopHistory, config: LoopConfig, mine: Sequence[LoopEntry], seen: _Seen,
                    now: datetime, *, exact: LoopEntry | None) -> LoopStep | None:
    sketch = seen.sketch
    if sketch is None or exact is not None:
        return None  # an exact repeat is same_request's to judge (identical_max may be set high)
    level, template, sketch_hex = config.near_duplicate_min, seen.template, seen.sketch_hex
    candidates = [e for e in mine if e.sketch  # the same template with other values is repeated_template's
                  and (e.sketch == sketch_hex or e.template != template)]
    if (sum(e.count for e in candidates) < config.near_duplicates_max
            or sum(e.reserved_mc for e in candidates) < config.repeat_spend_mc_min):
        return None  # could not fire even if every candidate were close: no similarity computed
    close = [(score, e) for e in candidates
             if (score := sketch.similarity_at_least(Sketch.from_hex(e.sketch), level)) is not None]
    similar = sum(e.count for _, e in close)
    reserved = sum(e.reserved_mc for _, e in close)
    if similar < config.near_duplicates_max or reserved < config.repeat_spend_mc_min:
        return None
    best, nearest = max(close, key=lambda pair: pair[0])
    return _trip(history, config, seen, now, detector="near_duplicate", other=None,
                 evidence={"similar": similar, "near_duplicates_max": config.near_duplicates_max,
                  "reserved_mc": reserved, "repeat_spend_mc_min": config.repeat_spend_mc_min,
                  "near_duplicate_min": config.near_duplicate_min, "closest_similarity": round(best, 4),
                  "closest_call_id": nearest.last_call_id, "measure": "bottom_k_minhash_word_3_shingles"},
                 transition=LoopTransition.OPENED)


def _repeated_template(history: LoopHistory, config: LoopConfig, mine: Sequence[LoopEntry], seen: _Seen,
                       now: datetime, *, exact: LoopEntry | None) -> LoopStep | None:
    """The agent's recent calls of this template (numbers masked) reserved the template floor."""
    template = seen.template
    if not template or exact is not None:
        return None  # an exact repeat is same_request's to judge (identical_max may be set high)
    same = [e for e in mine if e.template == template]
    calls, reserved = sum(e.count for e in same), sum(e.reserved_mc for e in same)
    if calls < config.near_duplicates_max or reserved < config.template_spend_mc_min:
        return None
    return _trip(history, config, seen, now, detector=_TEMPLATE, other=None,
                 evidence={"calls": calls, "near_duplicates_max": config.near_duplicates_max, "template": template,
                           "reserved_mc": reserved, "template_spend_mc_min": config.template_spend_mc_min,
                           "first_seen_at": min(e.first_at for e in same).isoformat()},
                 transition=LoopTransition.OPENED)


def _event(history: LoopHistory, transition: LoopTransition, now: datetime,
           detail: Mapping[str, JsonScalar]) -> Event:
    return Event(ts=now, kind="loop", code=str(transition), level=str(history.level), scope=history.scope,
                 detail=dict(detail))
