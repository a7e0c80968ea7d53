"""The input bound counts the whole request: every billed field, every API shape (issue 11, item 3).

"Billed tokens" of a field are derived with exact tokenizers: OpenAI's o200k_base and cl100k_base
from the ``bpe-openai`` package, whose vocabularies ship inside the wheel (nothing downloads). A
field's billed tokens are at most the tokens of its text and of its JSON (the provider renders the
field's value, never more text than it holds plus framing), and at most its UTF-8 bytes (every BPE
token is at least one byte), so the bound must be at least all of these.
"""

from __future__ import annotations

import base64
import json
import random
import struct
from collections.abc import Callable
from typing import Any

import bpe_openai
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from comptroller.domain.tokens import (
    APIS,
    NOT_BILLED_FIELDS,
    UnboundableInputError,
    input_tokens_upper_bound,
    prediction_tokens_max,
    request_input_tokens_max,
)

ENCODINGS = [bpe_openai.get_encoding("o200k_base"), bpe_openai.get_encoding("cl100k_base")]
FIELD_BYTES = 100_000


def _payload(seed: int, alphabet: str) -> str:
    """About 100 KB of text drawn from ``alphabet`` (deterministic)."""
    rng = random.Random(seed)
    text = ""
    while len(text.encode()) < FIELD_BYTES:
        text += "".join(rng.choice(alphabet) for _ in range(1000))
    return text


PAYLOADS = {
    "prose": _payload(1, "abcdefghijklmnopqrstuvwxyz      ,.ETAOIN"),
    "dense": _payload(2, "a1Z9 {}[]\"\\\n\t日本語ü€😀<>|=~^`"),
}


def _billed_tokens(text: str, value: Any) -> int:
    """The most tokens any of our tokenizers gives the field's text or its JSON rendering."""
    rendered = json.dumps(value, ensure_ascii=False)
    return max(len(encoding.encode_ordinary(t)) for encoding in ENCODINGS for t in (text, rendered))


def _schema(text: str) -> dict[str, Any]:
    return {"type": "object", "description": text, "properties": {"q": {"type": "string", "description": text}}}


Builder = Callable[[str], tuple[dict[str, Any], Any]]
USER = {"role": "user", "content": "hi"}

