"""The adapter seam: what one provider API tells the metered pipeline, and nothing else.

An API adapter (:class:`Api`) says, for its requests and answers:

* how to parse and check a body (:meth:`Api.parse`) into an :class:`ApiRequest`: the model,
  an upper bound on the input tokens, the requested output bound, how many outputs the
  call generates (OpenAI ``n``), whether it streams, and what the loop detectors read;
* how to set the reserved output bound in the body sent upstream (:meth:`Api.forward_body`);
* how to read usage (and the model served) from a whole answer (:meth:`Api.usage`) and from a
  stream's events (:meth:`Api.tally`, a :class:`StreamTally`);
* its error shape, its upstream path and its provider family.

Everything else (authentication, attribution, admission, forwarding, settling, the exit
table) is :mod:`comptroller.gateway.apis.pipeline`'s, in one place. A new API is one module.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

import orjson

from comptroller.domain.tokens import Api as ApiShape
from comptroller.domain.tokens import UnboundableInputError, request_input_tokens_max
from comptroller.domain.usage import Usage
from comptroller.gateway.config import ProviderConfig
from comptroller.gateway.errors import ErrorShape, GatewayError

__all__ = ["Api", "ApiRequest", "Family", "StreamTally", "bad_request", "include_usage_flag", "input_bound",
           "json_or_none", "message_text", "positive_int", "require_model", "stream_flag"]

_TEXT_PARTS = frozenset({"text", "input_text", "output_text"})


class Family(StrEnum):
    """A provider API family: which upstreams an API may go to (no translation between families)."""

    OPENAI = "openai"
    ANTHROPIC = "anthropic"


@dataclass(frozen=True, slots=True)
class ApiRequest:
    """A checked request, whatever its API.

    Attributes:
        body: the parsed JSON object (forwarded upstream with the output bound set).
        model: the requested model.
        stream: True for an SSE stream.
        max_tokens: the requested output limit per output, if any (None: the agent's cap applies).
        input_tokens_max: an upper bound on the input tokens.
        choices: outputs the call generates (``n``): the output bound is reserved this many times.
        output_tokens_extra: output tokens billed beyond the bound sent upstream (a Predicted
            Output's rejected tokens), reserved on top.
        fingerprint: the request's identity for the same-request loop detector (None: skipped).
        text: what the agent adds this turn (None: the text detectors skip the call).
        include_usage: a chat stream's client asked for the usage chunk.
    """

    body: dict[str, Any]
    model: str
    stream: bool
    max_tokens: int | None
    input_tokens_max: int
    choices: int = 1
    output_tokens_extra: int = 0
    fingerprint: str | None = None
    text: str | None = None
    include_usage: bool = True


class StreamTally(Protocol):
    """What a stream has generated so far, read event by event.

    Attributes:
        served_model: the model the provider says it serves, once seen.
    """

    served_model: str | None

    @property
    def usage(self) -> Usage | None:
        """The usage reported so far (None: not yet)."""
        ...

    def observe(self, event: str | None, data: dict[str, Any]) -> bool:
        """Read one event (its SSE ``event:`` name, if any, and its JSON data); False: do not forward it."""
        ...

    def final(self, event: str | None, data: dict[str, Any] | None) -> bool:
        """True for the event that ends the stream (settle before forwarding it); ``data`` None: ``[DONE]``."""
        ...

    def output_tokens_seen(self) -> int:
        """An upper bound on the output tokens generated so far (UTF-8 bytes of the text, or events)."""
        ...


class Api(Protocol):
    """One provider API (see the module docstring).

    Attributes:
        name: the endpoint label in metrics (``chat``, ``responses``...).
        path: the upstream path after the provider's ``base_url`` (``/chat/completions``).
        family: the provider family it may be sent to.
        shape: the error body shape.
    """

    name: str
    path: str
    family: Family
    shape: ErrorShape

    def parse(self, body: dict[str, Any], raw_bytes: int) -> ApiRequest:
        """Check a body (strict JSON already decoded; ``raw_bytes`` its size) before anything is reserved.

        Raises:
            GatewayError: 400 naming the field at fault.
        """
        ...

    def forward_body(self, request: ApiRequest, output_tokens_max: int, provider: ProviderConfig) -> dict[str, Any]:
        """The body sent upstream: the client's, with the reserved output bound (per output) set."""
        ...

    def usage(self, answer: dict[str, Any]) -> Usage | None:
        """The usage of a whole answer, or None when absent or malformed."""
        ...

    def tally(self, request: ApiRequest) -> StreamTally:
        """A fresh tally for one stream of ``request``."""
        ...


def json_or_none(raw: bytes | str) -> Any:
    """A provider's JSON (a whole answer or one stream event's data), or None when it is not JSON.

    ``orjson`` first (the hot path: every answer and every stream event is read for its usage);
    what it refuses (``NaN``, integers beyond 64 bits...) is read by ``json`` as before.
    """
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        return None


def bad_request(message: str, param: str | None, code: str = "invalid_request") -> GatewayError:
    """A 400 naming the parameter at fault."""
    return GatewayError(400, message, code=code, param=param)


def require_model(body: dict[str, Any]) -> str:
    """``model``: a non-empty string.

    Raises:
        GatewayError: 400 on ``model``.
    """
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise bad_request("model must be a non-empty string naming a model", "model")
    return model


def stream_flag(body: dict[str, Any]) -> bool:
    """``stream``: absent or a boolean.

    Raises:
        GatewayError: 400 on ``stream``.
    """
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise bad_request(f"stream must be true or false, got {stream!r}", "stream")
    return stream


def include_usage_flag(body: dict[str, Any]) -> bool:
    """``stream_options.include_usage`` as the client asked (``stream_options`` absent or an object).

    Raises:
        GatewayError: 400 on ``stream_options``.
    """
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise bad_request("stream_options must be an object", "stream_options")
    return bool(options and options.get("include_usage"))


def positive_int(body: dict[str, Any], name: str) -> int | None:
    """An optional integer field >= 1.

    Raises:
        GatewayError: 400 on ``name``.
    """
    value = body.get(name)
    if value is None:
        return None
    if type(value) is not int or value < 1:
        raise bad_request(f"{name} must be an integer >= 1, got {value!r}", name)
    return value


def input_bound(body: dict[str, Any], api: ApiShape) -> int:
    """:func:`~comptroller.domain.tokens.request_input_tokens_max` of a body, its refusals as a 400.

    Raises:
        GatewayError: 400 ``unsupported_content`` naming the part no documented rule bounds.
    """
    try:
        return request_input_tokens_max(body, api=api)
    except UnboundableInputError as exc:
        raise bad_request(str(exc), exc.param or None, "unsupported_content") from None


def message_text(message: Mapping[str, Any]) -> str | None:
    """A message's or input item's text: its string content, or its text parts joined by newlines."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [str(p.get("text", "")) for p in content if isinstance(p, Mapping) and p.get("type") in _TEXT_PARTS]
        return "\n".join(parts) or None
    return None
