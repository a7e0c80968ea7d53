"""OpenAI Responses, ``POST /v1/responses`` (API reference, "Create a model response"; "Streaming").

Checked: ``model``; ``input`` a string or a non-empty list of items; ``instructions`` a string
or null; ``stream`` a boolean; ``max_output_tokens`` an integer >= 1 (the reserved output
bound goes upstream there, reasoning included: OpenAI counts reasoning tokens in
``max_output_tokens`` and bills them as output).

Refused with 400 until the gateway can meter them: ``background: true`` (the answer and its
usage come later, to a poll the gateway does not see), server-side tools billed per call and
state kept at the provider (``previous_response_id``, ``conversation``, stored prompts: their
input is not in the request), and non-text parts the input bound cannot cover
(:func:`~comptroller.domain.tokens.request_input_tokens_max` names the part).

Usage (``response.usage``; streamed in ``response.completed``, ``response.incomplete`` or
``response.failed``): ``input_tokens`` includes ``input_tokens_details.cached_tokens``
(cache reads), ``output_tokens`` includes ``output_tokens_details.reasoning_tokens``.
"""

from __future__ import annotations

from typing import Any

from comptroller.domain.defenses.similarity import fingerprint
from comptroller.domain.usage import Usage, from_responses_usage
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

__all__ = ["ResponsesApi", "responses_usage"]

_FINAL_EVENTS = frozenset({"response.completed", "response.incomplete", "response.failed"})


def responses_usage(value: object) -> Usage | None:
    """Usage from a Responses ``usage`` object, or None when absent or malformed."""
    return from_responses_usage(value)


def _items(value: Any) -> list[dict[str, Any]]:
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if not isinstance(value, list) or not value:
        raise bad_request("input must be a string or a non-empty array of input items", "input")
    for i, item in enumerate(value):
        if not isinstance(item, dict):
            raise bad_request(f"input[{i}] must be an object, got {type(item).__name__}", f"input[{i}]")
    return value


class _ResponsesTally:
    """What a Responses stream has generated so far."""

    def __init__(self) -> None:
        self.usage: Usage | None = None
        self.served_model: str | None = None
        self.events = 0
        self.text_bytes = 0

    def observe(self, event: str | None, data: dict[str, Any]) -> bool:
        response = data.get("response")
        if isinstance(response, dict):
            if isinstance(response.get("model"), str):
                self.served_model = response["model"]
            usage = responses_usage(response.get("usage"))
            if usage is not None:
                self.usage = usage
        delta = data.get("delta")
        if isinstance(delta, str):
            self.events += 1
            self.text_bytes += len(delta.encode("utf-8"))
        return True

    def final(self, event: str | None, data: dict[str, Any] | None) -> bool:
        kind = event or (data or {}).get("type")
        return kind in _FINAL_EVENTS

    def output_tokens_seen(self) -> int:
        return max(self.events, self.text_bytes)


class ResponsesApi:
    """The Responses adapter (see the module docstring)."""

    name = "responses"
    path = "/responses"
    family = Family.OPENAI
    shape = ErrorShape.OPENAI

    def parse(self, body: dict[str, Any], raw_bytes: int) -> ApiRequest:
        """Check a Responses body.

        Raises:
            GatewayError: 400 naming the parameter at fault.
        """
        model = require_model(body)
        if "input" not in body:
            raise bad_request("input is required: a string or an array of input items", "input")
        items = _items(body["input"])
        instructions = body.get("instructions")
        if instructions is not None and not isinstance(instructions, str):
            raise bad_request("instructions must be a string or null", "instructions")
        stream = stream_flag(body)
        if body.get("background") is not None and body.get("background") is not False:
            raise bad_request("background must be false: a background response is answered later, to a poll "
                              "the gateway cannot meter; call without background", "background")
        return ApiRequest(body=body, model=model, stream=stream, max_tokens=positive_int(body, "max_output_tokens"),
                          input_tokens_max=input_bound(body, "responses"), fingerprint=fingerprint(model, items),
                          text=message_text(items[-1]))

    def forward_body(self, request: ApiRequest, output_tokens_max: int, provider: ProviderConfig) -> dict[str, Any]:
        """The client's body with ``max_output_tokens`` set to the reserved bound."""
        return {**request.body, "max_output_tokens": output_tokens_max}

    def usage(self, answer: dict[str, Any]) -> Usage | None:
        """``usage`` of a response object."""
        return responses_usage(answer.get("usage"))

    def tally(self, request: ApiRequest) -> _ResponsesTally:
        """A Responses stream's tally."""
        return _ResponsesTally()
