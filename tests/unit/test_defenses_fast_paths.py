"""The defenses' fast paths decide exactly as the plain computations they short-cut."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from comptroller.domain.defenses.similarity import Sketch, mask_variables, normalise_text

WORDS = st.lists(st.sampled_from(["retry", "error", "timeout", "agent", "plan", "call", "id", "step", "ok", "again"]),
                 min_size=3, max_size=60).map(" ".join)
VARIABLE_TEXT = st.text(alphabet="0123456789abcdefxz:-/\\~. ,t+_é٣", max_size=60)


@given(WORDS, WORDS, st.floats(min_value=0.01, max_value=1.0))
def test_similarity_at_least_is_similarity_above_the_level(a: str, b: str, level: float) -> None:
    """The bound-checked similarity is the estimate when it reaches the level, else None."""
    left, right = Sketch.of(a), Sketch.of(b)
    score = left.similarity(right)
    assert left.similarity_at_least(right, level) == (score if score >= level else None)


# The masking alternatives as written before the leading lookahead was added (the reference).
REFERENCE = re.compile("|".join((
    r"(?P<uuid>\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b)",
    r"(?P<ts>\b\d{4}-\d{2}-\d{2}[t ]\d{2}:\d{2}(?::\d{2}(?:[.,]\d+)?)?(?:z|[+-]\d{2}:?\d{2})?)",
    r"(?P<time>\b\d{1,2}:\d{2}:\d{2}(?:[.,]\d+)?\b)",
    r"(?P<path>(?:[a-z]:\\|~?/)[\w.\-]+(?:[/\\][\w.\-]+)+)",
    r"(?P<hex>\b0x[0-9a-f]+\b|\b(?=[0-9a-f]*\d)(?=[0-9a-f]*[a-f])[0-9a-f]{8,}\b)",
    r"(?P<num>\b\d+(?:[.,]\d+)*\b)",
)))


@settings(max_examples=500)
@given(VARIABLE_TEXT)
def test_masking_lookahead_changes_no_match(text: str) -> None:
    """Masking equals the substitution of the alternatives alone (the leading lookahead only skips positions)."""
    expected = REFERENCE.sub(lambda m: f"<{m.lastgroup}>", normalise_text(text))
    assert mask_variables(text) == expected
