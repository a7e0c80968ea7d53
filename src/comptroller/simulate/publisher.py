"""The publisher: a heartbeat agent drafting and publishing to two platforms for a week, with and without
the action guard (issue 17; "Running 6 AI Agents in Production", whose auto-publisher spammed 51 posts).

Every ``heartbeat_s`` (30 minutes) of virtual time the agent ``publisher`` drafts one post for each
platform and tries to publish it:

* **Write.as** takes long-form posts: at most one per 12 hours.
* **Tumblr** takes short posts: at most 3 a day, 4 hours apart.

The agent's drafts are what such an agent writes: mostly the next idea on its list (the list runs out
and starts over: the same idea again), sometimes a light rewording of its previous draft for that
platform (a near-duplicate), sometimes a weak draft with no call to action (the quality gate). Which
it writes is drawn from ``random.Random(seed)``, so a run is reproducible.

Without the guard every draft goes out (one per platform per heartbeat). With it, each draft is checked
by the real :class:`~comptroller.engine.actions.ActionService` on an in-memory ledger under
:data:`PUBLISHER_ACTIONS` (rate limits, near-duplicates above 0.85 against the last 30, a call to action
and a length bound), and each refusal keeps its reasons. Everything runs in virtual time.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from comptroller.actions_config import parse_actions
from comptroller.clock import VirtualClock
from comptroller.domain.actions import Action, ActionStatus
from comptroller.engine.actions import ActionService
from comptroller.storage import store_from_url

__all__ = ["PLATFORMS", "PUBLISHER_ACTIONS", "Draft", "PublisherResult", "drafts", "simulate_publisher"]

PLATFORMS = ("writeas", "tumblr")
CTA = r"(?i)\b(read|subscribe|follow|reply)\b"
PUBLISHER_ACTIONS: dict[str, Any] = {
    "writeas": {"count_max": 1, "window_s": 12 * 3600, "similar_max": 0.85, "similar_last_n": 30,
                "length_min": 80, "required": {"call_to_action": CTA}, "trust_outcome": True},
    "tumblr": {"count_max": 3, "window_s": 86_400, "gap_s": 4 * 3600, "similar_max": 0.85, "similar_last_n": 30,
               "length_min": 40, "length_max": 500, "required": {"call_to_action": CTA}, "trust_outcome": True},
}
"""The ``[actions]`` sections the simulation runs under (the platforms' published limits)."""

IDEAS = {
    "writeas": [
        "Five lessons from a month of six agents in production: budgets, breakers, and why done must be verified.",
        "How a cheap-first cascade cut our model bill by forty percent without hurting the answers that mattered.",
        "Pacing a monthly budget: spend no faster than the month passes, and what the slack is for.",
        "What a kill switch on aggregate spend looks like when it trips at three in the morning.",
        "Replaying last month's traffic through a new price list before we signed the contract.",
        "Why every agent needs a wallet: service fees, margins and shared infrastructure by tokens.",
        "Group chats with two hundred agents: dispatch first, or everyone pays to read the room.",
        "The anti-loop rule: three re-attempts of a task a day, and the bill it saved us.",
    ],
    "tumblr": [
        "Tumblr answered 200 and published nothing. Verify side effects",
        "Rate limits per platform are not optional: our bot posted 51 times in one night",
        "A per-task budget stopped a runaway loop at two dollars",
        "Pin each agent to its models so a fallback never drifts to a pricier one",
        "Heartbeats tell you an agent is alive; verified actions tell you it worked",
        "Set max_tokens on every call so every ceiling is finite",
    ],
}
"""What the agent has to say, per platform (it runs out, then repeats itself)."""


@dataclass(frozen=True, slots=True)
class Draft:
    """One draft: when, for which platform, its id and text, and how the agent came to write it."""

    at: datetime
    platform: str
    id: str
    text: str
    how: str  # "idea" | "reworded" | "weak"


@dataclass
class PublisherResult:
    """What a week of publishing did.

    Attributes:
        drafts: every draft, in order.
        without_guard: posts that went out with no guard, per platform (every draft).
        published: posts that went out with the guard, per platform.
        refused: every refused draft's id, platform and reason codes.
        reasons: refusals per (platform, reason code); a draft refused for two reasons counts in both.
    """

    drafts: list[Draft]
    without_guard: Counter[str] = field(default_factory=Counter)
    published: Counter[str] = field(default_factory=Counter)
    refused: list[tuple[str, str, tuple[str, ...]]] = field(default_factory=list)
    reasons: Counter[tuple[str, str]] = field(default_factory=Counter)


def drafts(*, days: float = 7, heartbeat_s: float = 1800, seed: int = 0,
           start: datetime = datetime(2026, 11, 2, tzinfo=UTC)) -> list[Draft]:
    """The agent's drafts over ``days``: one per platform per heartbeat (see the module docstring)."""
    rng = random.Random(seed)
    out: list[Draft] = []
    nxt = dict.fromkeys(PLATFORMS, 0)
    last: dict[str, str] = {}
    for beat in range(int(days * 86_400 // heartbeat_s)):
        at = start + timedelta(seconds=beat * heartbeat_s)
        for platform in PLATFORMS:
            ideas, roll = IDEAS[platform], rng.random()
            if roll < 0.25 and platform in last:
                text, how = _reword(last[platform]), "reworded"
            elif roll < 0.4:
                text, how = ideas[nxt[platform] % len(ideas)].split(":")[0] + ".", "weak"
            else:
                text, how = f"{ideas[nxt[platform] % len(ideas)]} Read more and follow for the next one.", "idea"
                nxt[platform] += 1
            last[platform] = text
            out.append(Draft(at, platform, f"{platform}-{beat}", text, how))
    return out


def _reword(text: str) -> str:
    """A light rewording: the same sentences in the other order, and a hashtag."""
    sentences = [s.strip() for s in text.split(".") if s.strip()]
    return ". ".join(reversed(sentences)) + ". #agents"


def simulate_publisher(*, days: float = 7, heartbeat_s: float = 1800, seed: int = 0,
                       actions: dict[str, Any] | None = None) -> PublisherResult:
    """Run the week with and without the guard (see the module docstring).

    Args:
        days: virtual days.
        heartbeat_s: seconds between heartbeats.
        seed: the drafting's random seed.
        actions: ``[actions]`` sections (default :data:`PUBLISHER_ACTIONS`).

    Returns:
        The counts and every refusal's reasons.
    """
    plan = drafts(days=days, heartbeat_s=heartbeat_s, seed=seed)
    clock = VirtualClock(plan[0].at if plan else datetime(2026, 11, 2, tzinfo=UTC))
    guard = ActionService(store_from_url("memory://"), clock, parse_actions(actions or PUBLISHER_ACTIONS),
                          sleep=clock.advance)
    result = PublisherResult(plan)
    for draft in plan:
        if draft.at > clock.now():
            clock.set(draft.at)
        result.without_guard[draft.platform] += 1
        record = guard.check(Action(draft.id, "simulated", "publisher", draft.platform, "post", draft.text))
        if record.status is ActionStatus.ALLOWED:
            guard.record_outcome("simulated", draft.id, published=True)
            guard.verify("simulated", draft.id)
            result.published[draft.platform] += 1
        else:
            codes = tuple(r.code for r in record.reasons)
            result.refused.append((draft.id, draft.platform, codes))
            result.reasons.update((draft.platform, c) for c in codes)
    return result
