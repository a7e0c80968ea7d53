"""The near-duplicate measure of the action guard.

``similarity(a, b)`` is rapidfuzz's ``fuzz.token_sort_ratio`` divided by 100, after
``rapidfuzz.utils.default_process`` (lower case, non-alphanumerics to spaces, trimmed): both
texts' words are sorted and joined, and the normalised Indel similarity of the two strings
(1 - insertions and deletions / total length) is returned, in [0, 1]. Sorting the words makes a
reordered or lightly reworded repost score high (a moved hashtag, a swapped clause), while two
distinct posts on one topic share words but not most of their text. Source: rapidfuzz docs,
``fuzz.token_sort_ratio`` and ``distance.Indel.normalized_similarity``.
"""

from __future__ import annotations

from rapidfuzz import fuzz, utils

__all__ = ["MEASURE", "similarity"]

MEASURE = "rapidfuzz.fuzz.token_sort_ratio/100 (default_process)"
"""The measure's name, as refusals report it."""


def similarity(a: str, b: str) -> float:
    """How alike two texts are: 1.0 for the same words in any order, 0.0 for nothing in common.

    Args:
        a: one text.
        b: the other.

    Returns:
        The similarity in [0, 1] (see the module docstring for the measure).
    """
    return float(fuzz.token_sort_ratio(a, b, processor=utils.default_process)) / 100.0
