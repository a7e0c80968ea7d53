"""The loop detectors' thresholds and what they see of a call and return (see :mod:`.loops`)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from functools import lru_cache

from comptroller.domain.defenses._checks import require_int, require_seconds
from comptroller.domain.defenses.errors import DefenseConfigError
from comptroller.domain.defenses.loop_history import LoopHistory
from comptroller.domain.defenses.verdict import Verdict
from comptroller.domain.ledger import Event

__all__ = ["LoopConfig", "LoopRequest", "LoopStep", "lookback"]


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
                f"loops.near_duplicate_min must be a similarity in (0, 1], got {level!r}; 0.9 is a good start"
            )
        object.__setattr__(self, "near_duplicate_min", float(level))
        for name, high in (
            ("lookback_s", 7 * 86_400.0),
            ("cooldown_s_start", 86_400.0),
            ("cooldown_s_max", 7 * 86_400.0),
            ("memory_s", 30 * 86_400.0),
        ):
            object.__setattr__(self, name, require_seconds(owner, name, getattr(self, name), high=high))
        if self.cooldown_s_max < self.cooldown_s_start:
            raise DefenseConfigError(
                f"loops.cooldown_s_max ({self.cooldown_s_max:g} s) is below loops.cooldown_s_start "
                f"({self.cooldown_s_start:g} s); set cooldown_s_max >= cooldown_s_start"
            )


@dataclass(slots=True)
class LoopRequest:
    """What the detectors see of a call about to be made (never changed once built: built per admission,
    where a frozen dataclass would cost four times as much).

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


@dataclass(slots=True)
class LoopStep:
    """The new history (write it if its version moved), the refusal if any, and ``loop`` events (never
    changed once built)."""

    history: LoopHistory
    verdict: Verdict | None = None
    events: tuple[Event, ...] = ()


@lru_cache(maxsize=64)
def lookback(seconds: float) -> timedelta:
    """``LoopConfig.lookback_s`` as a timedelta (memoised: built at every admission otherwise)."""
    return timedelta(seconds=seconds)
