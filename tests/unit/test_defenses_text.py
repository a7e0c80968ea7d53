"""The loop detectors' text functions: the fast forms decide as the plain definitions, and the sketch estimates well."""

from __future__ import annotations

import hashlib
import random
import re
import statistics
import zlib

from hypothesis import given, settings
from hypothesis import strategies as st

from comptroller.domain.defenses.similarity import (
    SKETCH_SIZE,
    Sketch,
    mask_volatile,
    normalise_text,
    similarity,
    sketch_and_template,
    template_key,
    words_of,
)

SPACE = re.compile(r"\s+")


@settings(max_examples=1000)
@given(st.one_of(st.text(max_size=80), st.text(st.characters(max_codepoint=127), max_size=80),
                 st.text(" aB\t\x0b\x1c.", max_size=20)))
def test_normalising_by_split_equals_the_whitespace_regex(text: str) -> None:
    """normalise_text is case-folding, runs of regex whitespace collapsed to one space, ends stripped."""
    assert normalise_text(text) == SPACE.sub(" ", text.casefold()).strip()


@given(st.lists(st.sampled_from(["retry", "error", "job", "step", "plan", "7", "x"]), min_size=3, max_size=20))
def test_a_sketch_of_words_is_the_sketch_of_their_text(words: list[str]) -> None:
    """Sketch.of_words(words_of(text)) is Sketch.of(text)."""
    text = " ".join(words)
    assert Sketch.of_words(words_of(text)) == Sketch.of(text)


def test_the_crc_sketch_estimates_the_jaccard_index_without_bias() -> None:
    """Over 500 random pairs of 20-300 words with up to a third of the words changed, the bottom-k CRC-32 estimate
    is within 0.08 of the exact Jaccard index on average, with a mean signed error under 0.02."""
    rnd = random.Random(13)
    vocab = [f"w{i}" for i in range(400)] + ["error", "the", "retry", "step"]
    errors = []
    for _ in range(500):
        base = [rnd.choice(vocab) for _ in range(rnd.randint(20, 300))]
        other = list(base)
        for _ in range(rnd.randint(0, len(base) // 3)):
            other[rnd.randrange(len(base))] = rnd.choice(vocab)
        left, right = " ".join(base), " ".join(other)
        errors.append(Sketch.of(left).similarity(Sketch.of(right)) - similarity(left, right))
    assert statistics.mean(abs(e) for e in errors) < 0.08
    assert abs(statistics.mean(errors)) < 0.02


def _crc_sketch(words: list[str], k: int) -> tuple[int, ...]:
    """The definition: CRC-32 of each k-word run joined by spaces (the whole list if shorter), k smallest kept."""
    runs = [words[i : i + k] for i in range(len(words) - k + 1)] if len(words) >= k else [words]
    return tuple(sorted({zlib.crc32(" ".join(run).encode()) for run in runs})[:SKETCH_SIZE])


@given(words=st.lists(st.text(max_size=6), max_size=50), k=st.integers(1, 4))
def test_a_sketch_of_words_hashes_each_run_of_k_words(words: list[str], k: int) -> None:
    """Sketch.of_words (the encoded text split once, when no word holds a space) hashes as the definition does,
    whatever the words (spaces, empty words, any code point)."""
    assert Sketch.of_words(words, k).hashes == _crc_sketch(words, k)


@given(words=st.lists(st.text(min_size=1, max_size=6), max_size=30))
def test_a_template_key_masks_every_word_starting_with_a_digit(words: list[str]) -> None:
    """template_key is the BLAKE2b-64 of the words joined by spaces, each starting with a digit replaced by "#"."""
    masked = " ".join("#" if word[0].isdigit() else word for word in words)
    assert template_key(words) == hashlib.blake2b(masked.encode(), digest_size=8).hexdigest()


ascii_texts = st.text(st.characters(max_codepoint=127), max_size=120)
word_texts = st.lists(
    st.one_of(st.sampled_from(["retry", "Error", "job_1", "7", "3f2a", "line", "-", "..", "x:y", "é", "٣"]),
              st.text(max_size=5)),
    max_size=30,
).map(" ".join)


@settings(max_examples=500)
@given(st.one_of(ascii_texts, word_texts, st.text(max_size=60)))
def test_sketch_and_template_equal_their_definitions(text: str) -> None:
    """sketch_and_template (ASCII texts split as bytes) gives Sketch.of_words and template_key of words_of, for any
    text: ASCII or not, words starting with digits or not, punctuation and underscores."""
    words = words_of(text)
    assert sketch_and_template(text) == (Sketch.of_words(words), template_key(words))


@settings(max_examples=500)
@given(st.one_of(ascii_texts, word_texts, st.text(max_size=60)), st.integers(1, 80))
def test_a_masked_text_counts_its_words_by_its_spaces(text: str, chars_max: int) -> None:
    """The loop check counts a masked text's whitespace-separated words as its spaces plus one (mask_volatile joins
    words by single spaces), cut to chars_max and stripped, as len(split()) would."""
    volatile = mask_volatile(text)[:chars_max].rstrip(" ")
    assert (volatile.count(" ") + 1 if volatile else 0) == len(mask_volatile(text)[:chars_max].split())
