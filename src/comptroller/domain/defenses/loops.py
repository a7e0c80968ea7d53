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
size is bounded by ``history_max`` families of fixed size (a sketch of at most 172 base64
characters and a 16-character template key each), whatever the texts' length.

When a detector fires, the scope is locked (:mod:`.loop_lock`): open for a cooldown that
doubles each trip, then half-open, where the loop's own retry is refused again (never
paid) and any other call closes the lock. So a loop is stopped for good, not for an
hour. An admin reset (:func:`reset_loops`) clears the lock and the history.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from functools import lru_cache
from itertools import compress, repeat
from operator import attrgetter, eq

from comptroller.domain.defenses._checks import require_aware, require_text
from comptroller.domain.defenses.loop_config import LoopConfig, LoopRequest, LoopStep, lookback
from comptroller.domain.defenses.loop_detectors import (
    Seen,
    alternation,
    locked_verdict,
    loop_event,
    near_duplicate,
    repeated_template,
    same_request,
    trip,
)
from comptroller.domain.defenses.loop_history import Columns, LoopEntry, LoopHistory, epoch_s
from comptroller.domain.defenses.loop_lock import LockStatus, LoopLock, LoopTransition
from comptroller.domain.defenses.similarity import Sketch, mask_volatile, sketch_and_template
from comptroller.domain.ledger import Event
from comptroller.domain.scopes import Attribution, Level

__all__ = [
    "LoopConfig",
    "LoopEntry",
    "LoopHistory",
    "LoopRequest",
    "LoopStep",
    "check_loops",
    "loop_scope",
    "reset_loops",
]

_FINGERPRINT_CHARS = 32  # 128 bits of the SHA-256: collision-free for a history of 32 families
_MARGIN_S = 0.001  # far above a float epoch time's rounding (under a microsecond)
_FINGERPRINT, _SKETCH, _RESERVED = attrgetter("fingerprint"), attrgetter("sketch"), attrgetter("reserved_mc")


def loop_scope(attribution: Attribution) -> tuple[Level, str]:
    """The scope whose history a call is checked against: its conversation, else its agent."""
    scopes = dict(attribution.scopes())
    if Level.CONVERSATION in scopes:
        return Level.CONVERSATION, scopes[Level.CONVERSATION]
    return Level.AGENT, scopes[Level.AGENT]


def _seen(config: LoopConfig, request: LoopRequest) -> Seen:
    sketch, template = _text_sketch(request.text, config.text_chars_max, config.near_duplicate_words_min)
    ceiling = request.ceiling_mc
    reserved = max(config.repeat_spend_mc_min, config.template_spend_mc_min) if ceiling is None else ceiling
    return Seen(request, request.fingerprint[:_FINGERPRINT_CHARS], sketch, template, reserved)


@lru_cache(maxsize=4_096)
def _text_sketch(text: str, chars_max: int, words_min: int) -> tuple[Sketch | None, str]:
    """The sketch of the volatile-masked text and the template key, (None, "") for a text of fewer words.

    Memoised: a loop repeats its text.
    """
    if not text:
        return None, ""
    volatile = mask_volatile(text)[:chars_max].rstrip(" ")
    if not volatile or volatile.count(" ") + 1 < words_min:  # its words are joined by single spaces
        return None, ""
    return sketch_and_template(volatile)


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
    entries = history.entries
    columns = history.columns()  # scans in C (in, map, compress) rather than in generators
    call_ids, agents, last_at_s, _ = columns
    if request.call_id in call_ids:
        return LoopStep(history)
    seen = _seen(config, request)
    lock = history.lock
    status = LockStatus.CLOSED if lock.open_until is None else lock.status(now)
    events: tuple[Event, ...] = ()
    if status is LockStatus.OPEN:
        return LoopStep(history, locked_verdict(history, now))
    if status is LockStatus.HALF_OPEN:
        if _is_locked_loop(lock, config, seen):
            return trip(
                history,
                config,
                seen,
                now,
                detector=lock.detector or "same_request",
                other=lock.other_agent,
                evidence={"probe": True},
                transition=LoopTransition.REOPENED,
            )
        history = LoopHistory(
            history.level, history.scope, entries, history.turns, history.turn_at, lock.close(), history.version + 1
        )
        events = (loop_event(history, LoopTransition.CLOSED, now, {"probe_call_id": request.call_id}),)
    horizon = now - lookback(config.lookback_s)
    now_s = epoch_s(now)
    if not entries or min(last_at_s) > now_s - config.lookback_s + _MARGIN_S:
        live, live_agents = entries, agents  # every entry is live (the common case: decided on floats)
    else:
        alive = [e.last_at > horizon for e in entries]  # exact, on the datetimes
        live, live_agents = tuple(compress(entries, alive)), tuple(compress(agents, alive))
    turns = history.turns if history.turn_at is not None and history.turn_at > horizon else ()
    agent = request.agent
    mine = list(compress(live, map(eq, repeat(agent), live_agents)))  # an agent is compared with itself
    fingerprint = seen.fingerprint
    exact = next(compress(mine, map(eq, repeat(fingerprint), map(_FINGERPRINT, mine))), None) if fingerprint else None
    fired = _fired(history, config, seen, now, mine=mine, exact=exact, turns=turns)
    if fired is not None:
        return LoopStep(fired.history, fired.verdict, (*events, *fired.events))
    sketch = seen.sketch_b64
    match = None if exact is None and (not sketch or sketch not in map(_SKETCH, mine)) else _family(mine, seen)
    known = columns if match is None and live is entries else None
    return LoopStep(_record(history, config, live, turns, match, seen=seen, now=now, columns=known), None, events)


