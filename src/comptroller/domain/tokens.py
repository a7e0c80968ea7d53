"""An upper bound on a chat request's input tokens, without a tokenizer.

No tokenizer is downloaded at run time (``tiktoken`` fetches its encodings on first
use and fails offline). Instead the bound uses a property of byte-level BPE
tokenizers (OpenAI's cl100k/o200k, Llama 3, and most current models): every token
decodes to at least one byte, so a text never has more tokens than UTF-8 bytes.
Message framing adds a few tokens per message; OpenAI's cookbook ("How to count
tokens with tiktoken") gives 3 per message, 1 per name and 3 to prime the reply,
and we allow 8 per message and 8 per request to cover other chat templates.

How tight it is: English prose averages about 4 bytes per token in cl100k
(OpenAI's tokenizer guide: "one token generally corresponds to ~4 characters"),
so the bound is about 4x the real count for English and close to 1x for text that
tokenizes byte by byte (CJK, binary-like data). The recorded traces carry no text,
so replay uses their recorded ``input_tokens`` (a bound of exactly 1x).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["PER_MESSAGE_TOKENS", "PER_REQUEST_TOKENS", "input_tokens_upper_bound"]

PER_MESSAGE_TOKENS = 8
PER_REQUEST_TOKENS = 8


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


def input_tokens_upper_bound(messages: Sequence[Mapping[str, Any]], *, tools: Any = None) -> int:
    """An upper bound on the input tokens of a chat request.

    Args:
        messages: OpenAI-style messages (``role``, ``content`` as str or text parts,
            optional ``name``, ``tool_calls``).
        tools: the request's tool definitions, counted as their JSON bytes.

    Returns:
        UTF-8 bytes of every text, name and tool JSON, plus 8 tokens per message and 8
        per request.

    Raises:
        ValueError: for a content part that is not text (images, audio).
    """
    total = PER_REQUEST_TOKENS
    for message in messages:
        total += PER_MESSAGE_TOKENS + _content_bytes(message.get("content"))
        total += len(str(message.get("role", "")).encode("utf-8"))
        total += len(str(message.get("name", "")).encode("utf-8"))
        if message.get("tool_calls"):
            total += len(json.dumps(message["tool_calls"]).encode("utf-8"))
    if tools:
        total += len(json.dumps(tools).encode("utf-8"))
    return total
