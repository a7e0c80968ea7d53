"""The exact input bound never under-counts: checked against an independent BPE on real shapes and random text.

The reference tokenizer here shares nothing with ``bpe-openai``'s code: tiktoken's published
pre-tokenization patterns (``tiktoken_ext/openai_public.py``) run by the ``regex`` package, and
tiktoken's merge rule (merge the adjacent pair of lowest rank until none is in the vocabulary) in
Python, over the vocabulary files (the same public data: there is only one o200k_base).
"""

from __future__ import annotations

import functools
import gzip
import importlib.resources
import json
import subprocess
import sys
from base64 import b64decode
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import regex
from hypothesis import given
from hypothesis import strategies as st

from comptroller.domain.exact_tokens import CL100K, O200K, encoding_for_model, exact_input_tokens_max
from comptroller.domain.input_parts import UnboundableInputError
from comptroller.domain.tokens import request_input_tokens_max
from comptroller.exact_input import TEXT_CHARS_MAX, count_tokens, input_recount

ROOT = Path(__file__).resolve().parents[2]
# the shipped traces, and the shared copy when this machine has one (read once when the two are the same bytes)
TRACES = list({p.read_bytes(): p for p in (Path("/work/shared/data/traces/chatdev_warehouse.jsonl"),
                                          ROOT / "data/traces/chatdev_warehouse.jsonl") if p.exists()}.values())
PATTERNS = {
    O200K: "|".join([
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""\p{N}{1,3}""", r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""", r"""\s*[\r\n]+""", r"""\s+(?!\S)""", r"""\s+"""]),
    CL100K: r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]"""
            r"""|\s+(?!\S)|\s+""",
}


@functools.cache
def ranks(encoding: str) -> dict[bytes, int]:
    """The vocabulary file's token -> rank (tiktoken's format: base64 token, space, rank)."""
    data = importlib.resources.files("bpe_openai.data").joinpath(f"{encoding}.tiktoken.gz").read_bytes()
    return {b64decode(token): int(rank) for token, rank in
            (line.split() for line in gzip.decompress(data).decode().splitlines() if line)}


@functools.cache
def piece_tokens(encoding: str, piece: bytes) -> int:
    """Tokens of one pre-tokenized piece by tiktoken's rule: merge the lowest-ranked adjacent pair while one is."""
    table = ranks(encoding)
    parts = [piece[i:i + 1] for i in range(len(piece))]
    while len(parts) > 1:
        pairs = [(table.get(parts[i] + parts[i + 1]), i) for i in range(len(parts) - 1)]
        best = min(((rank, i) for rank, i in pairs if rank is not None), default=None)
        if best is None:
            break
        i = best[1]
        parts[i:i + 2] = [parts[i] + parts[i + 1]]
    return len(parts)


def reference_tokens(encoding: str, text: str) -> int:
    """The independent count of ``text``."""
    return sum(piece_tokens(encoding, piece.encode()) for piece in regex.findall(PATTERNS[encoding], text))


def billed(encoding: str, messages: Sequence[Mapping[str, Any]], join: str = "") -> int:
    """What OpenAI bills for chat messages (cookbook "How to count tokens with tiktoken": 3 per message,
    1 per name, 3 to prime the reply); several text parts of a message are joined with ``join``."""
    total = 3
    for message in messages:
        content = message["content"]
        text = content if isinstance(content, str) else join.join(part["text"] for part in content)
        total += 3 + reference_tokens(encoding, message["role"]) + reference_tokens(encoding, text)
        if "name" in message:
            total += 1 + reference_tokens(encoding, message["name"])
    return total


def exact(body: Mapping[str, Any], api: str, encoding: str) -> int | None:
    """The bound under test, with the installed tokenizer."""
    return exact_input_tokens_max(body, api=api, encoding=encoding, count=count_tokens)  # type: ignore[arg-type]