def _fired(
    history: LoopHistory,
    config: LoopConfig,
    seen: Seen,
    now: datetime,
    *,
    mine: list[LoopEntry],
    exact: LoopEntry | None,
    turns: tuple[str, ...],
) -> LoopStep | None:
    """The first detector that fires, in order; each is called only when it could (its cheap conditions first:
    an exact repeat, enough turns for a run, enough reserved by the agent's families for a spend floor)."""
    fired = None if exact is None else same_request(history, config, exact, seen, now)
    limit = config.alternation_turns_max
    if fired is None and limit is not None and len(turns) >= limit:  # a longer run needs that many turns before
        fired = alternation(history, config, turns, seen, now)
    if fired is not None or exact is not None or not mine:
        return fired  # an exact repeat is same_request's to judge, not near_duplicate's or repeated_template's
    reserved = sum(map(_RESERVED, mine))  # what the candidates of both detectors reserved is at most this
    if seen.sketch is not None and reserved >= config.repeat_spend_mc_min:
        fired = near_duplicate(history, config, mine, seen, now, exact=None)
    if fired is None and seen.template and reserved >= config.template_spend_mc_min:
        fired = repeated_template(history, config, mine, seen, now, exact=None)
    return fired


def reset_loops(history: LoopHistory, now: datetime, *, by: str = "admin") -> LoopStep:
    """Close the lock, forget its trips and clear the history (an admin saw to the loop)."""
    cleared = LoopHistory(history.level, history.scope, version=history.version + 1)
    return LoopStep(
        cleared, None, (loop_event(cleared, LoopTransition.RESET, now, {"by": by, "trips_before": history.lock.trips}),)
    )


def _is_locked_loop(lock: LoopLock, config: LoopConfig, seen: Seen) -> bool:
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


def _record(
    history: LoopHistory,
    config: LoopConfig,
    live: tuple[LoopEntry, ...],
    turns: tuple[str, ...],
    match: LoopEntry | None,
    *,
    seen: Seen,
    now: datetime,
    columns: Columns | None = None,
) -> LoopHistory:
    """The history with the request recorded (in its family ``match``, else a new one); ``columns``: the
    history's columns when ``live`` is all of its entries and ``match`` is None (the new ones follow from them)."""
    agent, call_id = seen.request.agent, seen.request.call_id
    if match is None:
        entry = LoopEntry(
            agent, seen.fingerprint, seen.sketch_b64, 1, now, now, call_id, seen.template, seen.reserved_mc
        )
        rest = live
    else:
        entry = LoopEntry(
            match.agent,
            match.fingerprint,
            match.sketch,
            match.count + 1,
            match.first_at,
            now,
            call_id,
            seen.template,
            match.reserved_mc + seen.reserved_mc,
        )
        rest = tuple(e for e in live if e is not match)
    keep = max(2, (config.alternation_turns_max or 1) + 1)
    kept = -config.history_max
    if columns is not None:
        call_ids, agents, last_at_s, rows = columns
        columns = (
            (*call_ids, call_id)[kept:],
            (*agents, agent)[kept:],
            (*last_at_s, epoch_s(now))[kept:],
            (*rows, entry.row())[kept:],
        )
    return LoopHistory(
        history.level,
        history.scope,
        (*rest, entry)[kept:],
        (*turns, agent)[-keep:],
        now,
        history.lock,
        history.version + 1,
        columns,
    )


def _family(mine: Sequence[LoopEntry], seen: Seen) -> LoopEntry | None:
    """The entry of the agent's (``mine``) this request repeats: the same fingerprint or the same sketch."""
    fingerprint, sketch = seen.fingerprint, seen.sketch_b64
    for entry in reversed(mine):
        if (fingerprint and entry.fingerprint == fingerprint) or (sketch and entry.sketch == sketch):
            return entry
    return None
