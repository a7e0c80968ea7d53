"""Anthropic Messages, ``POST /v1/messages`` (Anthropic docs, "Messages", "Streaming messages", "Prompt caching").

Checked: ``model``; ``messages`` a non-empty list of objects with a string ``role`` and
``content`` a string or a list of blocks; ``max_tokens`` an integer >= 1 (required, as
Anthropic requires it: the reserved bound replaces it upstream); ``system`` a string or a
list of blocks; ``stream`` a boolean. The key may come in ``x-api-key`` (the pipeline), and
every error and refusal has Anthropic's shape, so the ``anthropic`` client raises its own
errors. Only ``kind = "anthropic"`` providers serve it.

Usage: Anthropic's ``input_tokens`` excludes cache reads (``cache_read_input_tokens``) and
writes (``cache_creation_input_tokens``, of which ``cache_creation.ephemeral_1h_input_tokens``
at the 1-hour rate); :func:`~comptroller.domain.usage.from_anthropic` adds them back. A
stream reports the input side in ``message_start`` and the output (cumulative) in
``message_delta``; ``message_stop`` ends it.
"""

from __future__ import annotations

from typing import Any

from comptroller.domain.defenses.similarity import fingerprint
from comptroller.domain.usage import Usage, from_anthropic_usage
from comptroller.gateway.apis.base import (
    ApiRequest,
    Family,
    bad_request,
    input_bound,
    message_text,
    positive_int,
    require_model,
    stream_flag,
)
from comptroller.gateway.config import ProviderConfig
from comptroller.gateway.errors import ErrorShape

__all__ = ["MessagesApi", "anthropic_usage"]

_COUNTS = ("input_tokens", "output_tokens", "cache_read_input_tokens", "cache_creation_input_tokens")


def anthropic_usage(value: object) -> Usage | None:
    """Usage from an Anthropic ``usage`` object, or None when absent or malformed."""
    return from_anthropic_usage(value)


def _check_messages(messages: Any) -> list[dict[str, Any]]:
    if not isinstance(messages, list) or not messages:
        raise bad_request("messages must be a non-empty array of message objects", "messages")
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise bad_request(f"messages[{i}] must be an object, got {type(message).__name__}", f"messages[{i}]")
        if not isinstance(message.get("role"), str):
            raise bad_request(f"messages[{i}].role must be a string", f"messages[{i}].role")
        if not isinstance(message.get("content"), str | list):
            raise bad_request(f"messages[{i}].content must be a string or an array of content blocks",
                              f"messages[{i}].content")
    return messages


class _MessagesTally:
    """What a Messages stream has generated so far: the input side from ``message_start``, output after."""

    def __init__(self) -> None:
        self.served_model: str | None = None
        self.counts: dict[str, Any] = {}
        self.deltas = 0
        self.text_bytes = 0

    @property
    def usage(self) -> Usage | None:
        """The usage reported so far."""
        return anthropic_usage(self.counts) if self.counts else None

    def observe(self, event: str | None, data: dict[str, Any]) -> bool:
        kind = event or data.get("type")
        if kind == "message_start" and isinstance(data.get("message"), dict):
            message = data["message"]
            if isinstance(message.get("model"), str):
                self.served_model = message["model"]
            if isinstance(message.get("usage"), dict):
                self.counts.update(message["usage"])
        elif kind == "message_delta" and isinstance(data.get("usage"), dict):
            self.counts.update({k: v for k, v in data["usage"].items() if v is not None and k in (*_COUNTS,
                                                                                                   "cache_creation")})
        elif kind == "content_block_delta" and isinstance(data.get("delta"), dict):
            self.deltas += 1
            for name in ("text", "partial_json", "thinking"):
                if isinstance(data["delta"].get(name), str):
                    self.text_bytes += len(data["delta"][name].encode("utf-8"))
        return True

    def final(self, event: str | None, data: dict[str, Any] | None) -> bool:
        return (event or (data or {}).get("type")) == "message_stop"

    def output_tokens_seen(self) -> int:
        return max(self.deltas, self.text_bytes)


class MessagesApi:
    """The Messages adapter (see the module docstring)."""

    name = "messages"
    path = "/messages"
    family = Family.ANTHROPIC
    shape = ErrorShape.ANTHROPIC

    def parse(self, body: dict[str, Any], raw_bytes: int) -> ApiRequest:
        """Check a Messages body.

        Raises:
            GatewayError: 400 naming the parameter at fault.
        """
        model = require_model(body)
        messages = _check_messages(body.get("messages"))
        max_tokens = positive_int(body, "max_tokens")
        if max_tokens is None:
            raise bad_request("max_tokens is required: an integer >= 1", "max_tokens")
        system = body.get("system")
        if system is not None and not isinstance(system, str | list):
            raise bad_request("system must be a string or an array of text blocks", "system")
        return ApiRequest(body=body, model=model, stream=stream_flag(body), max_tokens=max_tokens,
                          input_tokens_max=input_bound(body, "messages"), fingerprint=fingerprint(model, messages),
                          text=message_text(messages[-1]))

    def forward_body(self, request: ApiRequest, output_tokens_max: int, provider: ProviderConfig) -> dict[str, Any]:
        """The client's body with ``max_tokens`` set to the reserved bound."""
        return {**request.body, "max_tokens": output_tokens_max}

    def usage(self, answer: dict[str, Any]) -> Usage | None:
        """``usage`` of a message."""
        return anthropic_usage(answer.get("usage"))

    def tally(self, request: ApiRequest) -> _MessagesTally:
        """A Messages stream's tally."""
        return _MessagesTally()
