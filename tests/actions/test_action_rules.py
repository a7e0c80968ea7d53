"""The action guard's pure rules: near-duplicates on a table of real-looking posts, rates, quality gates."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from comptroller.actions_config import ActionsConfigError, parse_actions
from comptroller.domain.actions import Action, ActionRules, History, HistoryEntry, RateLimit, check, similarity

T0 = datetime(2026, 11, 2, 8, 0, tzinfo=UTC)
THRESHOLD = 0.85

# (earlier post, new draft, is a near-duplicate). Reposts: reworded, reordered, hashtags and emoji added,
# numbers spelled differently. Distinct: the same topic (agents, costs, publishing), a different post.
PAIRS = [
    ("Five lessons from running six AI agents in production for a month. Thread below.",
     "Five lessons from running six AI agents in production for a month! Thread below 👇", True),
    ("New post: how we cut our LLM bill by 40% with a cheap-first cascade. Read it here: https://write.as/x/cascade",
     "How we cut our LLM bill by 40% with a cheap-first cascade - new post, read it here: https://write.as/x/cascade",
     True),
    ("Morning reading list: three papers on agent evaluation, with notes on what each gets wrong.",
     "Morning reading list: three papers on agent evaluation, with my notes on what each one gets wrong. #ai", True),
    ("Our auto-publisher posted 51 times in a night. Rate limits per platform would have stopped it at three.",
     "Rate limits per platform would have stopped it at three: our auto-publisher posted 51 times in a night.", True),
    ("Weekly digest #12: budgets per tenant, circuit breakers on spend, and a kill switch that actually works.",
     "Weekly digest #12 - budgets per tenant, circuit breakers on spend and a kill switch that actually works!!",
     True),
    ("Why your agents need a budget: a per-task cap stopped a runaway loop at $2 instead of $200.",
     "Circuit breakers for agents: three windows over threshold open the breaker, then a cooldown doubles.", False),
    ("Five lessons from running six AI agents in production for a month. Thread below.",
     "What broke when our six production agents ran unattended for a month: a publisher, a scheduler, a verifier.",
     False),
    ("Tumblr answered 200 and published nothing. Verify your side effects, don't trust status codes.",
     "Rate limits per platform: Write.as allows one post every 12 hours, Tumblr three a day with gaps.", False),
    ("Today's tip: set a max_tokens on every call so the ceiling is always finite.",
     "Today's tip: pin each agent to its allowed models so a fallback never drifts to a pricier one.", False),
    ("Weekly digest #12: budgets per tenant, circuit breakers on spend, and a kill switch that actually works.",
     "Weekly digest #13: replaying last month's traffic through a new price list, and what it would have cost.",
     False),
]


def _action(text: str, *, id_: str = "new", agent: str = "writer", platform: str = "tumblr", kind: str = "post",
            **fields: float) -> Action:
    return Action(id=id_, tenant="acme", agent=agent, platform=platform, kind=kind, text=text, fields=fields)


def _history(*entries: tuple[str, str, datetime, str]) -> History:
    """A history of (id, agent, at, text) entries on tumblr."""
    return History("acme", tuple(HistoryEntry(i, a, "tumblr", "post", at, t) for i, a, at, t in entries), 1)


@pytest.mark.parametrize(("earlier", "draft", "duplicate"), PAIRS)
def test_near_duplicates_from_the_table(earlier: str, draft: str, duplicate: bool) -> None:
    """A repost above the threshold is refused as near_duplicate naming the earlier post; a distinct post passes."""
    rules = ActionRules("tumblr", similar_max=THRESHOLD)
    reasons = check(_action(draft), rules, _history(("old", "writer", T0, earlier)), T0 + timedelta(days=1))
    assert (similarity(earlier, draft) > THRESHOLD) is duplicate
    assert [r.code for r in reasons] == (["near_duplicate"] if duplicate else [])
    if duplicate:
        assert reasons[0].evidence["similar_to"] == "old"


def test_near_duplicates_by_the_same_agent_on_another_platform() -> None:
    """An agent reposting its own text on a second platform is caught by the agent look-back."""
    earlier, draft, _ = PAIRS[0]
    history = History("acme", (HistoryEntry("w1", "writer", "writeas", "post", T0, earlier),), 1)
    rules = ActionRules("tumblr", similar_max=THRESHOLD)
    assert [r.code for r in check(_action(draft), rules, history, T0)] == ["near_duplicate"]
    assert check(_action(draft, agent="other"), rules, history, T0) == []


def test_only_the_last_n_are_compared() -> None:
    """A duplicate older than the last N on the platform (and by the agent) is no longer compared."""
    earlier, draft, _ = PAIRS[0]
    n = 3
    entries = [("old", "writer", T0, earlier)] + [(f"x{i}", f"a{i}", T0 + timedelta(hours=i), f"unrelated post {i}")
                                                  for i in range(n)]
    rules = ActionRules("tumblr", similar_max=THRESHOLD, similar_last_n=n)
    assert check(_action(draft, agent="someone"), rules, _history(*entries), T0 + timedelta(days=1)) == []


@given(count_max=st.integers(1, 5), gap_h=st.integers(0, 8), step_min=st.integers(10, 240))
def test_a_rate_limit_admits_at_most_count_per_window_spaced_by_the_gap(count_max: int, gap_h: int,
                                                                       step_min: int) -> None:
    """Trying every step over two days, the accepted times never exceed count_max in any 24 h and keep the gap."""
    rules = ActionRules("tumblr", rates=(RateLimit(count_max=count_max, window_s=86_400, gap_s=gap_h * 3600),))
    history, accepted = History("acme"), []
    for i in range(0, 2 * 24 * 60, step_min):
        now = T0 + timedelta(minutes=i)
        action = _action(f"post {i}", id_=f"a{i}")
        if not check(action, rules, history, now):
            history = history.added(HistoryEntry.of(action, now), now, keep_s=86_400, keep_n=30)
            accepted.append(now)
    for i, at in enumerate(accepted):
        assert sum(1 for x in accepted if at - timedelta(days=1) < x <= at) <= count_max
        if i:
            assert (at - accepted[i - 1]).total_seconds() >= gap_h * 3600
    assert accepted, "the first try is always admitted"


def test_quality_gates_name_every_failure() -> None:
    """Length, a prohibited word, a missing call to action and a low score each give their own reason."""
    rules = ActionRules("tumblr", length_min=40, length_max=280, prohibited=("guaranteed",),
                        required=(("call_to_action", r"(?i)\b(read|subscribe|follow)\b"),), score_field="score",
                        score_min=0.75)
    bad = _action("Guaranteed results!", score=0.5)
    assert [r.code for r in check(bad, rules, History("acme"), T0)] == [
        "too_short", "prohibited_word", "missing_element", "score_below"]
    good = _action("Five lessons from six agents in production. Read the thread and follow for more.", score=0.8)
    assert check(good, rules, History("acme"), T0) == []
    assert [r.code for r in check(_action("x" * 300 + " read"), rules, History("acme"), T0)] == [
        "too_long", "score_below"]


def test_a_custom_scorer_gates_quality() -> None:
    """A callable scorer replaces the JSON field; below the threshold refuses."""
    rules = ActionRules("tumblr", scorer=lambda a: 1.0 if "?" in a.text else 0.0, score_min=0.75)
    assert check(_action("Is your agent verified?"), rules, History("acme"), T0) == []
    assert [r.code for r in check(_action("It is."), rules, History("acme"), T0)] == ["score_below"]


@pytest.mark.parametrize(("table", "names"), [
    ({"tumblr": {"count_max": 0}}, "actions.tumblr.count_max"),
    ({"tumblr": {"post": {"similar_max": 1.5}}}, "actions.tumblr.post.similar_max"),
    ({"tumblr": {"required": {"cta": "(unclosed"}}}, "actions.tumblr.required.cta"),
    ({"tumblr": {"score_min": 0.75}}, "score_field"),
    ({"tumblr": {"scorer": "no.such.module:f"}}, "actions.tumblr.scorer"),
    ({"tumblr": {"gap_hours": 4}}, "actions.tumblr.gap_hours"),
])
def test_a_bad_section_is_named(table: dict[str, object], names: str) -> None:
    """An invalid [actions] field is an error naming the section and field, never a silently absent limit."""
    with pytest.raises(ActionsConfigError, match=re.escape(names)):
        parse_actions(table)


def test_a_kind_section_adds_its_own_rate_to_the_platform_s() -> None:
    """[actions.tumblr.reply] inherits the platform's fields and counts its own kind; the platform's limit stays."""
    policy = parse_actions({"tumblr": {"count_max": 3, "gap_s": 60, "similar_max": 0.9,
                                       "reply": {"count_max": 10, "window_s": 3600}}})
    reply = policy.rules_for("tumblr", "reply")
    assert reply is not None and reply.similar_max == 0.9
    assert reply.rates == (RateLimit(3, 86_400, 60, None), RateLimit(10, 3600, 0, "reply"))
    assert policy.rules_for("mastodon", "post") is None
    assert parse_actions({"*": {"count_max": 1}}).rules_for("mastodon", "post") is not None