# (api, field, builder: payload -> (request body, the field's value as sent))
FIELDS: list[tuple[str, str, Builder]] = [
    ("chat", "messages.content", lambda t: ({"model": "gpt-4o", "messages": [{"role": "user", "content": t}]}, t)),
    ("chat", "messages.content[text]", lambda t: (
        {"model": "gpt-4o", "messages": [{"role": "user", "content": [{"type": "text", "text": t}]}]}, t)),
    ("chat", "system message", lambda t: (
        {"model": "gpt-4o", "messages": [{"role": "system", "content": t}, USER]}, t)),
    ("chat", "messages.name", lambda t: ({"model": "gpt-4o", "messages": [{**USER, "name": t}]}, t)),
    ("chat", "tool_calls.arguments", lambda t: ({"model": "gpt-4o", "messages": [USER, {
        "role": "assistant", "tool_calls": [{"id": "c1", "type": "function",
                                             "function": {"name": "f", "arguments": t}}]}]}, t)),
    ("chat", "function_call.arguments", lambda t: ({"model": "gpt-4o", "messages": [USER, {
        "role": "assistant", "content": None, "function_call": {"name": "f", "arguments": t}}]}, t)),
    ("chat", "tool message", lambda t: ({"model": "gpt-4o", "messages": [USER, {
        "role": "tool", "tool_call_id": "c1", "content": t}]}, t)),
    ("chat", "tools", lambda t: ({"model": "gpt-4o", "messages": [USER], "tools": [
        {"type": "function", "function": {"name": "f", "description": t, "parameters": _schema(t)}}]}, _schema(t))),
    ("chat", "functions", lambda t: ({"model": "gpt-4o", "messages": [USER], "functions": [
        {"name": "f", "parameters": _schema(t)}]}, _schema(t))),
    ("chat", "response_format.json_schema", lambda t: ({"model": "gpt-4o", "messages": [USER], "response_format": {
        "type": "json_schema", "json_schema": {"name": "s", "schema": _schema(t)}}}, _schema(t))),
    ("chat", "prediction", lambda t: ({"model": "gpt-4o", "messages": [USER], "prediction": {
        "type": "content", "content": t}}, t)),
    ("chat", "an unknown future field", lambda t: ({"model": "gpt-4o", "messages": [USER], "x_new": {"a": t}}, t)),
    ("responses", "input", lambda t: ({"model": "gpt-4o", "input": t}, t)),
    ("responses", "input[message].input_text", lambda t: ({"model": "gpt-4o", "input": [
        {"role": "user", "content": [{"type": "input_text", "text": t}]}]}, t)),
    ("responses", "instructions", lambda t: ({"model": "gpt-4o", "input": "hi", "instructions": t}, t)),
    ("responses", "tools", lambda t: ({"model": "gpt-4o", "input": "hi", "tools": [
        {"type": "function", "name": "f", "description": t, "parameters": _schema(t)}]}, _schema(t))),
    ("responses", "text.format json_schema", lambda t: ({"model": "gpt-4o", "input": "hi", "text": {
        "format": {"type": "json_schema", "name": "s", "schema": _schema(t)}}}, _schema(t))),
    ("responses", "function_call.arguments", lambda t: ({"model": "gpt-4o", "input": [
        {"type": "function_call", "call_id": "c1", "name": "f", "arguments": t}]}, t)),
    ("responses", "function_call_output", lambda t: ({"model": "gpt-4o", "input": [
        {"type": "function_call_output", "call_id": "c1", "output": t}]}, t)),
    ("responses", "reasoning item", lambda t: ({"model": "o3", "input": [
        {"type": "reasoning", "id": "r1", "summary": [{"type": "summary_text", "text": t}]}]}, t)),
    ("messages", "system", lambda t: ({"model": "claude-sonnet-4-5", "system": t, "messages": [USER]}, t)),
    ("messages", "system blocks", lambda t: ({"model": "claude-sonnet-4-5", "system": [
        {"type": "text", "text": t, "cache_control": {"type": "ephemeral"}}], "messages": [USER]}, t)),
    ("messages", "content", lambda t: (
        {"model": "claude-sonnet-4-5", "messages": [{"role": "user", "content": t}]}, t)),
    ("messages", "content[text]", lambda t: ({"model": "claude-sonnet-4-5", "messages": [
        {"role": "user", "content": [{"type": "text", "text": t}]}]}, t)),
    ("messages", "tool_use.input", lambda t: ({"model": "claude-sonnet-4-5", "messages": [USER, {
        "role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "f", "input": {"q": t}}]}]},
        {"q": t})),
    ("messages", "tool_result", lambda t: ({"model": "claude-sonnet-4-5", "messages": [{
        "role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": t}]}]}, t)),
    ("messages", "tools.input_schema", lambda t: ({"model": "claude-sonnet-4-5", "messages": [USER], "tools": [
        {"name": "f", "description": t, "input_schema": _schema(t)}]}, _schema(t))),
    ("messages", "document (text)", lambda t: ({"model": "claude-sonnet-4-5", "messages": [{"role": "user", "content": [
        {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": t}}]}]}, t)),
    ("messages", "search_result", lambda t: ({"model": "claude-sonnet-4-5", "messages": [{"role": "user", "content": [
        {"type": "search_result", "source": "s", "title": "t", "content": [{"type": "text", "text": t}]}]}]}, t)),
    ("messages", "thinking", lambda t: ({"model": "claude-sonnet-4-5", "messages": [USER, {
        "role": "assistant", "content": [{"type": "thinking", "thinking": t, "signature": "s"}]}]}, t)),
    ("messages", "output_format", lambda t: ({"model": "claude-sonnet-4-5", "messages": [USER], "output_format": {
        "type": "json_schema", "schema": _schema(t)}}, _schema(t))),
    ("embeddings", "input", lambda t: ({"model": "text-embedding-3-small", "input": t}, t)),
    ("embeddings", "input[]", lambda t: ({"model": "text-embedding-3-small", "input": ["a", t]}, t)),
    ("completions", "prompt", lambda t: ({"model": "gpt-3.5-turbo-instruct", "prompt": t}, t)),
    ("completions", "prompt[]", lambda t: ({"model": "gpt-3.5-turbo-instruct", "prompt": [t, "b"]}, t)),
    ("completions", "suffix", lambda t: ({"model": "gpt-3.5-turbo-instruct", "prompt": "a", "suffix": t}, t)),
]


@pytest.mark.parametrize("payload", sorted(PAYLOADS))
@pytest.mark.parametrize(("api", "field", "build"), FIELDS, ids=[f"{a}:{f}" for a, f, _ in FIELDS])
def test_100kb_in_any_field_is_bounded_by_at_least_its_billed_tokens(api: str, field: str, build: Builder,
                                                                     payload: str) -> None:
    """A body carrying 100 KB in one field has a bound at least that field's tokens and bytes."""
    text = PAYLOADS[payload]
    body, value = build(text)
    bound = request_input_tokens_max(body, api=api)  # type: ignore[arg-type]
    assert bound >= len(text.encode())
    assert bound >= _billed_tokens(text, value)


def test_every_api_shape_has_fields_in_the_table() -> None:
    """The table covers every API the bound accepts."""
    assert {api for api, _, _ in FIELDS} == set(APIS)


def test_token_id_prompts_are_bounded_by_their_count() -> None:
    """A prompt of token ids (embeddings, completions) is bounded by at least the number of ids."""
    ids = list(range(50_000))
    for api, field in (("embeddings", "input"), ("completions", "prompt")):
        assert request_input_tokens_max({"model": "m", field: ids}, api=api) >= len(ids)  # type: ignore[arg-type]


def test_only_unbilled_fields_are_left_out() -> None:
    """The fields left out are exactly the documented not-billed ones: each adds nothing, anything else adds bytes."""
    base = {"model": "gpt-4o", "messages": [USER]}
    bound = request_input_tokens_max(base, api="chat")
    for field in sorted(NOT_BILLED_FIELDS - {"model"}):
        assert request_input_tokens_max({**base, field: "x" * 1000}, api="chat") == bound, field
    assert request_input_tokens_max({**base, "stop": "x" * 1000}, api="chat") >= bound + 1000


# --- images: documented rules, payload bytes not counted as text -----------------------------------


def _png_data_url(width: int, height: int, padding: int = FIELD_BYTES) -> str:
    header = (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + struct.pack(">II", width, height)
              + b"\x08\x02\0\0\0")
    return "data:image/png;base64," + base64.b64encode(header + bytes(padding)).decode()


def _chat_image(url: str, detail: str, model: str = "gpt-4o") -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": url, "detail": detail}}]}]}


TEXT_ONLY = request_input_tokens_max({"model": "gpt-4o", "messages": [{"role": "user", "content": []}]}, api="chat")


@pytest.mark.parametrize(("width", "height", "detail", "model", "documented"), [
    (1024, 1024, "high", "gpt-4o", 170 * 4 + 85),      # OpenAI's example: 768x768 after scaling, 4 tiles
    (2048, 4096, "high", "gpt-4o", 170 * 6 + 85),      # OpenAI's example: 768x1536, 6 tiles
    (4096, 8192, "low", "gpt-4o", 85),                  # low detail: fixed
    (1024, 1024, "high", "gpt-4o-mini", 5667 * 4 + 2833),
    (1024, 1024, "auto", "o1", 150 * 4 + 75),
    (1024, 1024, "high", "gpt-4.1-mini", 1659),         # 32 x 32 patches x 1.62, rounded up
    (1800, 2400, "high", "gpt-4.1-nano", 3779),         # capped at 1536 patches x 2.46, rounded up
])
def test_openai_images_are_bounded_by_the_documented_rule(width: int, height: int, detail: str, model: str,
                                                          documented: int) -> None:
    """A base64 image costs at least its documented tokens, and its 100 KB payload is not counted as text."""
    url = _png_data_url(width, height)
    bound = request_input_tokens_max(_chat_image(url, detail, model), api="chat")
    assert bound >= TEXT_ONLY + documented
    assert bound < len(url)


def test_an_image_of_unknown_size_gets_the_rule_maximum() -> None:
    """An image by URL is bounded as the largest image of its rule: 8 tiles for gpt-4o, 768x2048."""
    by_url = request_input_tokens_max(_chat_image("https://example.com/a.png", "high"), api="chat")
    largest = request_input_tokens_max(_chat_image(_png_data_url(768, 2048, 0), "high"), api="chat")
    assert by_url - len("https://example.com/a.png") >= largest - len(_png_data_url(768, 2048, 0))
    assert by_url >= TEXT_ONLY + 85 + 170 * 8


def test_an_unknown_model_gets_the_largest_openai_rule() -> None:
    """A model no rule names is bounded by the most expensive rule (gpt-4o-mini's multiplier)."""
    bound = request_input_tokens_max(_chat_image("https://example.com/a.png", "high", "my-vllm-model"), api="chat")
    assert bound >= 2833 + 5667 * 8


@pytest.mark.parametrize("model", ["gpt-5.1-mini", "gpt-4o-nano-2030", "gpt-4.5-mini"])
def test_an_unlisted_small_variant_of_a_tile_family_is_bounded_as_unknown(model: str) -> None:
    """A new -mini/-nano model may be priced by patches, so it gets the largest rule, not the default tiles."""
    unknown = request_input_tokens_max(_chat_image("https://example.com/a.png", "high", "my-vllm-model"), api="chat")
    bound = request_input_tokens_max(_chat_image("https://example.com/a.png", "high", model), api="chat")
    assert bound == unknown  # "model" is not billed text, so only the image rule differs


def test_an_unknown_image_detail_is_refused() -> None:
    """A detail value with no documented rule (a future 'original') is refused, not priced as 'high'."""
    with pytest.raises(UnboundableInputError, match="detail") as caught:
        request_input_tokens_max(_chat_image("https://example.com/a.png", "original"), api="chat")
    assert caught.value.param == "messages[0].content[0]"


@pytest.mark.parametrize(("width", "height"), [(200, 200), (1092, 1092), (1000, 3000), (8000, 8000)])
def test_anthropic_images_are_bounded_by_both_documented_formulas(width: int, height: int) -> None:
    """A Claude image costs at least w*h/750 and ceil(w/28)*ceil(h/28) after the long edge is cut to 2576 px."""
    scale = min(1.0, 2576 / max(width, height))
    w, h = width * scale, height * scale
    documented = max(-(-int(w * h) // 750), -(-int(w) // 28) * -(-int(h) // 28))
    data = _png_data_url(width, height).partition(",")[2]
    body = {"model": "claude-sonnet-4-5", "messages": [{"role": "user", "content": [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": data}}]}]}
    assert request_input_tokens_max(body, api="messages") >= documented
    assert request_input_tokens_max(body, api="messages") < len(data)


# --- parts no documented rule bounds ----------------------------------------------------------------


@pytest.mark.parametrize(("api", "body", "param"), [
    ("chat", {"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {
        "data": "AAAA", "format": "wav"}}]}]}, "messages[0].content[0]"),
    ("chat", {"messages": [{"role": "user", "content": [{"type": "file", "file": {"file_id": "f1"}}]}]},
     "messages[0].content[0]"),
    ("chat", {"messages": [{"role": "user", "content": [{"type": "video_url", "video_url": {"url": "u"}}]}]},
     "messages[0].content[0]"),
    ("chat", {"messages": [USER, {"role": "assistant", "audio": {"id": "a1"}}]}, "messages[1].audio"),
    ("chat", {"messages": [USER], "web_search_options": {}}, "web_search_options"),
    ("responses", {"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]},
     "input[0].content[0]"),
    ("responses", {"input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0]"),
    ("responses", {"input": "hi", "previous_response_id": "resp_1"}, "previous_response_id"),
    ("responses", {"input": "hi", "conversation": "conv_1"}, "conversation"),
    ("responses", {"input": "hi", "prompt": {"id": "pmpt_1"}}, "prompt"),
    ("responses", {"input": "hi", "tools": [{"type": "web_search"}]}, "tools[0]"),
    ("messages", {"messages": [{"role": "user", "content": [{"type": "document", "source": {
        "type": "base64", "media_type": "application/pdf", "data": "JVBER"}}]}]}, "messages[0].content[0]"),
    ("messages", {"messages": [USER], "tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "tools[0]"),
    ("messages", {"messages": [USER], "mcp_servers": [{"type": "url", "url": "u", "name": "n"}]}, "mcp_servers"),
])
def test_parts_without_a_documented_bound_are_refused_by_name(api: str, body: dict[str, Any], param: str) -> None:
    """Audio, files, PDFs, video, server-side state and server tools raise an error naming the part."""
    with pytest.raises(UnboundableInputError) as caught:
        request_input_tokens_max({"model": "gpt-4o", **body}, api=api)  # type: ignore[arg-type]
    assert caught.value.param == param


@pytest.mark.parametrize("body", [{"messages": [{"role": "user", "content": float("inf")}]},
                                  {"messages": [{"role": "user", "content": float("nan")}]}])
def test_non_standard_json_is_refused(body: dict[str, Any]) -> None:
    """Infinity and NaN are not JSON: an error rather than a guess."""
    with pytest.raises(UnboundableInputError, match="JSON"):
        request_input_tokens_max(body, api="chat")


def test_deep_nesting_is_refused_not_a_crash() -> None:
    """A body nested deeper than the interpreter can walk is a clear error, not a RecursionError."""
    deep: Any = "x"
    for _ in range(100_000):
        deep = [deep]
    with pytest.raises(UnboundableInputError, match="nested"):
        request_input_tokens_max({"messages": [{"role": "user", "content": deep}]}, api="chat")


def test_unknown_api_is_refused() -> None:
    """An API name outside the documented set is a ValueError naming the choices."""
    with pytest.raises(ValueError, match="chat, responses"):
        request_input_tokens_max({}, api="graphql")  # type: ignore[arg-type]


def test_prediction_is_bounded_for_the_output_side() -> None:
    """Rejected prediction tokens bill as output, so the prediction's bytes are offered as an output bound."""
    text = PAYLOADS["dense"]
    assert prediction_tokens_max({"prediction": {"type": "content", "content": text}}) >= _billed_tokens(text, text)
    assert prediction_tokens_max({}) == 0


def test_legacy_bound_counts_function_call_arguments() -> None:
    """The old messages-only bound now also counts any other message field, e.g. function_call.arguments."""
    text = PAYLOADS["prose"]
    messages = [USER, {"role": "assistant", "content": None, "function_call": {"name": "f", "arguments": text}}]
    assert input_tokens_upper_bound(messages) >= len(text.encode())


# --- monotonicity ----------------------------------------------------------------------------------

_text = st.text(max_size=40)
_json: st.SearchStrategy[Any] = st.recursive(
    st.none() | st.booleans() | st.integers() | _text,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(_text, children, max_size=4), max_leaves=12)


def _grow(value: Any, path: list[int], extra: str) -> Any:
    """``value`` with ``extra`` appended to one string leaf, or added as a new leaf."""
    if isinstance(value, str):
        return value + extra
    if isinstance(value, dict) and value:
        keys = sorted(value)
        key = keys[path[0] % len(keys)] if path else keys[0]
        return {**value, key: _grow(value[key], path[1:], extra)}
    if isinstance(value, list) and value:
        index = path[0] % len(value) if path else 0
        return [*value[:index], _grow(value[index], path[1:], extra), *value[index + 1:]]
    if isinstance(value, dict):
        return {**value, "grown": extra}
    if isinstance(value, list):
        return [*value, extra]
    return [value, extra]


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(APIS), st.dictionaries(st.sampled_from(["messages", "input", "system", "prompt", "tools",
                                                              "functions", "x_field", "suffix", "instructions"]),
                                              _json, min_size=1),
       st.lists(st.integers(0, 10), max_size=6), st.text(min_size=1, max_size=20))
def test_the_bound_never_decreases_when_a_field_grows(api: str, body: dict[str, Any], path: list[int],
                                                      extra: str) -> None:
    """Appending text anywhere in a request never lowers its bound."""
    body = {"model": "gpt-4o", **body}
    try:
        before = request_input_tokens_max(body, api=api)  # type: ignore[arg-type]
        grown = _grow({k: v for k, v in body.items() if k != "model"}, path, extra)
        after = request_input_tokens_max({**body, **grown}, api=api)  # type: ignore[arg-type]
    except UnboundableInputError:
        return
    assert after >= before


_PART_TYPES = ["text", "image_url", "input_image", "image", "computer_screenshot", "document", "input_audio", "file",
               "video_url", "item_reference", "tool_result", "input_text", "message"]
_parts: st.SearchStrategy[Any] = st.recursive(
    st.none() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | _text
    | st.sampled_from(["data:image/png;base64,iVBORw0KGgo=", "data:image/jpeg;base64,/9j/4AAQ", "\ud800"]),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(
        st.sampled_from(["type", "image_url", "url", "detail", "source", "data", "text", "content", "file_id"]),
        children | st.sampled_from(_PART_TYPES), max_size=5),
    max_leaves=20)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(APIS), st.dictionaries(st.sampled_from(["messages", "input", "system", "prompt", "tools"]),
                                              _parts, max_size=3), st.sampled_from(["gpt-4o", "o3", "x", ""]))
@example("chat", {"tools": [{"type": []}]}, "gpt-4o")
@example("messages", {"messages": [{"type": "document", "source": {"type": ["text"]}}]}, "x")
def test_any_body_is_bounded_or_refused_by_name(api: str, body: dict[str, Any], model: str) -> None:
    """Whatever a body holds, the bound is a non-negative int or an UnboundableInputError; nothing else escapes."""
    try:
        bound = request_input_tokens_max({"model": model, **body}, api=api)  # type: ignore[arg-type]
    except UnboundableInputError as exc:
        assert isinstance(exc.param, str)
        return
    assert isinstance(bound, int) and bound >= 0


def test_claude_behind_an_openai_shaped_api_pays_the_tool_system_prompt() -> None:
    """Tools sent to a Claude model through a chat-shaped proxy still reserve Anthropic's tool system prompt."""
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    body = {"messages": [USER], "tools": tools}
    claude = request_input_tokens_max({"model": "anthropic/claude-sonnet-4-5", **body}, api="chat")
    other = request_input_tokens_max({"model": "gpt-4o", **body}, api="chat")
    assert claude - other >= 530  # Anthropic's largest documented tool-use system prompt
