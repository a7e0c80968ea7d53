"""OpenAI Chat Completions, ``POST /v1/chat/completions`` (API reference, "Create chat completion").

Checked: ``model``; ``messages`` a non-empty list of objects with a string ``role`` and
``content`` a string, a list of parts or null; ``stream`` a boolean; ``max_tokens`` /
``max_completion_tokens`` / ``n`` integers >= 1; ``stream_options`` an object. Every other
field goes upstream untouched and counts in the input bound
(:func:`~comptroller.domain.tokens.request_input_tokens_max`).

``n > 1`` asks for n choices: the ceiling is input + n x output bound, and each choice is
capped at the output bound. A ``prediction`` (Predicted Outputs) is reserved as output too
(:func:`~comptroller.domain.tokens.prediction_tokens_max`): its rejected tokens are billed as
completion tokens beyond ``max_tokens``. The bound goes upstream in every output-limit field the client
sent, else in ``max_completion_tokens`` for models that reject ``max_tokens`` (OpenAI's
reasoning models: ``o1``, ``o3``, ``o4-mini``, ``gpt-5``; API reference: "max_tokens is not
compatible with o-series models") or the provider's ``max_tokens_field``. Streams force
``stream_options.include_usage`` upstream; the usage chunk reaches the client only if it
asked for it.
"""

from __future__ import annotations

import re
from typing import Any

from comptroller.domain.defenses.similarity import fingerprint
from comptroller.domain.tokens import prediction_tokens_max
from comptroller.domain.usage import Usage, from_openai_usage
from comptroller.gateway.apis.base import (
    ApiRequest,
    Family,
    bad_request,
    include_usage_flag,
    input_bound,
    message_text,
    positive_int,
    require_model,
    stream_flag,
)
from comptroller.gateway.config import ProviderConfig
from comptroller.gateway.errors import ErrorShape

__all__ = ["ChatApi", "last_user_text", "response_schema"]

COMPLETION_TOKENS_MODELS = re.compile(r"^(openai/)?(o\d|gpt-5)")
"""Models that take only ``max_completion_tokens``."""


def last_user_text(request: ApiRequest) -> str:
    """The text of the last ``user`` message ("" if none): what a cascade's gates and rules read."""
    for message in reversed(request.body["messages"]):
        if message.get("role") == "user":
            return message_text(message) or ""
    return ""


def response_schema(request: ApiRequest) -> dict[str, Any] | None:
    """The JSON schema of ``response_format`` (OpenAI's Structured Outputs), or None."""
    response_format = request.body.get("response_format")
    if not isinstance(response_format, dict) or response_format.get("type") != "json_schema":
        return None
    spec = response_format.get("json_schema")
    schema = spec.get("schema") if isinstance(spec, dict) else None
    return schema if isinstance(schema, dict) else None


def _check_messages(messages: Any) -> list[dict[str, Any]]:
    if not isinstance(messages, list) or not messages:
        raise bad_request("messages must be a non-empty array of message objects", "messages")
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise bad_request(f"messages[{i}] must be an object, got {type(message).__name__}", f"messages[{i}]")
        if not isinstance(message.get("role"), str):
            raise bad_request(f"messages[{i}].role must be a string", f"messages[{i}].role")
        content = message.get("content")
        if content is not None and not isinstance(content, str | list):
            raise bad_request(f"messages[{i}].content must be a string, an array of parts or null, "
                              f"got {type(content).__name__}", f"messages[{i}].content")
    return messages


class _ChatTally:
    """What a chat stream has generated so far."""

    def __init__(self, include_usage: bool) -> None:
        self.include_usage = include_usage
        self.usage: Usage | None = None
        self.served_model: str | None = None
        self.chunks = 0
        self.text_bytes = 0

    def observe(self, event: str | None, data: dict[str, Any]) -> bool:
        usage = from_openai_usage(data.get("usage"))
        if usage is not None:
            self.usage = usage
        if isinstance(data.get("model"), str):
            self.served_model = data["model"]
        for choice in data.get("choices") or ():
            delta = choice.get("delta") if isinstance(choice, dict) else None
            if not isinstance(delta, dict):
                continue
            self.chunks += 1
            for name in ("content", "reasoning_content", "refusal"):
                if isinstance(delta.get(name), str):
                    self.text_bytes += len(delta[name].encode("utf-8"))
            for call in delta.get("tool_calls") or ():
                arguments = (call.get("function") or {}).get("arguments") if isinstance(call, dict) else None
                if isinstance(arguments, str):
                    self.text_bytes += len(arguments.encode("utf-8")) + 8
        return self.include_usage or bool(data.get("choices")) or not data.get("usage")

    def final(self, event: str | None, data: dict[str, Any] | None) -> bool:
        return data is None  # data: [DONE]

    def output_tokens_seen(self) -> int:
        return max(self.chunks, self.text_bytes)


class ChatApi:
    """The Chat Completions adapter (see the module docstring)."""

    name = "chat"
    path = "/chat/completions"
    family = Family.OPENAI
    shape = ErrorShape.OPENAI

    def parse(self, body: dict[str, Any], raw_bytes: int) -> ApiRequest:
        """Check a chat completion body.

        Raises:
            GatewayError: 400 naming the parameter at fault.
        """
        model = require_model(body)
        messages = _check_messages(body.get("messages"))
        stream = stream_flag(body)
        n = positive_int(body, "n") or 1
        include_usage = include_usage_flag(body)
        limits = [v for v in (positive_int(body, "max_completion_tokens"), positive_int(body, "max_tokens"))
                  if v is not None]
        return ApiRequest(body=body, model=model, stream=stream, max_tokens=min(limits) if limits else None,
                          input_tokens_max=input_bound(body, "chat"), choices=n,
                          output_tokens_extra=prediction_tokens_max(body),
                          fingerprint=fingerprint(model, messages), text=message_text(messages[-1]),
                          include_usage=include_usage)

    def forward_body(self, request: ApiRequest, output_tokens_max: int, provider: ProviderConfig) -> dict[str, Any]:
        """The client's body with the output bound in each limit field it sent (else the model's field)."""
        body = dict(request.body)
        fields = [f for f in ("max_completion_tokens", "max_tokens") if body.get(f) is not None]
        if COMPLETION_TOKENS_MODELS.match(str(body.get("model", ""))):
            body.pop("max_tokens", None)
            fields = ["max_completion_tokens"]
        for name in fields or [provider.max_tokens_field]:
            body[name] = output_tokens_max
        if request.stream:
            body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
        return body

    def usage(self, answer: dict[str, Any]) -> Usage | None:
        """``usage`` of a chat completion."""
        return from_openai_usage(answer.get("usage"))

    def tally(self, request: ApiRequest) -> _ChatTally:
        """A chat stream's tally."""
        return _ChatTally(request.include_usage)
