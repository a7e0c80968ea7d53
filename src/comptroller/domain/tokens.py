"""Upper bounds on a request's input tokens, without a tokenizer.

No tokenizer is downloaded at run time (``tiktoken`` fetches its encodings on first use and
fails offline). The bound rests on one property of the byte-level BPE tokenizers in use
(OpenAI's cl100k/o200k, Llama 3's): every token decodes to at least one byte, so a text never
has more tokens than UTF-8 bytes (Radford et al. 2019, "Language Models are Unsupervised
Multitask Learners", section 2.2: BPE over the byte sequence, with a base vocabulary of the 256
bytes; tiktoken's ``decode_single_token_bytes`` never returns b""). Anthropic's published
tokenizer (``@anthropic-ai/tokenizer``, Claude 2) is byte-level BPE too; Claude 3 and later do
not publish theirs, so for them this is the same assumption. SentencePiece models with byte
fallback (Llama 2, Mistral) add at most one dummy-prefix token per text, inside the framing.

:func:`request_input_tokens_max` counts the **whole request**, not a list of known fields:
the UTF-8 bytes of its compact JSON serialisation (which are at least the bytes of every
string in it, and so at least its tokens), less only the top-level fields listed in
:data:`NOT_BILLED_FIELDS`, plus framing tokens. Non-text parts are handled in
:mod:`comptroller.domain.input_parts`: images by the providers' documented rules, everything
else the gateway cannot bound (audio, files, references to server-side state) refused.

Framing: OpenAI's cookbook ("How to count tokens with tiktoken") gives 3 tokens per message,
1 per name and 3 to prime the reply; function definitions add 7 + 12 per function and 3 per
property (rendered as TypeScript, whose syntax is shorter than the JSON counted here). We
allow 8 per message or input item and 8 per request, plus 32 per tool and 32 for the tool
preamble. Anthropic's tool-use system prompt costs up to 530 tokens (docs "Tool use: pricing";
we allow 600), and its client tools add fixed definitions (bash 245, text editor 700, computer
735 plus 499 of system prompt; we allow 1,536 each).

How tight it is: English averages about 4 bytes per token in cl100k, and JSON escapes add to
code (``\n``, ``\"``), so the bound is about 4x the billed count for English prose, about 5x on
ChatDev's prompts and code (BENCHMARKS.md, "Input bound"), and close to 1x for text that
tokenizes byte by byte. Near a budget's edge, a call to an OpenAI model is held on a tighter
bound instead, its plain texts counted with the model's tokenizer
(:mod:`comptroller.domain.exact_tokens`, :mod:`comptroller.engine.recount`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, Final, Literal, get_args

from comptroller.domain.input_parts import UnboundableInputError, parts_adjustment, refuse_unbounded_state

__all__ = ["APIS", "NOT_BILLED_FIELDS", "PER_MESSAGE_TOKENS", "PER_REQUEST_TOKENS", "PER_TOOL_TOKENS", "Api",
           "UnboundableInputError", "input_tokens_upper_bound", "prediction_tokens_max", "request_input_tokens_max"]

Api = Literal["chat", "responses", "messages", "embeddings", "completions"]
"""The request shapes: OpenAI ``/v1/chat/completions``, ``/v1/responses``, ``/v1/embeddings``,
``/v1/completions``, and Anthropic ``/v1/messages``."""
APIS: Final[tuple[str, ...]] = get_args(Api)

PER_MESSAGE_TOKENS = 8
PER_REQUEST_TOKENS = 8
PER_TOOL_TOKENS = 32
TOOLS_PREAMBLE_TOKENS = 32
ANTHROPIC_TOOLS_SYSTEM_TOKENS = 600
ANTHROPIC_CLIENT_TOOL_TOKENS = 1536

NOT_BILLED_FIELDS: Final[frozenset[str]] = frozenset({
    # routing and transport: name the model and the response channel, never enter the prompt
    "model", "stream", "stream_options", "background", "service_tier", "store",
    # output limits and sampling: numbers read by the decoder, not tokens of the context
    "max_tokens", "max_completion_tokens", "max_output_tokens", "temperature", "top_p", "top_k", "n",
    "seed", "presence_penalty", "frequency_penalty", "logit_bias", "logprobs", "top_logprobs", "best_of",
    # bookkeeping the providers document as stored or used for abuse monitoring only
    "metadata", "user", "safety_identifier", "prompt_cache_key", "prompt_cache_retention",
    # embeddings output format
    "encoding_format", "dimensions",
})
"""Top-level fields left out of the byte count. Each is documented by its provider as a
control of routing, output length, sampling or bookkeeping, none as text given to the model.
Every other field (known or not) is counted."""

# The list of messages or items framed one by one, per API.
_ITEM_FIELDS: Final[Mapping[str, tuple[str, ...]]] = {
    "chat": ("messages",), "responses": ("input",), "messages": ("messages", "system"),
    "embeddings": ("input",), "completions": ("prompt",),
}
_ANTHROPIC_CLIENT_TOOLS = ("bash_", "text_editor_", "computer_", "memory_")


def _json_text(value: Any) -> str:
    try:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False, default=_plain)
    except RecursionError:
        raise UnboundableInputError("the request is nested too deeply to bound", param="") from None
    except ValueError as exc:  # NaN / Infinity
        if isinstance(exc, UnboundableInputError):
            raise
        raise UnboundableInputError(f"the request is not standard JSON: {exc}", param="") from None


def _utf8_bytes(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


def _plain(value: Any) -> Any:
    dump = getattr(value, "model_dump", None)  # pydantic models (SDK message objects)
    if callable(dump):
        return dump(mode="json", exclude_none=True)
    raise UnboundableInputError(f"cannot bound a request field of type {type(value).__name__}; "
                                "send JSON values (str, number, list, object)", param="")


def _items(value: Any) -> int:
    """Messages, input items or prompts framed one by one (a token-id list is one prompt)."""
    if value is None or isinstance(value, (str, int)):
        return 0 if value in (None, "") else 1
    if isinstance(value, Sequence):
        return 1 if value and all(isinstance(item, int) for item in value) else len(value)
    return 1


def _tools_tokens(body: Mapping[str, Any], api: str) -> int:
    tools = [t for field in ("tools", "functions") if isinstance(body.get(field), Sequence)
             for t in body[field] if not isinstance(t, str)]
    if not tools:
        return 0
    total = TOOLS_PREAMBLE_TOKENS + PER_TOOL_TOKENS * len(tools)
    model = body.get("model")
    if api == "messages" or (isinstance(model, str) and "claude" in model.lower()):  # also Claude behind a proxy
        total += ANTHROPIC_TOOLS_SYSTEM_TOKENS
        for tool in tools:
            kind = tool.get("type") if isinstance(tool, Mapping) else None
            if isinstance(kind, str) and kind.startswith(_ANTHROPIC_CLIENT_TOOLS):
                total += ANTHROPIC_CLIENT_TOOL_TOKENS
    return total


def request_input_tokens_max(body: Mapping[str, Any], *, api: Api) -> int:
    """An upper bound on the input tokens a provider bills for one request.

    Args:
        body: the request body as parsed JSON (a mapping of the API's fields; pydantic
            objects inside are dumped as JSON).
        api: which request shape ``body`` is (:data:`Api`): ``"chat"``, ``"responses"``,
            ``"messages"`` (Anthropic), ``"embeddings"`` or ``"completions"``.

    Returns:
        UTF-8 bytes of the compact JSON of ``body`` without :data:`NOT_BILLED_FIELDS`, with
        every image's payload replaced by its documented token bound, plus framing
        (8 per request, 8 per message or input item, tool overheads; module docstring).

    Raises:
        UnboundableInputError: (a ValueError, ``param`` names the part) for a part no
            documented rule bounds: audio, files and PDFs, server-side tools, references to
            state the provider keeps (``previous_response_id``, ``conversation``, stored
            prompts, item references), non-standard JSON (NaN, Infinity) or nesting too deep.
        ValueError: for an ``api`` not in :data:`APIS`.
    """
    if api not in APIS:
        raise ValueError(f"unknown api {api!r}; expected one of {', '.join(APIS)}")
    if not isinstance(body, Mapping):
        raise UnboundableInputError(f"the request body must be a JSON object, got {type(body).__name__}", param="")
    refuse_unbounded_state(body, api=api)
    text = _json_text({key: value for key, value in body.items() if key not in NOT_BILLED_FIELDS})
    total = PER_REQUEST_TOKENS + _utf8_bytes(text)
    total += sum(PER_MESSAGE_TOKENS * _items(body.get(field)) for field in _ITEM_FIELDS[api])
    if api == "responses" and body.get("instructions"):
        total += PER_MESSAGE_TOKENS
    total += _tools_tokens(body, api)
    model = body.get("model")
    return total + parts_adjustment(text, api=api, model=model if isinstance(model, str) else "")


def prediction_tokens_max(body: Mapping[str, Any]) -> int:
    """An upper bound on the tokens of a Chat Completions ``prediction`` (Predicted Outputs).

    OpenAI bills rejected prediction tokens at the *output* rate (guide "Predicted Outputs"),
    so an adapter adds this to the output bound; the prediction is also counted as input by
    :func:`request_input_tokens_max` (an over-count, never an under-count).

    Returns:
        The UTF-8 bytes of the prediction's JSON, or 0 without a prediction.
    """
    prediction = body.get("prediction")
    return _utf8_bytes(_json_text(prediction)) if prediction else 0


def _content_bytes(content: Any) -> int:
    if content is None:
        return 0
    if isinstance(content, str):
        return len(content.encode("utf-8"))
    if isinstance(content, Sequence):
        total = 0
        for part in content:
            if not isinstance(part, Mapping) or part.get("type") != "text":
                kind = part.get("type") if isinstance(part, Mapping) else type(part).__name__
                raise ValueError(
                    f"cannot bound the tokens of a {kind!r} content part without its provider's rules; "
                    "only text parts are supported"
                )
            total += len(str(part.get("text", "")).encode("utf-8"))
        return total
    raise ValueError(f"message content must be a string or a list of parts, got {type(content).__name__}")


_COUNTED_MESSAGE_KEYS = frozenset({"content", "role", "name"})


def input_tokens_upper_bound(messages: Sequence[Mapping[str, Any]], *, tools: Any = None) -> int:
    """An upper bound on the input tokens of a chat request's messages and tools (legacy).

    Prefer :func:`request_input_tokens_max`, which counts every field of the request
    (``functions``, ``response_format``, ``prediction``, images...). This one counts only
    the messages and ``tools`` it is given.

    Args:
        messages: OpenAI-style messages (``role``, ``content`` as str or text parts, optional
            ``name``; every other field, e.g. ``tool_calls`` or ``function_call``, counts as
            its JSON bytes).
        tools: the request's tool definitions, counted as their JSON bytes.

    Returns:
        UTF-8 bytes of every text, name and other message field's JSON, plus 8 tokens per
        message and 8 per request.

    Raises:
        ValueError: for a content part that is not text (images, audio).
    """
    total = PER_REQUEST_TOKENS
    for message in messages:
        total += PER_MESSAGE_TOKENS + _content_bytes(message.get("content"))
        total += len(str(message.get("role", "")).encode("utf-8"))
        total += len(str(message.get("name", "")).encode("utf-8"))
        for key, value in message.items():
            if key not in _COUNTED_MESSAGE_KEYS and value:
                total += len(json.dumps(value).encode("utf-8"))
    if tools:
        total += len(json.dumps(tools).encode("utf-8"))
    return total
