"""Eligibility table: for each message, who answers and the reason each other member is left out."""

from __future__ import annotations

import pytest
from group_kit import msg, studio

from comptroller.domain.dispatch import Kind, Message, Mode, Reason

R = Reason
ALICE_BEN_PING_PONG = [msg(i, ("ana", "ben")[i % 2], f"turn {i} {w}") for i, w in
                       enumerate(["alpha beta", "gamma delta", "epsilon zeta", "eta theta", "iota kappa",
                                  "lambda mu"])]

CASES: list[tuple[str, Message, list[Message], float | None, list[str], dict[str, Reason]]] = [
    ("a chat message reaches the member whose description it matches",
     msg(1, "user", "the python api returns errors from the database"), [], 1.0,
     ["ana"], {"ben": R.NOT_RELEVANT, "cy": R.ROLE_RULE, "dee": R.ROLE_RULE, "eve": R.NOT_RELEVANT}),
    ("a mention answers even when nothing in the text matches",
     msg(1, "user", "@ben please look", mentions=["ben"]), [], 1.0,
     ["ben"], {"ana": R.NOT_RELEVANT, "cy": R.ROLE_RULE, "dee": R.ROLE_RULE, "eve": R.NOT_RELEVANT}),
    ("a draft goes to those whose role answers drafts, the judge after the critic, the author never",
     msg(1, "ana", "draft of the new endpoint", Kind.DRAFT), [], 1.0,
     ["ben", "cy", "dee"], {"ana": R.AUTHOR, "eve": R.ROLE_RULE}),
    ("writers do not answer a verdict, and the judge does not answer its own",
     msg(1, "dee", "ship it", Kind.VERDICT), [], 1.0,
     [], {"ana": R.ROLE_RULE, "ben": R.ROLE_RULE, "cy": R.ROLE_RULE, "dee": R.AUTHOR, "eve": R.ROLE_RULE}),
    ("a member who just spoke cools down",
     msg(2, "user", "the python api database is slow"), [msg(1, "ana", "done")], 1.0,
     [], {"ana": R.COOLDOWN, "ben": R.NOT_RELEVANT, "cy": R.ROLE_RULE, "dee": R.ROLE_RULE, "eve": R.NOT_RELEVANT}),
    ("a cooled-down member answers when mentioned",
     msg(2, "user", "@ana the python api database is slow", mentions=["ana"]), [msg(1, "ana", "done")], 1.0,
     ["ana"], {"ben": R.NOT_RELEVANT, "cy": R.ROLE_RULE, "dee": R.ROLE_RULE, "eve": R.NOT_RELEVANT}),
    ("with the group budget spent only the decider is asked, to close; mentions too are refused",
     msg(1, "user", "@ana more python please", mentions=["ana"]), [], 0.0,
     ["dee"], {"ana": R.BUDGET_SPENT, "ben": R.BUDGET_SPENT, "cy": R.BUDGET_SPENT, "eve": R.BUDGET_SPENT}),
    ("near the cap only mentions and the decider (whose role rules still apply) answer",
     msg(1, "user", "@ben the css layout and python api", mentions=["ben"]), [], 0.05,
     ["ben"], {"ana": R.BUDGET_LOW, "cy": R.BUDGET_LOW, "dee": R.ROLE_RULE, "eve": R.BUDGET_LOW}),
    ("near the cap the decider answers a draft it may judge",
     msg(1, "ana", "draft of the release", Kind.DRAFT), [], 0.05,
     ["dee"], {"ana": R.AUTHOR, "ben": R.BUDGET_LOW, "cy": R.BUDGET_LOW, "eve": R.BUDGET_LOW}),
    ("as the budget drains k drops to ceil(k/2) and the rest are over k",
     msg(1, "ana", "draft of the new endpoint", Kind.DRAFT), [], 0.3,
     ["ben", "cy"], {"ana": R.AUTHOR, "dee": R.OVER_K, "eve": R.ROLE_RULE}),
    ("a conversation without a budget dispatches with the full k",
     msg(1, "ana", "draft of the new endpoint", Kind.DRAFT), [], None,
     ["ben", "cy", "dee"], {"ana": R.AUTHOR, "eve": R.ROLE_RULE}),
    ("more relevant members than places: the best scores win",
     msg(1, "user", "python api and css html frontend and benchmarks data papers literature"), [], 1.0,
     ["eve", "ben", "ana"], {"cy": R.ROLE_RULE, "dee": R.ROLE_RULE}),
    ("a ping-pong at M exchanges cuts the other party off and asks the decider",
     msg(6, "ana", "turn 6 nu xi"), ALICE_BEN_PING_PONG, 1.0,
     ["dee"], {"ana": R.AUTHOR, "ben": R.LOOP_CUT_OFF, "cy": R.LOOP_ESCALATED, "eve": R.LOOP_ESCALATED}),
]


@pytest.mark.parametrize(("case", "message", "history", "remaining", "answering", "left_out"), CASES,
                         ids=[c[0] for c in CASES])
def test_eligibility(case: str, message: Message, history: list[Message], remaining: float | None,  # noqa: PLR0917 (one argument per table column)
                     answering: list[str], left_out: dict[str, Reason]) -> None:
    """Each row: the ordered responders and the reason of every member left out."""
    decision = studio(cooldown_messages=1).dispatch(message, history, remaining)
    assert list(decision.agents) == answering, case
    assert {x.agent: x.reason for x in decision.left_out} == left_out, case
    assert all(x.detail for x in decision.left_out)


def test_the_first_rows_mode_and_k_follow_the_budget_steps() -> None:
    """Full k at 100 %, ceil(k/2) at 30 %, one at 12 %, mentions-and-decider at 5 %, wrap-up at 0 %."""
    dispatcher = studio(k=4)
    modes = [dispatcher.config.mode(r) for r in (1.0, 0.3, 0.12, 0.05, 0.0, None)]
    assert [(m.mode, m.k) for m in modes] == [(Mode.FULL, 4), (Mode.REDUCED, 2), (Mode.REDUCED, 1),
                                              (Mode.MENTIONS_AND_DECIDER, 0), (Mode.WRAP_UP, 0), (Mode.FULL, 4)]
