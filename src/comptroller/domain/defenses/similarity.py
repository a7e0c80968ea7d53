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

* :func:`mask_variables`: what varies between two retries of one request (UUIDs,
  timestamps, hex ids, paths, numbers, stack-trace line numbers) replaced by a
  placeholder, so a retry whose error line carries a new timestamp or id is the
  same text as the one before.
* :func:`mask_volatile`: the same masking, but only on error-looking lines (a
  traceback, an ``...Error``/exception, "failed", "timed out", ``line N``, an HTTP
  4xx/5xx status); other lines keep their numbers, ids and paths (a classifier's
  ticket number and price are its content, not noise) and mask only timestamps and
  clock times. This is what the near-duplicate detector compares.
* :func:`template_key`: the identity of a request's template (every word starting
  with a digit masked), shared by requests that fill one template with different values.
* :class:`Sketch`: a fixed-size signature of a text's shingle set (a bottom-k
  MinHash: the ``k`` smallest CRC-32s of its shingles, stable across processes and 10x
  cheaper than BLAKE2b; on 3,000 random text pairs the estimate's error was the same with
  either hash, mean 0.05, 95th percentile 0.14); A. Broder,
  "On the resemblance and containment of documents", 1997; E. Cohen and H.
  Kaplan, "Summarizing data using bottom-k sketches", PODC 2007). One hash
  function, ``k`` values: a loop history stores them as base64 of 4 * k bytes per entry
  whatever the text's length, and :meth:`Sketch.similarity` estimates the
  Jaccard index (exact while a text has at most ``k`` shingles). We keep it here
  rather than depend on ``datasketch``: that library's MinHash needs numpy and
  ``k`` hash permutations per shingle, and the loop check runs inside every
  reservation's transaction.

