"""Loop cut-offs: a ping-pong ends at exactly M exchanges; deference and repeats escalate to the decider."""

from __future__ import annotations

import itertools

import pytest
from group_kit import msg, studio

from comptroller.domain.dispatch import LoopConfig, LoopKind, Message, Reason, detect_loop
from comptroller.domain.dispatch.loops import is_deferring

WORDS = [f"w{i}" for i in range(2_000)]


def _fresh_text(i: int, to: str) -> str:
    """A reply mentioning ``to`` that shares no three words with any other reply."""
    return f"@{to} " + " ".join(WORDS[i * 7:(i + 1) * 7])


def _run_ping_pong(m: int) -> tuple[list[Message], list[str]]:
    """ana and ben answer each other by mention until the dispatcher stops them; returns the room and last picks."""
    dispatcher = studio(cooldown_messages=0, loops=LoopConfig(ping_pong_exchanges_max=m))
    history: list[Message] = []
    message = msg(0, "user", _fresh_text(0, "ana"), mentions=["ana"])
    for n in range(1, 10 * m + 10):
        decision = dispatcher.dispatch(message, history, 1.0)
        history.append(message)
        talkers = [a for a in decision.agents if a in ("ana", "ben")]
        if not talkers:
            return history, list(decision.agents)
        (speaker,) = talkers
        other = "ben" if speaker == "ana" else "ana"
        message = msg(n, speaker, _fresh_text(n, other), mentions=[other])
    raise AssertionError("the ping-pong was never cut off")


@pytest.mark.parametrize("m", [1, 2, 3, 6, 11])
def test_ping_pong_is_cut_off_at_exactly_m_exchanges(m: int) -> None:
    """Two agents mentioning each other get exactly M exchanges (M + 1 messages), then the decider is asked."""
    history, last_picks = _run_ping_pong(m)
    run = [x.author for x in history if x.author in ("ana", "ben")]
    assert len(run) == m + 1
    assert all(a != b for a, b in itertools.pairwise(run))
    assert last_picks == ["dee"]


def test_the_decision_names_the_loop_and_its_numbers() -> None:
    """The cut-off decision carries the detector, the pair and the exchanges counted."""
    history = [msg(i, ("ana", "ben")[i % 2], _fresh_text(i, ("ben", "ana")[i % 2])) for i in range(3)]
    decision = studio(loops=LoopConfig(ping_pong_exchanges_max=3)).dispatch(
        msg(3, "ben", _fresh_text(3, "ana"), mentions=["ana"]), history, 1.0)
    assert decision.loop is not None and decision.loop.kind is LoopKind.PING_PONG
    assert decision.loop.agents == ("ana", "ben") and decision.loop.evidence["exchanges"] == 3
    assert decision.reason_of("ana") is Reason.LOOP_CUT_OFF and decision.agents == ("dee",)


def test_a_person_talking_with_an_agent_is_not_a_ping_pong() -> None:
    """A dialogue between a person (not a member) and an agent never counts as a loop."""
    history = [msg(i, ("user", "ana")[i % 2], _fresh_text(i, "ana")) for i in range(20)]
    assert detect_loop(history, msg(20, "user", _fresh_text(20, "ana")), studio().group, LoopConfig(
        ping_pong_exchanges_max=2)) is None


def test_deference_loop_escalates_to_the_decider() -> None:
    """"After you" answered by "no, you go first" cuts both agents off and asks the decider."""
    history = [msg(1, "ana", "After you, @ben: you know the layout better.")]
    decision = studio().dispatch(msg(2, "ben", "No no, you go first @ana", mentions=["ana"]), history, 1.0)
    assert decision.loop is not None and decision.loop.kind is LoopKind.DEFERENCE
    assert decision.reason_of("ana") is Reason.LOOP_CUT_OFF and decision.agents == ("dee",)


def test_a_long_message_with_a_polite_phrase_is_not_deference() -> None:
    """Only short messages count as deferring: real content that ends in "over to you" is work."""
    assert is_deferring("your call")
    assert not is_deferring(" ".join(WORDS[:60]) + " over to you")
    assert not is_deferring("the api schema is final")


def test_a_near_duplicate_reply_is_cut_off() -> None:
    """A member repeating a recent message (similarity >= 0.9) is cut off and the decider asked."""
    text = "the python api should return a 404 when the record is missing from the database"
    history = [msg(1, "ben", text)]
    decision = studio().dispatch(msg(2, "ana", text.upper() + " ", mentions=["eve"]), history, 1.0)
    assert decision.loop is not None and decision.loop.kind is LoopKind.NEAR_DUPLICATE
    assert decision.loop.evidence["repeats"] == "m1"
    assert decision.agents == ("dee",) and decision.reason_of("eve") is Reason.LOOP_ESCALATED


def test_without_escalation_the_others_follow_the_usual_rules() -> None:
    """escalate_loops = false cuts the loop's members off and dispatches the rest as usual."""
    history = [msg(1, "ana", "After you, @ben")]
    decision = studio(escalate_loops=False).dispatch(
        msg(2, "ben", "you first, @ana. @eve", mentions=["ana", "eve"]), history, 1.0)
    assert decision.reason_of("ana") is Reason.LOOP_CUT_OFF
    assert decision.agents == ("eve",)
