"""Request identity and near-identity: the inputs of the loop detectors.

* :func:`fingerprint`: SHA-256 of the model and the normalised messages. Two
  requests with the same fingerprint are the same request, whatever their
  whitespace, letter case or key order.
* :func:`similarity`: the Jaccard index of the two texts' sets of word
  ``k``-shingles (w-shingling; A. Broder, "On the resemblance and containment of
  documents", 1997): ``|A & B| / |A | B|``, 1.0 for equal texts, 0.0 for texts
  sharing no run of ``k`` words. Linear in the text length (difflib's
  SequenceMatcher is quadratic in the worst case), symmetric, and insensitive to
  case and whitespace. Texts shorter than ``k`` words are one shingle, so they are
  similar only when equal.

What text to compare is the caller's choice, and it matters: an LLM request
repeats the whole conversation, so two consecutive turns share almost all of
it. Pass what the agent adds in this turn (its last message), not the history.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from functools import lru_cache

__all__ = ["SHINGLE_WORDS", "fingerprint", "normalise_text", "shingles", "similarity"]

SHINGLE_WORDS = 3
_SPACE = re.compile(r"\s+")
_WORD = re.compile(r"\w+")


def normalise_text(text: str) -> str:
    """Case-folded, with runs of whitespace collapsed to one space and the ends stripped."""
    return _SPACE.sub(" ", text.casefold()).strip()


def _normalise(value: object) -> object:
    if isinstance(value, str):
        return normalise_text(value)
    if isinstance(value, Mapping):
        return {str(k): _normalise(v) for k, v in value.items()}
    if isinstance(value, Sequence):
        return [_normalise(v) for v in value]
    return value


def fingerprint(model: str, messages: Sequence[Mapping[str, object]]) -> str:
    """The identity of a request: hex SHA-256 of the model and the normalised messages.

    Args:
        model: the resolved model id.
        messages: chat messages (``role``, ``content`` as a string or a list of
            parts); every string is normalised by :func:`normalise_text`.

    Raises:
        TypeError: if a message holds a value JSON cannot encode.
    """
    payload = json.dumps([model, _normalise(list(messages))], sort_keys=True, separators=(",", ":"),
                         ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


@lru_cache(maxsize=4_096)
def shingles(text: str, k: int = SHINGLE_WORDS) -> frozenset[tuple[str, ...]]:
    """The set of runs of ``k`` consecutive words of the normalised text (one shingle if shorter).

    Memoised (pure, bounded): a loop history compares each new turn with the same
    recent turns call after call.

    Raises:
        ValueError: if ``k < 1``.
    """
    if k < 1:
        raise ValueError(f"shingle length k must be >= 1 word, got {k!r}")
    words = _WORD.findall(normalise_text(text))
    if len(words) < k:
        return frozenset({tuple(words)})
    return frozenset(tuple(words[i:i + k]) for i in range(len(words) - k + 1))


def similarity(a: str, b: str, k: int = SHINGLE_WORDS) -> float:
    """Jaccard index of the ``k``-word shingle sets of ``a`` and ``b``, in [0, 1]."""
    left, right = shingles(a, k), shingles(b, k)
    return len(left & right) / len(left | right)
