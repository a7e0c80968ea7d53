"""The rules of one platform and kind, and the check they make of an action.

From "Running 6 AI Agents in Production" (DESIGN.md rule 9): platforms have their own limits
(Write.as one post per 12 hours; Tumblr 3 a day with 4-hour gaps), a post too similar to recent
ones (similarity > 0.85 against the last 30) must not go out, and a quality gate (a score
>= 0.75, prohibited words, a call to action, length) comes before publishing.

:func:`check` is pure: the history and the time are passed in, and every reason that applies
is returned (not only the first), in a fixed order: quality, near-duplicates, rate.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from comptroller.domain.actions.history import History, HistoryEntry
from comptroller.domain.actions.model import Action, ActionRecord, Reason
from comptroller.domain.actions.similarity import MEASURE, similarity

__all__ = ["ActionRules", "RateLimit", "Verification", "check"]

Scorer = Callable[[Action], float]
Verifier = Callable[[ActionRecord], bool]


@dataclass(frozen=True, slots=True)
class RateLimit:
    """At most ``count_max`` actions per sliding ``window_s`` seconds, each ``gap_s`` after the previous.

    ``kind`` None counts every kind on the platform; a kind counts only that kind.
    """

    count_max: int | None = None
    window_s: float = 86_400.0
    gap_s: float = 0.0
    kind: str | None = None


@dataclass(frozen=True, slots=True)
class Verification:
    """How "done" is confirmed.

    Attributes:
        url: a URL template (``{url}`` is the outcome's URL, ``{id}`` the action id); GET must answer 200.
        marker: a text template the page must contain (``{text40}``: the first 40 characters of the text).
        verifier: a custom callable instead of (or besides) the HTTP check.
        trust_outcome: accept the agent's word (an explicit opt-out; never a default).
        attempts: verifications tried, with exponential backoff, before an ``action_unverified`` event.
        backoff_s_start: the first wait, doubling up to ``backoff_s_max``.
    """

    url: str | None = None
    marker: str = "{text40}"
    verifier: Verifier | None = None
    trust_outcome: bool = False
    attempts: int = 3
    backoff_s_start: float = 30.0
    backoff_s_max: float = 900.0


@dataclass(frozen=True, slots=True)
class ActionRules:
    """Every rule for one platform (and kind).

    Attributes:
        platform: the platform named.
        kind: the kind, or None for the platform's own section.
        rates: rate limits (count per window, minimum gap).
        similar_max: refuse when the similarity to a recent accepted action is above this (None: off).
        similar_last_n: how many recent actions on the platform, and by the agent, are compared.
        length_min, length_max: text length bounds in characters.
        prohibited: words that may not appear (whole words, any case).
        required: (name, regex) pairs that must each match (a call to action, a link...).
        score_field: the action field holding a quality score; ``scorer`` computes one instead.
        score_min: the least score let through (None: no score gate).
        approval: hold the action in ``pending_approval`` until someone decides.
        approval_ttl_s: how long a hold waits before it expires.
        verification: how "done" is confirmed.
    """

    platform: str
    kind: str | None = None
    rates: tuple[RateLimit, ...] = ()
    similar_max: float | None = None
    similar_last_n: int = 30
    length_min: int = 0
    length_max: int | None = None
    prohibited: tuple[str, ...] = ()
    required: tuple[tuple[str, str], ...] = ()
    score_field: str | None = None
    scorer: Scorer | None = None
    score_min: float | None = None
    approval: bool = False
    approval_ttl_s: float = 86_400.0
    verification: Verification = field(default_factory=Verification)

    def keep_s(self) -> float:
        """The longest look-back of the rate rules, in seconds."""
        return max([0.0, *(max(r.window_s, r.gap_s) for r in self.rates)])


def check(action: Action, rules: ActionRules, history: History, now: datetime) -> list[Reason]:
    """Every reason the rules refuse ``action`` at ``now`` given the tenant's ``history`` (empty: allowed)."""
    return [*_quality(action, rules), *_duplicates(action, rules, history), *_rates(action, rules, history, now)]


def _quality(action: Action, rules: ActionRules) -> list[Reason]:
    text, out = action.text, []
    if len(text) < rules.length_min:
        out.append(Reason("too_short", f"the text has {len(text)} characters, at least {rules.length_min} are "
                          "required; write more", evidence={"length": len(text), "length_min": rules.length_min}))
    if rules.length_max is not None and len(text) > rules.length_max:
        out.append(Reason("too_long", f"the text has {len(text)} characters, at most {rules.length_max} are "
                          "allowed; shorten it", evidence={"length": len(text), "length_max": rules.length_max}))
    for word in rules.prohibited:
        if re.search(rf"(?<!\w){re.escape(word)}(?!\w)", text, re.IGNORECASE):
            out.append(Reason("prohibited_word", f"the text contains the prohibited word {word!r}; remove it",
                              evidence={"word": word}))
    for name, pattern in rules.required:
        if re.search(pattern, text) is None:
            out.append(Reason("missing_element", f"the text lacks the required {name} (pattern {pattern!r}); add it",
                              evidence={"element": name, "pattern": pattern}))
    if rules.score_min is not None:
        out.extend(_score(action, rules, rules.score_min))
    return out


def _score(action: Action, rules: ActionRules, score_min: float) -> list[Reason]:
    if rules.scorer is not None:
        score: object = rules.scorer(action)
        source = "scorer"
    else:
        source = f"field {rules.score_field!r}"
        score = action.fields.get(rules.score_field or "score")
    if not isinstance(score, int | float) or isinstance(score, bool):
        return [Reason("score_below", f"no numeric quality score in {source} (got {score!r}); the gate needs "
                       f"one >= {score_min}", evidence={"score_min": score_min})]
    if score < score_min:
        return [Reason("score_below", f"the quality score {score} from {source} is below {score_min}; improve the "
                       "draft", evidence={"score": float(score), "score_min": score_min})]
    return []


def _duplicates(action: Action, rules: ActionRules, history: History) -> list[Reason]:
    if rules.similar_max is None:
        return []
    n = rules.similar_last_n
    seen: dict[str, tuple[HistoryEntry, str]] = {}
    for e in history.on(action.platform)[-n:]:
        seen[e.id] = (e, "platform")
    for e in history.by(action.agent)[-n:]:
        seen.setdefault(e.id, (e, "agent"))
    best: tuple[float, HistoryEntry, str] | None = None
    for e, where in seen.values():
        if e.id == action.id:
            continue
        s = similarity(action.text, e.text)
        if best is None or s > best[0]:
            best = (s, e, where)
    if best is None or best[0] <= rules.similar_max:
        return []
    s, e, where = best
    return [Reason("near_duplicate", f"the text is {s:.2f} similar to action {e.id!r} ({where} "
                   f"{e.platform if where == 'platform' else e.agent}, {e.at.isoformat()}), above "
                   f"{rules.similar_max}; say something new", evidence={
                       "similarity": round(s, 4), "similar_max": rules.similar_max, "similar_to": e.id,
                       "measure": MEASURE, "compared": len(seen)})]


def _rates(action: Action, rules: ActionRules, history: History, now: datetime) -> list[Reason]:
    out = []
    for rate in rules.rates:
        past = [e for e in history.on(action.platform, rate.kind) if e.id != action.id and e.at <= now]
        what = f"{action.platform}{'' if rate.kind is None else '/' + rate.kind}"
        if rate.count_max is not None:
            inside = [e for e in past if e.at > now - timedelta(seconds=rate.window_s)]
            if len(inside) >= rate.count_max:
                free_at = inside[-rate.count_max].at + timedelta(seconds=rate.window_s)
                wait = (free_at - now).total_seconds()
                out.append(Reason("rate_limit", f"{what} allows {rate.count_max} per {rate.window_s:g} s and "
                                  f"{len(inside)} went out in the window; retry in {wait:.0f} s", wait,
                                  {"count_max": rate.count_max, "window_s": rate.window_s, "seen": len(inside)}))
        if rate.gap_s > 0 and past:
            since = (now - past[-1].at).total_seconds()
            if since < rate.gap_s:
                out.append(Reason("min_gap", f"{what} needs {rate.gap_s:g} s between actions and the last was "
                                  f"{since:.0f} s ago ({past[-1].id!r}); retry in {rate.gap_s - since:.0f} s",
                                  rate.gap_s - since, {"gap_s": rate.gap_s, "since_s": since, "last": past[-1].id}))
    return out
