"""Dispatcher invariants over random groups, rooms, messages and budgets (hypothesis)."""

from __future__ import annotations

from datetime import timedelta

from group_kit import T0
from hypothesis import given
from hypothesis import strategies as st

from comptroller.domain.dispatch import (
    Dispatch,
    DispatchConfig,
    Dispatcher,
    Flag,
    Group,
    Kind,
    Member,
    Message,
    Mode,
    Reason,
    RoleRule,
)

ROLES = ("writer", "critic", "judge", "researcher")
VOCAB = ("python", "api", "css", "layout", "bugs", "review", "ship", "release", "papers", "data", "after you",
         "you go first", "tests", "schema")
RULES = {
    "writer": RoleRule("writer", answers=frozenset({Kind.CHAT, Kind.DRAFT})),
    "critic": RoleRule("critic", answers=frozenset({Kind.DRAFT}), isolated=True),
    "judge": RoleRule("judge", answers=frozenset({Kind.DRAFT, Kind.CHAT}), after=("critic",), isolated=True),
}
text = st.lists(st.sampled_from(VOCAB), min_size=0, max_size=8).map(" ".join)


@st.composite
def rooms(draw: st.DrawFn) -> tuple[Dispatcher, list[Message], Message, float | None]:
    """A group with a judge who decides, a history, a new message and the group budget's remaining fraction."""
    size = draw(st.integers(2, 9))
    roles = ["judge", *draw(st.lists(st.sampled_from(ROLES), min_size=size - 1, max_size=size - 1))]
    members = tuple(Member(f"a{i}", role, draw(text), frozenset({Flag.DECIDES}) if i == 0 else frozenset())
                    for i, role in enumerate(roles))
    present = {m.role for m in members}
    rules = {r: rule for r, rule in RULES.items() if r in present and set(rule.after) <= present}
    config = DispatchConfig(k=draw(st.integers(1, 4)), cooldown_messages=draw(st.integers(0, 3)),
                            cooldown_s=draw(st.sampled_from([0.0, 30.0])))
    dispatcher = Dispatcher(Group("g", members, rules), config)
    authors = st.sampled_from([m.agent for m in members] + ["person"])

    def message(n: int) -> Message:
        author = draw(authors)
        kinds = [Kind.CHAT, Kind.DRAFT] + ([Kind.VERDICT] if author == "a0" else [])
        mentions = draw(st.lists(st.sampled_from([m.agent for m in members]), max_size=config.k, unique=True))
        return Message(f"m{n}", author, draw(text), T0 + timedelta(seconds=10 * n), draw(st.sampled_from(kinds)),
                       tuple(mentions))

    history = [message(n) for n in range(draw(st.integers(0, 10)))]
    remaining = draw(st.none() | st.floats(-0.2, 1.0))
    return dispatcher, history, message(len(history)), remaining


def _cooled(dispatcher: Dispatcher, history: list[Message], message: Message) -> set[str]:
    config = dispatcher.config
    recent = history[len(history) - config.cooldown_messages:] if config.cooldown_messages else []
    timed = [m for m in history if config.cooldown_s and m.at >= message.at - timedelta(seconds=config.cooldown_s)]
    return {m.author for m in [*recent, *timed]}


def _decide(room: tuple[Dispatcher, list[Message], Message, float | None]) -> Dispatch:
    dispatcher, history, message, remaining = room
    return dispatcher.dispatch(message, history, remaining)


@given(rooms())
def test_never_more_than_k_responders(room: tuple[Dispatcher, list[Message], Message, float | None]) -> None:
    """However the room and budget look, at most k members are asked, each once, every member accounted for."""
    decision = _decide(room)
    assert len(decision.agents) <= room[0].config.k
    assert len(set(decision.agents)) == len(decision.agents)
    assert sorted([*decision.agents, *(x.agent for x in decision.left_out)]) == sorted(
        m.agent for m in room[0].group.members)


@given(rooms())
def test_a_mentioned_member_answers_unless_the_budget_is_spent(
        room: tuple[Dispatcher, list[Message], Message, float | None]) -> None:
    """A mention (of someone other than the author) is dispatched unless the budget is spent or a loop is cut off."""
    decision = _decide(room)
    message = room[2]
    for agent in message.mentions:
        if agent == message.author:
            continue
        if decision.mode is Mode.WRAP_UP:
            assert decision.reason_of(agent) in (Reason.BUDGET_SPENT, Reason.WRAP_UP)
        elif decision.loop is None:
            assert agent in decision.agents


@given(rooms())
def test_no_member_is_dispatched_by_its_own_message(room: tuple[Dispatcher, list[Message], Message, float | None],
                                                    ) -> None:
    """The author, the judge included, is never asked to answer itself, even when it mentions itself."""
    decision = _decide(room)
    assert room[2].author not in decision.agents
    if room[2].author == "a0":  # the judge, who decides
        assert decision.reason_of("a0") is Reason.AUTHOR


@given(rooms())
def test_a_cooled_down_member_answers_only_by_mention(
        room: tuple[Dispatcher, list[Message], Message, float | None]) -> None:
    """A member who spoke within the cooldown is dispatched only when mentioned (or asked as the decider to close
    a spent budget or a cut-off loop)."""
    dispatcher, history, message, _ = room
    decision = _decide(room)
    for pick in decision.responders:
        if pick.agent in _cooled(dispatcher, history, message):
            assert pick.reason in (Reason.MENTIONED, Reason.WRAP_UP, Reason.DECIDE_LOOP)
            assert pick.reason is not Reason.MENTIONED or pick.agent in message.mentions


@given(rooms())
def test_responders_keep_the_role_order(room: tuple[Dispatcher, list[Message], Message, float | None]) -> None:
    """A role that answers after another never comes before it."""
    group = room[0].group
    ranks = [group.rank(group.member(a).role) for a in _decide(room).agents]
    assert ranks == sorted(ranks)