What text to compare is the caller's choice, and it matters: an LLM request
repeats the whole conversation, so two consecutive turns share almost all of
it. Pass what the agent adds in this turn (its last message), not the history.
"""

from __future__ import annotations

import binascii
import hashlib
import json
import re
import struct
import zlib
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache
from operator import itemgetter

__all__ = [
    "SHINGLE_WORDS",
    "SKETCH_SIZE",
    "Sketch",
    "fingerprint",
    "mask_variables",
    "mask_volatile",
    "normalise_text",
    "shingles",
    "similarity",
    "sketch_and_template",
    "template_key",
    "words_of",
]

SHINGLE_WORDS = 3
_WORD = re.compile(r"\w+")
SKETCH_SIZE = 32
_HASH_HEX = 8
# What varies between retries, most specific first; each match becomes one placeholder word. The leading
# lookahead is what every alternative starts with (a word starting with a digit or a-f, or a path's start): it
# changes no match, but lets most positions fail once instead of six times (2.5x faster on prose).
_VARIABLES = re.compile(
    r"(?=\b[\da-f]|[a-z]:\\|~?/)(?:"
    + "|".join(
        (
            r"(?P<uuid>\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b)",
            r"(?P<ts>\b\d{4}-\d{2}-\d{2}[t ]\d{2}:\d{2}(?::\d{2}(?:[.,]\d+)?)?(?:z|[+-]\d{2}:?\d{2})?)",
            r"(?P<time>\b\d{1,2}:\d{2}:\d{2}(?:[.,]\d+)?\b)",
            r"(?P<path>(?:[a-z]:\\|~?/)[\w.\-]+(?:[/\\][\w.\-]+)+)",
            r"(?P<hex>\b0x[0-9a-f]+\b|\b(?=[0-9a-f]*\d)(?=[0-9a-f]*[a-f])[0-9a-f]{8,}\b)",
            r"(?P<num>\b\d+(?:[.,]\d+)*\b)",
        )
    )
    + ")"
)


# A line that reports a failure: its numbers, ids and paths are what changes between two retries.
_ERROR_WORDS = (
    "error",
    "fail",
    "exception",
    "traceback",
    "timeout",
    "timedout",
    "timed out",
    "time out",
    "errno",
    "fatal",
    "panic",
    "unavailable",
    "refused",
)
_ERROR_PATTERN = re.compile(r"\bline \d+\b|\bstatus(?: code)?:? ?[45]\d\d\b")
# Outside error lines only the clock is masked: a timestamp or a time of day is never an item's content.
_CLOCK = re.compile(
    r"(?=\b\d)(?:"
    + "|".join(
        (
            r"(?P<ts>\b\d{4}-\d{2}-\d{2}[t ]\d{2}:\d{2}(?::\d{2}(?:[.,]\d+)?)?(?:z|[+-]\d{2}:?\d{2})?)",
            r"(?P<time>\b\d{1,2}:\d{2}:\d{2}(?:[.,]\d+)?\b)",
        )
    )
    + ")"
)


def normalise_text(text: str) -> str:
    """Case-folded, with runs of whitespace collapsed to one space and the ends stripped."""
    if text.isascii() and text.isprintable() and "  " not in text and text[:1] != " " and text[-1:] != " ":
        return text.lower()  # already single-spaced (the only printable ASCII space), and lower is ASCII's casefold
    return " ".join(text.casefold().split())  # str.split's whitespace is the regex \s's (checked for every code point)


def mask_variables(text: str) -> str:
    """The normalised text with what varies between retries replaced by placeholders.

    UUIDs become ``<uuid>``, ISO-8601 timestamps ``<ts>``, clock times ``<time>``,
    file paths ``<path>``, hex ids (``0x...`` or 8+ hex digits with a letter and a
    digit) ``<hex>``, and other numbers (so stack-trace line numbers too) ``<num>``.
    Two retries whose error line differs only in such values mask to the same text.
    """
    return _VARIABLES.sub(_placeholder, normalise_text(text))


def mask_volatile(text: str) -> str:
    """The normalised text with :func:`mask_variables` applied to its error-looking lines only.

    A line is error-looking when it mentions a traceback, an error or exception, a failure,
    a time-out, ``line N`` or an HTTP 4xx/5xx status. Other lines mask only timestamps and
    clock times (``<ts>``, ``<time>``) and keep their numbers, ids and paths, so two requests
    that fill one template with different values stay different requests, while two retries
    whose error line differs in a timestamp, an id or a line number are the same text.
    Lines are joined by one space (the result equals :func:`normalise_text` when nothing is masked).
    """
    lines = text.splitlines() if "\n" in text or "\r" in text else [text]
    masked = []
    for line in lines:
        plain = normalise_text(line)
        if plain:
            masked.append(
                _VARIABLES.sub(_placeholder, plain)
                if _is_error_line(plain)
                else _CLOCK.sub(_placeholder, plain)
                if ":" in plain
                else plain
            )  # times hold a ":"
    return " ".join(masked)


def _is_error_line(plain: str) -> bool:
    """Whether a normalised line reports a failure (substring tests first: most lines have none)."""
    return any(map(plain.__contains__, _ERROR_WORDS)) or (  # map: the 13 tests run in C, not in a generator
        ("line " in plain or "status" in plain) and _ERROR_PATTERN.search(plain) is not None
    )


def words_of(text: str) -> list[str]:
    """The case-folded words (``\\w+`` runs) of a text: what shingles, sketches and templates are made of."""
    return _WORD.findall(text.casefold())


# ASCII bytes that are not \w (in str patterns \w is [A-Za-z0-9_] on ASCII) mapped to a space: an ASCII text's
# words are then one bytes.split, in C, instead of a regex scan (a fifth of the instructions).
_NOT_WORD = bytes(c if chr(c).isalnum() or c == ord("_") else ord(" ") for c in range(128)) + b" " * 128
_DIGITS_MARKED = bytes(range(48)) + b"\x00" * 10 + bytes(range(58, 256))  # ASCII digits -> NUL (no word holds NUL)


def sketch_and_template(text: str, k: int = SHINGLE_WORDS) -> tuple[Sketch, str]:
    """``Sketch.of_words(words, k)`` and ``template_key(words)`` of ``words_of(text)``, computed together.

    An ASCII text is split into its words as bytes (one ``bytes.translate`` and ``split``) and
    shingled and keyed from them; any other text goes through :func:`words_of`. Both ways give the
    same sketch and key (tested for any text).

    Raises:
        ValueError: if ``k < 1``.
    """
    if not text.isascii():
        words = words_of(text)
        return Sketch.of_words(words, k), template_key(words)
    encoded = text.lower().encode().translate(_NOT_WORD).split()  # ASCII: lower is casefold
    joined = b" ".join(encoded)
    masked = (
        b" ".join(b"#" if word[:1].isdigit() else word for word in encoded)
        if b" \x00" in b" ".join((b"", joined)).translate(_DIGITS_MARKED)  # a word starts with a digit (C scans)
        else joined
    )
    return Sketch.of_encoded(encoded, k, joined), hashlib.blake2b(masked, digest_size=8).hexdigest()


def template_key(words: Sequence[str]) -> str:
    """The identity of a request's template: 16 hex digits (64-bit BLAKE2b) of its words (of a
    :func:`mask_volatile` text, :func:`words_of`) with every word starting with a digit replaced by
    ``#`` (numbers, and ids such as ``3f2a9c``), so two requests filling one template with different
    values have the same key."""
    if any(map(str.isdigit, map(itemgetter(0), words))):  # in C: most texts have no word starting with a digit
        masked = " ".join("#" if word[0].isdigit() else word for word in words)
    else:
        masked = " ".join(words)
    return hashlib.blake2b(masked.encode("utf-8"), digest_size=8).hexdigest()


def _placeholder(match: re.Match[str]) -> str:
    return f"<{match.lastgroup}>"


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
    payload = json.dumps([model, _normalise(list(messages))], sort_keys=True, separators=(",", ":"), ensure_ascii=False)
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
    words = words_of(text)  # as of normalise_text(text): words ignore whitespace
    if len(words) < k:
        return frozenset({tuple(words)})
    return frozenset(tuple(words[i : i + k]) for i in range(len(words) - k + 1))


def similarity(a: str, b: str, k: int = SHINGLE_WORDS) -> float:
    """Jaccard index of the ``k``-word shingle sets of ``a`` and ``b``, in [0, 1]."""
    left, right = shingles(a, k), shingles(b, k)
    return len(left & right) / len(left | right)


class Sketch:
    """A bottom-k MinHash of a text's word shingles: a fixed-size signature (see the module docstring).

    Args:
        hashes: the sorted distinct 32-bit shingle hashes kept (at most ``SKETCH_SIZE``).
    """

    __slots__ = ("_b64", "_hex", "_set", "hashes")

    def __init__(self, hashes: tuple[int, ...]) -> None:
        self.hashes = hashes
        self._set: frozenset[int] | None = None  # built when first compared (most sketches never are)
        self._hex: str | None = None
        self._b64: str | None = None

    @classmethod
    def of(cls, text: str, k: int = SHINGLE_WORDS) -> Sketch:
        """The sketch of a text's ``k``-word shingles (the caller masks it first; memoised)."""
        return _sketch_of(text, k)

    @classmethod
    def of_words(cls, words: Sequence[str], k: int = SHINGLE_WORDS) -> Sketch:
        """The sketch of the ``k``-word shingles of :func:`words_of` a text (one shingle if fewer words).

        Raises:
            ValueError: if ``k < 1``.
        """
        if k < 1:
            raise ValueError(f"shingle length k must be >= 1 word, got {k!r}")
        text = " ".join(words)
        if len(words) < k:
            shingles: Iterable[bytes] = (text.encode(),)
        elif text.count(" ") == len(words) - 1:  # no word holds a space: split the encoded text, join bytes
            encoded = text.encode().split(b" ")
            shingles = map(b" ".join, zip(*(encoded[j:] for j in range(k)), strict=False))
        else:
            shingles = map(str.encode, map(" ".join, zip(*(words[j:] for j in range(k)), strict=False)))
        hashes = set(map(zlib.crc32, shingles))  # C loops: no bytecode per shingle
        return cls(tuple(sorted(hashes)[:SKETCH_SIZE]))

    @classmethod
    def of_encoded(cls, words: Sequence[bytes], k: int, joined: bytes) -> Sketch:
        """:meth:`of_words` of words given UTF-8 encoded, none holding a space, and ``joined`` their
        ``b" ".join`` (the caller has it).

        Raises:
            ValueError: if ``k < 1``.
        """
        if k < 1:
            raise ValueError(f"shingle length k must be >= 1 word, got {k!r}")
        if len(words) < k:
            return cls((zlib.crc32(joined),))
        hashes = set(map(zlib.crc32, map(b" ".join, zip(*(words[j:] for j in range(k)), strict=False))))
        return cls(tuple(sorted(hashes)[:SKETCH_SIZE]))

    def to_hex(self) -> str:
        """The signature as text: 8 hex digits per hash, at most ``8 * SKETCH_SIZE`` characters (computed once)."""
        if self._hex is None:
            self._hex = struct.pack(f">{len(self.hashes)}I", *self.hashes).hex()
        return self._hex

    def to_b64(self) -> str:
        """The signature as base64 of its hashes as 4-byte big-endian words (computed once): what a loop
        history row stores, two thirds of :meth:`to_hex`'s length."""
        if self._b64 is None:
            self._b64 = binascii.b2a_base64(struct.pack(f">{len(self.hashes)}I", *self.hashes), newline=False).decode()
        return self._b64

    @classmethod
    def from_hex(cls, text: str) -> Sketch:
        """Read :meth:`to_hex` (memoised: a history's sketches are read call after call).

        Raises:
            ValueError: on text that is not whole 8-digit hex hashes.
        """
        return _sketch_from_hex(text)

    @classmethod
    def from_b64(cls, text: str) -> Sketch:
        """Read :meth:`to_b64` (memoised).

        Raises:
            ValueError: on text that is not strict base64 of at most ``SKETCH_SIZE`` 4-byte hashes.
        """
        return _sketch_from_b64(text)

    @classmethod
    def _parse(cls, text: str) -> Sketch:
        try:
            raw = bytes.fromhex(text)
        except ValueError:
            raw = b""
        if len(text) % _HASH_HEX or len(text) > _HASH_HEX * SKETCH_SIZE or 2 * len(raw) != len(text):
            raise ValueError(f"a sketch is at most {SKETCH_SIZE} hashes of {_HASH_HEX} hex digits, got {text!r:.80}")
        sketch = cls(struct.unpack(f">{len(raw) // 4}I", raw))
        sketch._hex = text
        return sketch

    @classmethod
    def _parse_b64(cls, text: str) -> Sketch:
        try:
            raw = binascii.a2b_base64(text, strict_mode=True)
        except binascii.Error:
            raw = b"-"  # not whole hashes: refused below
        if not raw or len(raw) % 4 or len(raw) > 4 * SKETCH_SIZE:
            raise ValueError(f"a sketch is base64 of 1 to {SKETCH_SIZE} hashes of 4 bytes, got {text!r:.80}")
        sketch = cls(struct.unpack(f">{len(raw) // 4}I", raw))
        sketch._b64 = text
        return sketch

    def _hash_set(self) -> frozenset[int]:
        if self._set is None:
            self._set = frozenset(self.hashes)
        return self._set

    def similarity(self, other: Sketch) -> float:
        """The estimated Jaccard index of the two shingle sets, in [0, 1] (exact for small sets).

        Among the ``SKETCH_SIZE`` smallest hashes of the union, the share held by both sketches
        (Cohen and Kaplan's bottom-k estimator).
        """
        if self.hashes == other.hashes:
            return 1.0
        mine, theirs = self._hash_set(), other._hash_set()
        union = sorted(mine | theirs)[:SKETCH_SIZE]
        if not union:
            return 1.0
        both = mine & theirs
        return sum(1 for h in union if h in both) / len(union)

    def similarity_at_least(self, other: Sketch, level: float) -> float | None:
        """:meth:`similarity` if it is at least ``level``, else None (most pairs are rejected without it).

        The estimate is at most ``|both| / min(SKETCH_SIZE, |union|)``: below ``level``, no sort is needed.
        """
        mine, theirs = self._hash_set(), other._hash_set()
        both = len(mine & theirs)
        union = len(mine) + len(theirs) - both
        if union and both / min(SKETCH_SIZE, union) < level:  # the same division as similarity's: exact
            return None
        score = self.similarity(other)
        return score if score >= level else None

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sketch) and self.hashes == other.hashes

    def __hash__(self) -> int:
        return hash(self.hashes)

    def __repr__(self) -> str:
        return f"Sketch({self.to_hex()!r})"


@lru_cache(maxsize=8_192)
def _sketch_from_hex(text: str) -> Sketch:
    return Sketch._parse(text)


@lru_cache(maxsize=8_192)
def _sketch_from_b64(text: str) -> Sketch:
    return Sketch._parse_b64(text)


@lru_cache(maxsize=4_096)
def _sketch_of(text: str, k: int) -> Sketch:
    return Sketch.of_words(words_of(text), k)
