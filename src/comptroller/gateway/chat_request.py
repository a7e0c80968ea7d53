"""Parse and check a ``POST /v1/chat/completions`` body before anything is reserved.

Only what the control plane needs is checked (OpenAI API reference, "Create chat
completion"): ``model`` a non-empty string; ``messages`` a non-empty list of objects
with a string ``role`` and ``content`` a string, a list of parts or null; ``stream`` a
boolean; ``max_tokens`` / ``max_completion_tokens`` a positive integer; ``n`` absent or
1 (several choices would multiply the output beyond the reserved bound); ``stream_options``
an object. Every other field goes upstream untouched. Each failure is a 400 naming the
parameter; the body must be UTF-8 JSON no larger than the configured limit.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from comptroller.domain.defenses.similarity import fingerprint
from comptroller.domain.tokens import input_tokens_upper_bound
from comptroller.gateway.errors import GatewayError

__all__ = ["ChatRequest", "parse_chat_request"]


def _bad(message: str, param: str | None, code: str = "invalid_request") -> GatewayError:
    return GatewayError(400, message, code=code, param=param)


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """A checked chat request.

    Attributes:
        body: the parsed JSON object (forwarded upstream with the output bound set).
        model: the requested model.
        stream: True for an SSE stream.
        max_tokens: the requested output limit, if any (the smaller of ``max_completion_tokens``
            and ``max_tokens`` when both are sent).
        input_tokens_max: an upper bound on the input tokens (:func:`input_tokens_upper_bound`).
        include_usage: the client asked for the usage chunk (``stream_options.include_usage``).
    """

    body: dict[str, Any]
    model: str
    stream: bool
    max_tokens: int | None
    input_tokens_max: int
    include_usage: bool

    def fingerprint(self) -> str:
        """The request's identity for the same-request loop detector."""
        return fingerprint(self.model, self.body["messages"])

    def last_text(self) -> str | None:
        """The text of the last message (what the agent adds this turn), or None if it has none."""
        return _text(self.body["messages"][-1])

    def last_user_text(self) -> str:
        """The text of the last ``user`` message ("" if none): what a cascade's gates and rules read."""
        for message in reversed(self.body["messages"]):
            if message.get("role") == "user":
                return _text(message) or ""
        return ""

    def response_schema(self) -> dict[str, Any] | None:
        """The JSON schema of ``response_format`` (``{"type": "json_schema", "json_schema": {"schema":
        {...}}}``, OpenAI's Structured Outputs), or None when the request has none."""
        response_format = self.body.get("response_format")
        if not isinstance(response_format, dict) or response_format.get("type") != "json_schema":
            return None
        spec = response_format.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        return schema if isinstance(schema, dict) else None


def _text(message: Mapping[str, Any]) -> str | None:
    """A message's text: its string content, or its text parts joined by newlines (None: no text)."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [str(p.get("text", "")) for p in content if isinstance(p, Mapping) and p.get("type") == "text"]
        return "\n".join(parts) or None
    return None


def _positive_int(body: Mapping[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if type(value) is not int or value < 1:
        raise _bad(f"{name} must be an integer >= 1, got {value!r}", name)
    return value


def _check_messages(messages: Any) -> list[Mapping[str, Any]]:
    if not isinstance(messages, list) or not messages:
        raise _bad("messages must be a non-empty array of message objects", "messages")
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise _bad(f"messages[{i}] must be an object, got {type(message).__name__}", f"messages[{i}]")
        if not isinstance(message.get("role"), str):
            raise _bad(f"messages[{i}].role must be a string", f"messages[{i}].role")
        content = message.get("content")
        if content is not None and not isinstance(content, str | list):
            raise _bad(f"messages[{i}].content must be a string, an array of parts or null, "
                       f"got {type(content).__name__}", f"messages[{i}].content")
    return messages


def _decode(raw: bytes) -> dict[str, Any]:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _bad(f"the request body is not valid UTF-8 (byte {exc.start}); send UTF-8 JSON", None,
                   "invalid_encoding") from None
    try:
        body = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _bad(f"the request body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}",
                   None, "invalid_json") from None
    if not isinstance(body, dict):
        raise _bad(f"the request body must be a JSON object, got {type(body).__name__}", None, "invalid_json")
    return body


def parse_chat_request(raw: bytes) -> ChatRequest:
    """Parse and check a chat completion request body.

    Raises:
        GatewayError: 400 naming the parameter at fault.
    """
    body = _decode(raw)
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise _bad("model must be a non-empty string naming a model", "model")
    messages = _check_messages(body.get("messages"))
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise _bad(f"stream must be true or false, got {stream!r}", "stream")
    n = body.get("n")
    if n is not None and (type(n) is not int or n != 1):
        raise _bad(f"n must be 1 (the gateway reserves one choice's output), got {n!r}", "n")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise _bad("stream_options must be an object", "stream_options")
    limits = [v for v in (_positive_int(body, "max_completion_tokens"), _positive_int(body, "max_tokens"))
              if v is not None]
    try:
        input_max = input_tokens_upper_bound(messages, tools=body.get("tools"))
    except (ValueError, TypeError) as exc:
        raise _bad(str(exc), "messages") from None
    return ChatRequest(body=body, model=model, stream=stream, max_tokens=min(limits) if limits else None,
                       input_tokens_max=input_max, include_usage=bool(options and options.get("include_usage")))
