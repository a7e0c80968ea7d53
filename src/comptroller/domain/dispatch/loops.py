"""Loop cut-offs in a group: ping-pong, deference and near-duplicate replies (DESIGN.md rule 8).

Source: "What 221 AI Agents in One Chat Taught Us" (KinthAI): two agents answering
each other without end, agents deferring to each other ("you go first" / "after
you") and agents repeating what was said all burn the group budget without output.
The dispatcher checks the room's tail, ending with the new message, in this order:

================  ===================================================================  ==========
detector          fires when                                                           default
================  ===================================================================  ==========
``ping_pong``     the tail is a strict A-B-A-B run between two members with            M = 6
                  ``ping_pong_exchanges_max`` (M) exchanges (a run of M + 1 messages):
                  one more reply would be exchange M + 1
``deference``     the last ``deference_run`` messages are members deferring: short    2
                  (at most ``deference_words_max`` words) and holding a deferring
                  phrase (:data:`DEFERENCE_PHRASES`)
``near_duplicate``the new message of a member repeats one of the previous              0.9, 8
                  ``near_duplicate_window`` messages: word-shingle Jaccard similarity
                  (:func:`comptroller.domain.defenses.similarity.similarity`) >=
                  ``near_duplicate_min``; texts under ``near_duplicate_words_min``
                  words are not compared
================  ===================================================================  ==========

An exchange is one reply within the run: a run of ``n`` messages holds ``n - 1``. A person
(an author who is not a member) never forms a loop: a person and an agent talking in turn is
a dialogue. The thresholds are our defaults; the source gives the behaviours.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from comptroller.domain.defenses.similarity import normalise_text, similarity
from comptroller.domain.dispatch.errors import GroupConfigError
from comptroller.domain.dispatch.group import Group
from comptroller.domain.dispatch.message import Message

__all__ = ["DEFERENCE_PHRASES", "LoopConfig", "LoopFinding", "LoopKind", "detect_loop", "is_deferring"]

DEFERENCE_PHRASES: tuple[str, ...] = (
    "after you", "you go first", "you first", "go ahead", "i defer to", "i'll defer", "i will defer",
    "your call", "you decide", "over to you", "i'll let you", "i will let you", "i'll wait for",
    "i will wait for", "you take it", "you take this", "happy to let you", "you should answer",
    "you should decide", "you're better placed", "you are better placed",
)
"""Phrases (normalised text) that mark a short message as deferring to another member."""

_DEFERENCE = re.compile("|".join(rf"\b{re.escape(p)}\b" for p in DEFERENCE_PHRASES))
_WORD = re.compile(r"\w+")


class LoopKind(StrEnum):
    """Which loop a detector found."""

    PING_PONG = "ping_pong"
    DEFERENCE = "deference"
    NEAR_DUPLICATE = "near_duplicate"


def _require_int(name: str, value: object, low: int, high: int) -> int:
    if type(value) is not int or not low <= value <= high:
        raise GroupConfigError(f"loops.{name} must be an integer in {low}..{high}, got {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class LoopConfig:
    """Thresholds of the loop cut-offs.

    Attributes:
        ping_pong_exchanges_max: M, the most exchanges in a strict two-member run (1..1000; default 6).
        deference_run: deferring messages in a row that make a deference loop (2..100; default 2).
        deference_words_max: a deferring message has at most this many words (1..1000; default 40).
        near_duplicate_min: similarity at or above which a message repeats another ((0, 1]; default 0.9).
        near_duplicate_window: earlier messages a new one is compared with (1..1000; default 8).
        near_duplicate_words_min: shorter texts are not compared (1..10000; default 5).

    Raises:
        GroupConfigError: on a value out of range.
    """

    ping_pong_exchanges_max: int = 6
    deference_run: int = 2
    deference_words_max: int = 40
    near_duplicate_min: float = 0.9
    near_duplicate_window: int = 8
    near_duplicate_words_min: int = 5

    def __post_init__(self) -> None:
        _require_int("ping_pong_exchanges_max", self.ping_pong_exchanges_max, 1, 1000)
        _require_int("deference_run", self.deference_run, 2, 100)
        _require_int("deference_words_max", self.deference_words_max, 1, 1000)
        _require_int("near_duplicate_window", self.near_duplicate_window, 1, 1000)
        _require_int("near_duplicate_words_min", self.near_duplicate_words_min, 1, 10_000)
        level = self.near_duplicate_min
        if isinstance(level, bool) or not isinstance(level, int | float) or not 0 < level <= 1:
            raise GroupConfigError(f"loops.near_duplicate_min must be a similarity in (0, 1], got {level!r}")

    @property
    def tail_max(self) -> int:
        """The most recent messages any detector reads."""
        return max(self.ping_pong_exchanges_max + 1, self.deference_run, self.near_duplicate_window + 1)


@dataclass(frozen=True, slots=True)
class LoopFinding:
    """A loop in the room's tail.

    Attributes:
        kind: the detector that fired.
        agents: the members caught in it (not dispatched until someone else speaks).
        detail: one sentence for the decision log.
        evidence: numbers seen (exchanges, similarity, the repeated message id).
    """

    kind: LoopKind
    agents: tuple[str, ...]
    detail: str
    evidence: dict[str, str | int | float] = field(default_factory=dict)


def is_deferring(text: str, words_max: int = 40) -> bool:
    """True if ``text`` is short (at most ``words_max`` words) and holds a deferring phrase."""
    norm = normalise_text(text)
    return len(_WORD.findall(norm)) <= words_max and _DEFERENCE.search(norm) is not None


def _ping_pong(tail: Sequence[Message], group: Group, config: LoopConfig) -> LoopFinding | None:
    last = tail[-1]
    if len(tail) < 2 or tail[-2].author == last.author:
        return None
    pair = (tail[-2].author, last.author)
    if not all(group.has(a) for a in pair):
        return None
    run = 2
    while run < len(tail) and tail[-run - 1].author == pair[(run + 1) % 2]:
        run += 1
    exchanges = run - 1
    if exchanges < config.ping_pong_exchanges_max:
        return None
    return LoopFinding(LoopKind.PING_PONG, tuple(sorted(pair)),
                       f"{pair[0]} and {pair[1]} answered each other {exchanges} times in a row "
                       f"(limit {config.ping_pong_exchanges_max})",
                       {"exchanges": exchanges, "exchanges_max": config.ping_pong_exchanges_max})


def _deference(tail: Sequence[Message], group: Group, config: LoopConfig) -> LoopFinding | None:
    run = tail[-config.deference_run:]
    if len(run) < config.deference_run or not all(
            group.has(m.author) and is_deferring(m.text, config.deference_words_max) for m in run):
        return None
    agents = tuple(dict.fromkeys(m.author for m in run))
    return LoopFinding(LoopKind.DEFERENCE, agents,
                       f"{len(run)} messages in a row defer to someone else ({', '.join(agents)})",
                       {"deferring_messages": len(run)})


def _near_duplicate(tail: Sequence[Message], group: Group, config: LoopConfig) -> LoopFinding | None:
    last = tail[-1]
    if not group.has(last.author) or len(_WORD.findall(last.text)) < config.near_duplicate_words_min:
        return None
    for earlier in reversed(tail[-config.near_duplicate_window - 1:-1]):
        if len(_WORD.findall(earlier.text)) < config.near_duplicate_words_min:
            continue
        score = similarity(last.text, earlier.text)
        if score >= config.near_duplicate_min:
            return LoopFinding(LoopKind.NEAR_DUPLICATE, (last.author,),
                               f"{last.author} repeated message {earlier.id} (similarity {score:.2f} >= "
                               f"{config.near_duplicate_min:g})",
                               {"repeats": earlier.id, "similarity": round(score, 4)})
    return None


def detect_loop(history: Sequence[Message], message: Message, group: Group, config: LoopConfig) -> LoopFinding | None:
    """The first loop (ping-pong, deference, near-duplicate) in the tail ending with ``message``, or None.

    Args:
        history: earlier messages of the room, oldest first (only the last ``config.tail_max`` are read).
        message: the new message.
        group: the room (only members form loops).
        config: the thresholds.
    """
    tail = [*history[-config.tail_max:], message]
    for detector in (_ping_pong, _deference, _near_duplicate):
        finding = detector(tail, group, config)
        if finding is not None:
            return finding
    return None