def test_the_installed_tokenizer_agrees_with_the_reference() -> None:
    """bpe-openai's counts equal the independent BPE's on English, code, digits, whitespace runs and CJK."""
    text = "Hello, world!  \n\n\tdef f(x):\n        return x ** 2  # 12345678\n你好，世界。 ünïcödé 🙂 don't"
    for encoding in (O200K, CL100K):
        assert count_tokens(encoding, text) == reference_tokens(encoding, text)


@pytest.mark.parametrize(("model", "encoding"), [
    ("gpt-4o-mini", O200K), ("gpt-4o-mini-2024-07-18", O200K), ("openai/gpt-4.1", O200K), ("gpt-5-nano", O200K),
    ("o3-mini", O200K), ("o1", O200K), ("ft:gpt-4o-mini:org::abc", O200K), ("chatgpt-4o-latest", O200K),
    ("gpt-4", CL100K), ("gpt-4-turbo", CL100K), ("gpt-3.5-turbo-16k-0613", CL100K),
    ("text-embedding-3-small", CL100K), ("claude-3-5-sonnet", None), ("llama-3-70b", None),
    ("o1x", None), ("text-davinci-003", None), ("stub-model", None),
])
def test_models_map_to_their_published_tokenizer(model: str, encoding: str | None) -> None:
    """OpenAI's model ids map to tiktoken's encodings; every other model gets none (the byte bound stays)."""
    assert encoding_for_model(model) == encoding


def test_only_plain_messages_are_counted_exactly() -> None:
    """Messages with a name, tool calls, an image or several text parts keep their byte bound; plain ones are exact."""
    plain = {"role": "user", "content": "Write the tests first."}
    others = [{"role": "user", "name": "alice", "content": "hi"},
              {"role": "assistant", "content": None, "tool_calls": [{"id": "c", "type": "function",
                                                                    "function": {"name": "f", "arguments": "{}"}}]},
              {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]
    body = {"model": "gpt-4o", "messages": [plain, *others]}
    residual = request_input_tokens_max({"model": "gpt-4o", "messages": others}, api="chat")
    plain_tokens = 8 + reference_tokens(O200K, "user") + reference_tokens(O200K, plain["content"])
    assert exact(body, "chat", O200K) == residual + plain_tokens


def test_nothing_countable_gives_none_and_anthropic_is_never_recounted() -> None:
    """A request with no plain text answers None, and Anthropic Messages get no recount at all."""
    named = {"model": "gpt-4o", "messages": [{"role": "user", "name": "a", "content": "x"}]}
    assert exact(named, "chat", O200K) is None
    assert input_recount({"model": "claude-3", "messages": []}, api="messages") is None
    assert input_recount({"model": "gpt-4o", "messages": []}, api="chat") is not None


@pytest.mark.timeout(60)
def test_without_the_exact_extra_no_call_carries_a_recount() -> None:
    """With bpe-openai absent (as without the ``exact`` extra), input_recount answers None: the byte bound stays."""
    script = ("import sys; sys.modules['bpe_openai'] = None\n"  # what importlib sees when the package is absent
              "from comptroller.exact_input import available, input_recount\n"
              "body = {'model': 'gpt-4o', 'messages': [{'role': 'user', 'content': 'hi'}]}\n"
              "print(available(), input_recount(body, api='chat'))")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=50, check=True)
    assert out.stdout.split() == ["False", "None"]


def test_unboundable_parts_are_refused_as_by_the_byte_bound() -> None:
    """An audio part is refused by the exact bound too: it has no documented upper bound."""
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}, {"role": "user", "content": [
        {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}]}]}
    with pytest.raises(UnboundableInputError):
        exact(body, "chat", O200K)


def test_a_lone_surrogate_is_byte_counted() -> None:
    """A text the tokenizer would alter (a lone surrogate) is not counted exactly."""
    assert count_tokens(O200K, "a\ud800b") is None


def test_texts_the_tokenizer_refuses_are_byte_counted() -> None:
    """Past the character cap, or past bpe-openai's 200,000-token limit, a text is not counted exactly."""
    assert count_tokens(O200K, "x" * (TEXT_CHARS_MAX + 1)) is None
    assert count_tokens(O200K, "7 " * 200_001) is None  # one token per digit and per space: 400,002 tokens
    assert exact({"model": "gpt-4o", "messages": [{"role": "user", "content": "a\ud800b"}]}, "chat", O200K) is None


