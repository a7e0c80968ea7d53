"""Topical relevance of a message to each member's description (lexical BM25 by default).

BM25 (Robertson and Zaragoza, "The Probabilistic Relevance Framework: BM25 and
Beyond", 2009), as implemented by ``bm25s`` (Lù, 2024; Lucene's IDF, ``k1 = 1.5``,
``b = 0.75``), with English stop words removed. Each member's document is its role
and description; a message's score for a member is the BM25 score of the message's
words against that document (0 when they share no word). Everything runs in memory
from the given texts: no model, no download.

:class:`Relevance` is the seam for other scorers (e.g. a local embedding model).
"""

from __future__ import annotations

from collections.abc import Sequence
from types import ModuleType
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import bm25s

__all__ = ["Bm25Relevance", "Relevance"]


class Relevance(Protocol):
    """Scores a text against a fixed list of member documents."""

    def scores(self, text: str) -> Sequence[float]:
        """One score per document, in document order; higher is more relevant, 0 is unrelated."""
        ...


def _bm25s() -> ModuleType:
    """The ``bm25s`` module, imported on first use: it loads numpy and scipy (~0.2 s), which a
    gateway or CLI with no group to dispatch never needs at start-up."""
    import bm25s  # noqa: PLC0415 (deferred on purpose, see above)

    module: ModuleType = bm25s
    return module


def _tokens(texts: list[str]) -> list[list[str]]:
    tokenized: list[list[str]] = _bm25s().tokenize(texts, stopwords="en", return_ids=False, show_progress=False)
    return tokenized


class Bm25Relevance:
    """BM25 scores of a text against member documents.

    Args:
        documents: one text per member (role and description), in member order.
    """

    def __init__(self, documents: Sequence[str]) -> None:
        self._size = len(documents)
        corpus = _tokens(list(documents))
        self._vocab = frozenset(t for doc in corpus for t in doc)
        self._index: bm25s.BM25 | None = None
        if self._vocab:  # bm25s cannot index a corpus with no word at all
            self._index = _bm25s().BM25()
            self._index.index(_bm25s().tokenize(list(documents), stopwords="en", show_progress=False),
                              show_progress=False)

    def scores(self, text: str) -> list[float]:
        """BM25 score of ``text`` for each document (0.0 for all when nothing matches)."""
        query = [t for t in _tokens([text])[0] if t in self._vocab]
        if self._index is None or not query:
            return [0.0] * self._size
        return [float(s) for s in self._index.get_scores(query)]
