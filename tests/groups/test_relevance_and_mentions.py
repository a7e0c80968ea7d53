"""BM25 relevance runs offline from the members' texts; mentions are read from message text."""

from __future__ import annotations

import socket

import pytest

from comptroller.domain.dispatch import Bm25Relevance, mentions_in


def test_bm25_needs_no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """With sockets forbidden, the index builds and scores: no model or stop-word list is downloaded."""
    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("relevance tried to open a network connection")

    monkeypatch.setattr(socket, "socket", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    relevance = Bm25Relevance(["writer python backend api", "critic code review", "judge final release"])
    scores = relevance.scores("The Python API needs a code review")
    assert scores[0] > 0 and scores[1] > 0 and scores[2] == 0


def test_a_rarer_shared_word_scores_higher() -> None:
    """A word only one member's description holds outweighs a word every member's holds (IDF)."""
    relevance = Bm25Relevance(["api python", "api css", "api review"])
    scores = relevance.scores("python api")
    assert scores[0] > scores[1] == scores[2] > 0


def test_members_without_words_and_stop_words_score_zero() -> None:
    """Empty descriptions and a message of stop words only give zero everywhere, not an error."""
    assert Bm25Relevance(["", ""]).scores("anything at all") == [0.0, 0.0]
    assert Bm25Relevance(["python api", ""]).scores("the and of") == [0.0, 0.0]


@pytest.mark.parametrize(("text", "mentions"), [
    ("@ana please look, then @ben.", ("ana", "ben")),
    ("@ana and @ana again", ("ana",)),
    ("mail me at ana@example.com", ()),
    ("@code-reviewer: @judge_1?", ("code-reviewer", "judge_1")),
    ("no mentions here", ()),
])
def test_mentions_are_read_from_text(text: str, mentions: tuple[str, ...]) -> None:
    """@ids in order of first appearance, without repeats; trailing punctuation and e-mail addresses are not ids."""
    assert mentions_in(text) == mentions