@pytest.mark.parametrize("api", ["responses", "embeddings", "completions"])
def test_other_openai_shapes_are_bounded_above_their_billed_tokens(api: str) -> None:
    """Responses input and instructions, embeddings and completions strings: the bound covers the exact count."""
    text, instructions = "Summarise the ledger's day in two sentences.", "Be brief."
    body: dict[str, Any] = {"model": "gpt-4o"}
    if api == "responses":
        body |= {"input": [{"role": "user", "content": [{"type": "input_text", "text": text}]}],
                 "instructions": instructions}
        floor = billed(O200K, [{"role": "user", "content": text}, {"role": "developer", "content": instructions}])
    else:
        body |= {"input" if api == "embeddings" else "prompt": [text, instructions]}
        floor = reference_tokens(O200K, text) + reference_tokens(O200K, instructions)
    bound = exact(body, api, O200K)
    assert bound is not None and floor <= bound < request_input_tokens_max(body, api=api)  # type: ignore[arg-type]


def _trace_bodies(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """A chat body per recorded call, of the recorded shape: the agent's role as the system message, the phase
    and English-and-code text as the user message, sized by the recorded input tokens (about 4 characters each)."""
    pool = "\n".join((ROOT / p).read_text() for p in ("README.md", "src/comptroller/domain/tokens.py",
                                                        "src/comptroller/engine/engine.py"))
    out = []
    for line in path.read_text().splitlines():
        record = json.loads(line)
        size = 4 * int(record["input_tokens"])
        start = (7919 * int(record["seq"])) % (len(pool) // 2)
        user = (pool[start:] + pool) * (1 + size // len(pool))
        messages = [{"role": "system", "content": f"You are {record['agent']}. We are both working at ChatDev."},
                    {"role": "user", "content": f"Phase {record['phase']}.\n" + user[:size]}]
        model = record.get("x_model_resolved") or "gpt-3.5-turbo-16k-0613"
        out.append((model, {"model": model, "max_tokens": 100, "messages": messages}))
    return out


@pytest.mark.timeout(300)
@pytest.mark.parametrize("path", TRACES, ids=str)
def test_the_bound_covers_the_billed_tokens_of_every_recorded_call_shape(path: Path) -> None:
    """On every recorded call's shape, in o200k and cl100k: billed count <= exact bound <= byte bound."""
    calls = _trace_bodies(path)
    assert len(calls) >= 1_900
    for _, body in calls:
        by_bytes = request_input_tokens_max(body, api="chat")
        for encoding in (O200K, CL100K):
            bound = exact(body, "chat", encoding)
            assert bound is not None
            assert billed(encoding, body["messages"]) <= bound <= by_bytes


roles = st.sampled_from(["system", "user", "assistant", "developer"])
texts = st.text(st.characters(codec="utf-8"), max_size=300)
contents = st.one_of(texts, st.lists(st.fixed_dictionaries({"type": st.just("text"), "text": texts}),
                                     min_size=1, max_size=3))
messages = st.lists(st.one_of(
    st.fixed_dictionaries({"role": roles, "content": contents}),
    st.fixed_dictionaries({"role": roles, "content": contents, "name": st.from_regex(r"[a-z_]{1,12}", fullmatch=True)}),
), min_size=1, max_size=6)


@given(messages=messages, encoding=st.sampled_from([O200K, CL100K]))
def test_the_bound_never_under_counts_random_unicode_messages(messages: list[dict[str, Any]], encoding: str) -> None:
    """For random unicode messages (text parts joined with or without newlines), the bound is >= the billed count."""
    body = {"model": "gpt-4o", "messages": messages}
    bound = exact(body, "chat", encoding)
    by_bytes = request_input_tokens_max(body, api="chat")
    held = by_bytes if bound is None else bound
    assert max(billed(encoding, messages, ""), billed(encoding, messages, "\n")) <= held <= by_bytes
