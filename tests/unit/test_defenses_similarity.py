"""Request fingerprints and the shingled-Jaccard similarity the loop detectors use."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from comptroller.domain.defenses.similarity import (
    SKETCH_SIZE,
    Sketch,
    fingerprint,
    mask_variables,
    normalise_text,
    shingles,
    similarity,
)

MSGS = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Summarise the report."}]


def test_fingerprint_ignores_whitespace_case_and_key_order() -> None:
    """Requests that differ only in whitespace, letter case or key order share a fingerprint."""
    noisy = [{"content": "  you ARE terse. ", "role": "system"}, {"role": "user", "content": "Summarise\n the report."}]
    assert fingerprint("gpt-4o", MSGS) == fingerprint("gpt-4o", noisy)


@pytest.mark.parametrize(("model", "messages"), [
    ("gpt-4o-mini", MSGS),
    ("gpt-4o", [*MSGS, {"role": "user", "content": "And the appendix."}]),
    ("gpt-4o", [MSGS[0], {"role": "user", "content": "Summarise the reports."}]),
])
def test_fingerprint_changes_with_model_or_content(model: str, messages: list[dict[str, object]]) -> None:
    """A different model, an extra message or other words give another fingerprint."""
    assert fingerprint(model, messages) != fingerprint("gpt-4o", MSGS)


def test_fingerprint_handles_content_parts() -> None:
    """List-of-parts content is normalised like plain strings."""
    parts = [{"role": "user", "content": [{"type": "text", "text": "Hello  World"}]}]
    same = [{"role": "user", "content": [{"type": "text", "text": "hello world"}]}]
    assert fingerprint("m", parts) == fingerprint("m", same)


@pytest.mark.parametrize(("a", "b", "expected"), [
    ("the cat sat on the mat", "the cat sat on the mat", 1.0),
    ("the cat sat on the mat", "THE CAT   sat on the mat", 1.0),
    ("alpha beta gamma", "delta epsilon zeta", 0.0),
    # 4 shingles each, 3 shared ("a b c", "b c d", "c d e"): 3 / (4 + 4 - 3)
    ("a b c d e f", "a b c d e g", 3 / 5),
    ("ok", "ok", 1.0),
    ("ok", "no", 0.0),
])
def test_similarity_is_the_jaccard_index_of_word_trigrams(a: str, b: str, expected: float) -> None:
    """similarity = |shared 3-word shingles| / |all 3-word shingles|."""
    assert similarity(a, b) == pytest.approx(expected)


def test_short_texts_are_one_shingle() -> None:
    """A text shorter than k words is a single shingle of all its words."""
    assert shingles("hello there") == frozenset({("hello", "there")})
    with pytest.raises(ValueError, match="k must be >= 1"):
        shingles("x", 0)


@given(a=st.text(max_size=200), b=st.text(max_size=200))
def test_similarity_is_symmetric_and_bounded(a: str, b: str) -> None:
    """similarity(a, b) == similarity(b, a), lies in [0, 1], and is 1 for a text with itself."""
    assert similarity(a, b) == similarity(b, a)
    assert 0.0 <= similarity(a, b) <= 1.0
    assert similarity(a, a) == 1.0


@given(text=st.text(max_size=200))
def test_normalising_is_idempotent(text: str) -> None:
    """Normalising twice changes nothing."""
    assert normalise_text(normalise_text(text)) == normalise_text(text)


@pytest.mark.parametrize(("raw", "masked"), [
    ("failed at 2024-06-01T12:00:07.123Z", "failed at <ts>"),
    ("id 3f2a9c1e-1b2c-4d5e-8f90-123456789abc gone", "id <uuid> gone"),
    ("pointer 0xdeadbeef and commit 9f1c2e3d4b5a", "pointer <hex> and commit <hex>"),
    ('File "/srv/app/main.py", line 42, in run', 'file "<path>", line <num>, in run'),
    ("at 12:04:05 retry 3 of 10", "at <time> retry <num> of <num>"),
    ("the cat sat", "the cat sat"),
])
def test_mask_variables_hides_what_varies_between_retries(raw: str, masked: str) -> None:
    """UUIDs, timestamps, hex ids, paths and numbers become placeholders; plain words stay."""
    assert mask_variables(raw) == masked


def test_a_sketch_is_fixed_size_whatever_the_text() -> None:
    """A 10,000-word text's sketch holds SKETCH_SIZE hashes, 8 hex digits each, and reads back equal."""
    sketch = Sketch.of(" ".join(f"word{i}" for i in range(10_000)))
    assert len(sketch.hashes) == SKETCH_SIZE and len(sketch.to_hex()) == 8 * SKETCH_SIZE
    assert Sketch.from_hex(sketch.to_hex()) == sketch


@given(st.lists(st.sampled_from(["alpha", "beta", "gamma", "delta", "eps"]), min_size=3, max_size=12),
       st.lists(st.sampled_from(["alpha", "beta", "gamma", "delta", "eps"]), min_size=3, max_size=12))
def test_sketch_similarity_is_exact_for_short_texts(a: list[str], b: list[str]) -> None:
    """While both texts have at most SKETCH_SIZE shingles, the sketch estimate equals the exact Jaccard index."""
    left, right = " ".join(a), " ".join(b)
    assert Sketch.of(left).similarity(Sketch.of(right)) == pytest.approx(similarity(left, right))


def test_sketch_similarity_estimates_the_jaccard_index_of_long_texts() -> None:
    """Two 400-word texts sharing 300 words estimate their exact similarity within 0.2."""
    words = [f"w{i}" for i in range(500)]
    left, right = " ".join(words[:400]), " ".join(words[100:])
    assert abs(Sketch.of(left).similarity(Sketch.of(right)) - similarity(left, right)) < 0.2
