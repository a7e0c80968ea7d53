"""Layer 2b: loop detectors that fire before the repeated call is paid.

Sources: "Multi-Agent Mesh Economics" (layer 2, anti-loop; a $47,000 bill from two
agents stuck in a conversation loop for 11 days); "What 221 AI Agents in One Chat
Taught Us" (ping-pong and deference loops are cut off, DESIGN.md rule 8); "Running
6 AI Agents in Production" (a near-duplicate check against recent output).

Each admission passes its request (call id, agent, :func:`.similarity.fingerprint`,
and the text the agent adds this turn) through three detectors, in this order, over
the recent history of its loop scope (the conversation, else the agent; see
:func:`loop_scope`):

==================  ===========================================================  =================
detector            fires when                                                   default
==================  ===========================================================  =================
``same_request``    the agent already sent this fingerprint ``identical_max``    2 (3rd refused)
                    times within the lookback
``ab_alternation``  the call would extend a strict A-B-A-B run of turns between  8 (9th refused)
                    two agents beyond ``alternation_turns_max``
``near_duplicate``  ``near_duplicates_max`` earlier texts of the agent have       3 at >= 0.9
                    similarity >= ``near_duplicate_min`` (:func:`.similarity`)
==================  ===========================================================  =================

A refused request is not added to the history (it never happened); an admitted one
is, and the history keeps the last ``history_max`` entries within ``lookback_s``.
Admitting a call id already in the history is idempotent. The numbers are our
defaults; the sources give the behaviours, not the thresholds.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

from comptroller.domain.codes import Code
from comptroller.domain.defenses import _records as rec
from comptroller.domain.defenses._checks import require_aware, require_int, require_seconds, require_text
from comptroller.domain.defenses.errors import DefenseConfigError
from comptroller.domain.defenses.similarity import normalise_text, similarity
from comptroller.domain.defenses.verdict import JsonScalar, Rule, Verdict
from comptroller.domain.defenses.windows import seconds_until
from comptroller.domain.scopes import Attribution, Level

__all__ = ["LoopConfig", "LoopEntry", "LoopHistory", "LoopRequest", "LoopStep", "check_loops", "loop_scope"]


@dataclass(frozen=True, slots=True)
class LoopConfig:
    """Thresholds of the loop detectors.

    Attributes:
        identical_max: identical requests (same fingerprint, same agent) admitted
            within the lookback; the next is refused (1..100; default 2).
        alternation_turns_max: the longest strict A-B-A-B run of turns admitted
            (2..history_max; default 8), or None to switch the detector off (a
            two-agent dialogue such as writer and critic alternates by design).
        near_duplicate_min: the similarity at or above which two texts are
            near-identical (0 < s <= 1; default 0.9).
        near_duplicates_max: near-identical earlier texts of the agent tolerated;
            one more is refused (1..100; default 3).
        near_duplicate_words_min: texts with fewer words are not compared (short
            replies like "continue" repeat legitimately; exact repeats are still
            caught by ``same_request``) (default 5).
        lookback_s: how long a request stays in the history, seconds (default 3,600).
        history_max: entries kept per loop scope (default 32).
        text_chars_max: characters of normalised text kept per entry (default 4,000).

    Raises:
        DefenseConfigError: on a value out of range, or a history too short to hold
            what the detectors look at.
    """

    identical_max: int = 2
    alternation_turns_max: int | None = 8
    near_duplicate_min: float = 0.9
    near_duplicates_max: int = 3
    near_duplicate_words_min: int = 5
    lookback_s: float = 3_600.0
    history_max: int = 32
    text_chars_max: int = 4_000

    def __post_init__(self) -> None:
        owner = "loops"
        require_int(owner, "history_max", self.history_max, low=2, high=1_000)
        require_int(owner, "identical_max", self.identical_max, low=1, high=min(100, self.history_max))
        require_int(owner, "near_duplicates_max", self.near_duplicates_max, low=1,
                    high=min(100, self.history_max))
        require_int(owner, "near_duplicate_words_min", self.near_duplicate_words_min, low=1, high=10_000)
        require_int(owner, "text_chars_max", self.text_chars_max, low=1, high=1_000_000)
        if self.alternation_turns_max is not None:
            require_int(owner, "alternation_turns_max", self.alternation_turns_max, low=2,
                        high=self.history_max)
        level = self.near_duplicate_min
        if isinstance(level, bool) or not isinstance(level, int | float) or not 0 < level <= 1:
            raise DefenseConfigError(
                f"loops.near_duplicate_min must be a similarity in (0, 1], got {level!r}; 0.9 is a good start")
        object.__setattr__(self, "near_duplicate_min", float(level))
        lookback = require_seconds(owner, "lookback_s", self.lookback_s, high=7 * 86_400.0)
        object.__setattr__(self, "lookback_s", lookback)


@dataclass(frozen=True, slots=True)
class LoopRequest:
    """What the detectors see of a call about to be made.

    Attributes:
        call_id: the caller's id for the call (the reservation's idempotency key).
        agent: the agent making it.
        fingerprint: :func:`.similarity.fingerprint` of the model and messages.
        text: what the agent adds in this turn (its last message), not the history.
    """

    call_id: str
    agent: str
    fingerprint: str
    text: str


@dataclass(frozen=True, slots=True)
class LoopEntry:
    """One admitted request in a loop history (text normalised and truncated)."""

    call_id: str
    agent: str
    fingerprint: str
    text: str
    at: datetime


@dataclass(frozen=True, slots=True)
class LoopHistory:
    """Recent admitted requests of one loop scope, oldest first; one row per scope in a store.

    Attributes:
        level, scope: the loop scope (conversation, else agent).
        entries: the history, oldest first.
        version: incremented by every change; the compare-and-set token.
    """

    level: Level
    scope: str
    entries: tuple[LoopEntry, ...] = ()
    version: int = 0

    def to_record(self) -> dict[str, JsonScalar]:
        """A flat JSON record (the entries as JSON text, times as UTC epoch seconds)."""
        entries = [[e.call_id, e.agent, e.fingerprint, e.text, e.at.timestamp()] for e in self.entries]
        return {"level": str(self.level), "scope": self.scope, "entries": json.dumps(entries),
                "version": self.version}

    @classmethod
    def from_record(cls, record: Mapping[str, JsonScalar]) -> LoopHistory:
        """Read a record written by :meth:`to_record`. Raises ValueError on a missing or mistyped field."""
        raw = json.loads(rec.get_str(record, "entries"))
        try:
            entries = tuple(LoopEntry(str(c), str(a), str(f), str(t), datetime.fromtimestamp(float(at), UTC))
                            for c, a, f, t, at in raw)
        except (TypeError, ValueError):
            raise ValueError(f"state record field 'entries' must be a JSON list of [call_id, agent, "
                             f"fingerprint, text, at] rows, got {raw!r:.200}") from None
        return cls(level=Level(rec.get_str(record, "level")), scope=rec.get_str(record, "scope"),
                   entries=entries, version=rec.get_int(record, "version"))


@dataclass(frozen=True, slots=True)
class LoopStep:
    """The new history, and the refusal if a detector fired (then the history is unchanged)."""

    history: LoopHistory
    verdict: Verdict | None = None


def loop_scope(attribution: Attribution) -> tuple[Level, str]:
    """The scope whose history a call is checked against: its conversation, else its agent."""
    scopes = dict(attribution.scopes())
    if Level.CONVERSATION in scopes:
        return Level.CONVERSATION, scopes[Level.CONVERSATION]
    return Level.AGENT, scopes[Level.AGENT]


def check_loops(history: LoopHistory, config: LoopConfig, request: LoopRequest, now: datetime) -> LoopStep:
    """Run the detectors on a request; record it if none fires.

    Args:
        history: the loop scope's history as read.
        config: the thresholds.
        request: the call about to be made.
        now: the admission time (aware UTC).

    Returns:
        A step with the request appended, or the unchanged history and a
        ``loop_detected`` verdict naming the detector and its evidence.

    Raises:
        ValueError: on a naive ``now``; DefenseConfigError on an empty call id or agent.
    """
    require_aware("now", now)
    require_text("loop request", "call_id", request.call_id)
    require_text("loop request", "agent", request.agent)
    horizon = now - timedelta(seconds=config.lookback_s)
    recent = tuple(e for e in history.entries if e.at > horizon)
    if any(e.call_id == request.call_id for e in recent):
        return LoopStep(history)
    text = normalise_text(request.text)[:config.text_chars_max]
    verdict = (_same_request(history, config, recent, request, now)
               or _alternation(history, config, recent, request)
               or _near_duplicate(history, config, recent, request, text))
    if verdict is not None:
        return LoopStep(history, verdict)
    entry = LoopEntry(call_id=request.call_id, agent=request.agent, fingerprint=request.fingerprint,
                      text=text, at=now)
    entries = (*recent, entry)[-config.history_max:]
    return LoopStep(replace(history, entries=entries, version=history.version + 1))


def _verdict(history: LoopHistory, detector: str, message: str, evidence: dict[str, JsonScalar],
             retry_after_s: float | None) -> Verdict:
    return Verdict(code=Code.LOOP_DETECTED, rule=Rule.LOOP, detector=detector, level=history.level,
                   scope=history.scope, message=message, retry_after_s=retry_after_s, evidence=evidence)


def _same_request(history: LoopHistory, config: LoopConfig, recent: Sequence[LoopEntry],
                  request: LoopRequest, now: datetime) -> Verdict | None:
    same = [e for e in recent if e.agent == request.agent and e.fingerprint == request.fingerprint]
    if len(same) < config.identical_max:
        return None
    frees_at = same[len(same) - config.identical_max].at + timedelta(seconds=config.lookback_s)
    return _verdict(
        history, "same_request",
        f"loop_detected: agent {request.agent!r} sent this exact request {len(same)} times in the last "
        f"{config.lookback_s:g} s in {history.level} {history.scope!r} (at most {config.identical_max}); "
        "the repeat was refused before it was paid. Change the request or stop the loop.",
        {"agent": request.agent, "fingerprint": request.fingerprint, "seen": len(same),
         "identical_max": config.identical_max, "first_seen_at": same[0].at.isoformat(),
         "last_call_id": same[-1].call_id},
        seconds_until(frees_at, now),
    )


def _alternation_run(agents: Sequence[str]) -> int:
    """Length of the strict two-agent alternation at the end of ``agents`` (1 if the last two are equal)."""
    if len(agents) < 2 or agents[-1] == agents[-2]:
        return min(len(agents), 1)
    pair = (agents[-1], agents[-2])
    run = 2
    while run < len(agents) and agents[-run - 1] == pair[run % 2]:
        run += 1
    return run


def _alternation(history: LoopHistory, config: LoopConfig, recent: Sequence[LoopEntry],
                 request: LoopRequest) -> Verdict | None:
    if config.alternation_turns_max is None:
        return None
    agents = [e.agent for e in recent] + [request.agent]
    run = _alternation_run(agents)
    if run <= config.alternation_turns_max:
        return None
    other = agents[-2]
    return _verdict(
        history, "ab_alternation",
        f"loop_detected: agents {request.agent!r} and {other!r} have alternated for {run - 1} turns in "
        f"{history.level} {history.scope!r} (at most {config.alternation_turns_max}); this call would "
        "continue the ping-pong and was refused before it was paid. Let another agent or a person "
        "answer, end the exchange, or raise alternation_turns_max.",
        {"agent": request.agent, "other_agent": other, "run_turns": run - 1,
         "alternation_turns_max": config.alternation_turns_max},
        None,
    )


def _near_duplicate(history: LoopHistory, config: LoopConfig, recent: Sequence[LoopEntry],
                    request: LoopRequest, text: str) -> Verdict | None:
    if len(text.split()) < config.near_duplicate_words_min:
        return None
    scored = [(similarity(text, e.text), e) for e in recent if e.agent == request.agent]
    close = [(score, e) for score, e in scored if score >= config.near_duplicate_min]
    if len(close) < config.near_duplicates_max:
        return None
    best, nearest = max(close, key=lambda pair: pair[0])
    return _verdict(
        history, "near_duplicate",
        f"loop_detected: agent {request.agent!r} already sent {len(close)} near-identical requests in the "
        f"last {config.lookback_s:g} s in {history.level} {history.scope!r} (similarity >= "
        f"{config.near_duplicate_min:g}, at most {config.near_duplicates_max}; closest {best:.2f}); the "
        "repeat was refused before it was paid. Change the approach or stop the loop.",
        {"agent": request.agent, "similar": len(close), "near_duplicates_max": config.near_duplicates_max,
         "near_duplicate_min": config.near_duplicate_min, "closest_similarity": round(best, 4),
         "closest_call_id": nearest.call_id, "measure": "jaccard_word_3_shingles"},
        None,
    )
