"""OpenAI legacy Completions, ``POST /v1/completions`` (API reference, "Completions").

Checked: ``model``; ``prompt`` a string, an array of strings, an array of token ids or an
array of such arrays (required here: OpenAI's default ``<|endoftext|>`` prompt is no use to an
agent); ``max_tokens``, ``n`` and ``best_of`` integers >= 1; ``stream`` a boolean. OpenAI
generates ``best_of`` completions server-side and bills them all ("best_of ... can quickly
consume your token quota"), so the output bound is reserved max(n, best_of) times. The bound
goes upstream in ``max_tokens``; streams force ``stream_options.include_usage`` (the usage
chunk reaches the client only if it asked). Usage is the chat shape.
"""

from __future__ import annotations

from typing import Any

from comptroller.domain.defenses.similarity import fingerprint
from comptroller.domain.usage import Usage, from_openai_usage
from comptroller.gateway.apis.base import (
    ApiRequest,
    Family,
    bad_request,
    include_usage_flag,
    input_bound,
    positive_int,
    require_model,
    stream_flag,
)
from comptroller.gateway.config import ProviderConfig
from comptroller.gateway.errors import ErrorShape

__all__ = ["CompletionsApi"]


def _prompt(value: Any) -> str | None:
    """The prompt's text for the loop detectors (None for token ids); raises on a bad prompt."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value:
        if all(isinstance(v, str) for v in value):
            return "\n".join(value)
        if all(type(v) is int for v in value) or all(isinstance(v, list) and all(type(t) is int for t in v)
                                                     for v in value):
            return None
    raise bad_request("prompt is required: a string, an array of strings, an array of token ids or an array of "
                      "token-id arrays", "prompt")


class _CompletionsTally:
    """What a completions stream has generated so far."""

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
            if isinstance(choice, dict) and isinstance(choice.get("text"), str):
                self.chunks += 1
                self.text_bytes += len(choice["text"].encode("utf-8"))
        return self.include_usage or bool(data.get("choices")) or not data.get("usage")

    def final(self, event: str | None, data: dict[str, Any] | None) -> bool:
        return data is None  # data: [DONE]

    def output_tokens_seen(self) -> int:
        return max(self.chunks, self.text_bytes)


class CompletionsApi:
    """The legacy completions adapter (see the module docstring)."""

    name = "completions"
    path = "/completions"
    family = Family.OPENAI
    shape = ErrorShape.OPENAI

    def parse(self, body: dict[str, Any], raw_bytes: int) -> ApiRequest:
        """Check a completions body.

        Raises:
            GatewayError: 400 naming the parameter at fault.
        """
        model = require_model(body)
        text = _prompt(body.get("prompt"))
        stream = stream_flag(body)
        include_usage = include_usage_flag(body)
        choices = max(positive_int(body, "n") or 1, positive_int(body, "best_of") or 1)
        return ApiRequest(body=body, model=model, stream=stream, max_tokens=positive_int(body, "max_tokens"),
                          input_tokens_max=input_bound(body, "completions"), choices=choices,
                          fingerprint=fingerprint(model, [{"role": "user", "content": text or ""}]) if text else None,
                          text=text, include_usage=include_usage)

    def forward_body(self, request: ApiRequest, output_tokens_max: int, provider: ProviderConfig) -> dict[str, Any]:
        """The client's body with ``max_tokens`` set to the reserved bound (per completion)."""
        body = {**request.body, "max_tokens": output_tokens_max}
        if request.stream:
            body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
        return body

    def usage(self, answer: dict[str, Any]) -> Usage | None:
        """``usage`` of a completion."""
        return from_openai_usage(answer.get("usage"))

    def tally(self, request: ApiRequest) -> _CompletionsTally:
        """A completions stream's tally."""
        return _CompletionsTally(request.include_usage)
