"""Wrap an ``openai.OpenAI`` or ``openai.AsyncOpenAI`` client: every method that can cost money is metered.

Metered (see :mod:`comptroller.sdk.catalog` for the free and refused lists), sync and async:

* Chat Completions ``chat.completions.create/parse/stream`` (and ``beta.chat.completions.*``):
  the output limit (``max_completion_tokens`` / ``max_tokens``, whichever is sent, else
  ``max_tokens``, which every OpenAI-compatible server knows; reasoning models need the
  caller to send ``max_completion_tokens``) lowered to the admitted bound; ``n > 1`` reserves n outputs and sends each
  its share. Usage: ``prompt_tokens`` includes ``prompt_tokens_details.cached_tokens``
  (OpenAI API reference, "Prompt caching"); ``completion_tokens`` includes reasoning tokens.
  A stream is sent with ``stream_options.include_usage`` and settled from its usage chunk,
  which reaches the caller only if they asked for it.
* Responses ``responses.create/parse/stream``: ``max_output_tokens``. Usage (API
  reference, "The response object"): ``input_tokens`` includes
  ``input_tokens_details.cached_tokens``; ``output_tokens`` includes
  ``output_tokens_details.reasoning_tokens``. A stream settles from the response in
  ``response.completed`` (or ``response.incomplete`` / ``response.failed``, billed too).
  ``background: true`` and resuming a stored response raise
  :class:`~comptroller.sdk.errors.UnmeteredCallError` (billed after the call returns).
  Server-side tools (web search, file search, code interpreter, MCP...) and references to
  state the provider keeps (``previous_response_id``, ``conversation``) are refused by the
  input bound (:func:`~comptroller.domain.tokens.request_input_tokens_max`, a ``ValueError``
  naming the part): their billed input cannot be bounded.
* Embeddings ``embeddings.create``: input only (``usage.prompt_tokens``), no output.
* Legacy completions ``completions.create``: like chat (``max_tokens``, ``n``).

A call cut short settles the input bound and an upper bound on the output seen; an
exception before a response releases the hold.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from comptroller.domain.ledger import Reservation
from comptroller.domain.tokens import Api as TokensApi
from comptroller.domain.tokens import request_input_tokens_max
from comptroller.domain.usage import Usage, from_openai_usage, from_responses_usage
from comptroller.engine import Admission
from comptroller.sdk.context import CallContext
from comptroller.sdk.errors import UnmeteredCallError
from comptroller.sdk.governed import Governed, Rules, govern
from comptroller.sdk.metered import Api, Meter, Request, Shape, Tally, Wiring, bind, bound, cap_output

__all__ = ["as_dict", "openai_usage", "responses_usage", "wrap_openai"]

def as_dict(value: Any) -> Any:
    """A pydantic model (the openai types) as plain data; anything else unchanged."""
    dump = getattr(value, "model_dump", None)
    return dump() if callable(dump) else value


def openai_usage(value: Any) -> Usage | None:
    """Usage from a Chat Completions / embeddings ``usage`` (object or dict), or None when absent or malformed."""
    data = as_dict(value)
    if isinstance(data, Mapping) and data.get("completion_tokens") is None and "prompt_tokens" in data:
        data = {**data, "completion_tokens": 0}  # embeddings: input only
    return from_openai_usage(data)


def responses_usage(value: Any) -> Usage | None:
    """Usage from a Responses ``usage`` (object or dict), or None when absent or malformed."""
    return from_responses_usage(as_dict(value))


def _limit(body: Mapping[str, Any], fields: tuple[str, ...]) -> int | None:
    limits = [int(body[f]) for f in fields if body.get(f) is not None]
    return min(limits) if limits else None


class _ChatTally:
    """Usage and output seen of a Chat Completions (or legacy completions) stream."""

    def __init__(self, show_usage: bool) -> None:
        self.show_usage = show_usage
        self.usage_seen: Usage | None = None
        self.output_seen = 0
        self.served_model: str | None = None

    def observe(self, event: Any) -> bool:
        chunk = event.chunk if getattr(event, "type", None) == "chunk" else event  # the helper's chunk event
        model = getattr(chunk, "model", None)
        if isinstance(model, str) and model:
            self.served_model = model
        usage = openai_usage(getattr(chunk, "usage", None))
        if usage is not None:
            self.usage_seen = usage
        choices = getattr(chunk, "choices", None) or []
        for choice in choices:
            data = as_dict(getattr(choice, "delta", None) or {}) or {"text": getattr(choice, "text", "")}
            text = "".join(str(data.get(k) or "") for k in ("content", "reasoning_content", "refusal", "text"))
            text += "".join(str((c.get("function") or {}).get("arguments") or "") for c in data.get("tool_calls") or [])
            self.output_seen += max(1, len(text.encode("utf-8")))
        usage_only = not choices and usage is not None and chunk is event
        return not usage_only or self.show_usage

    def usage(self, reservation: Reservation) -> Usage:
        return self.usage_seen or bound(reservation, self.output_seen)


class _Chat:
    """Chat Completions (and the legacy completions endpoint: ``prompt`` instead of ``messages``).

    Args:
        shape: ``chat`` or ``completions``.
        fields: the output-limit fields, the one to set when none is sent first.
        helper: the ``.stream(...)`` helper (always streams, so always asks for the usage chunk).
    """

    def __init__(self, shape: TokensApi, fields: tuple[str, ...], *, helper: bool = False) -> None:
        self.shape, self.fields, self.helper = shape, fields, helper

    def read(self, body: Mapping[str, Any]) -> Request:
        messages = body.get("messages")
        if messages is None:
            messages = [{"role": "user", "content": str(body.get("prompt", ""))}]
        return Request(model=body["model"], input_tokens_max=request_input_tokens_max(body, api=self.shape),
                       max_tokens=_limit(body, self.fields), choices=int(body.get("n") or 1), messages=list(messages))

    def forward(self, kwargs: dict[str, Any], admission: Admission, request: Request) -> dict[str, Any]:
        sent = cap_output(kwargs, self.fields, admission.output_tokens_max // request.choices)
        route = admission.route
        if route is not None and route.model != route.requested_model:
            sent["model"] = route.model
        if sent.get("stream") or self.helper:
            sent["stream_options"] = {**(sent.get("stream_options") or {}), "include_usage": True}
        return sent

    def usage(self, response: Any) -> Usage | None:
        return openai_usage(getattr(response, "usage", None))

    def tally(self, kwargs: Mapping[str, Any]) -> Tally:
        return _ChatTally(bool((kwargs.get("stream_options") or {}).get("include_usage")))


class _ResponsesTally:
    """Usage of a Responses stream: the response carried by its final event."""

    def __init__(self) -> None:
        self.usage_seen: Usage | None = None
        self.output_seen = 0
        self.served_model: str | None = None

    def observe(self, event: Any) -> bool:
        kind = str(getattr(event, "type", ""))
        model = getattr(getattr(event, "response", None), "model", None)
        if isinstance(model, str) and model:
            self.served_model = model
        if kind in ("response.completed", "response.incomplete", "response.failed"):
            usage = responses_usage(getattr(getattr(event, "response", None), "usage", None))
            self.usage_seen = usage or self.usage_seen
        elif kind.endswith(".delta"):
            self.output_seen += max(1, len(str(getattr(event, "delta", "") or "").encode("utf-8")))
        return True

    def usage(self, reservation: Reservation) -> Usage:
        return self.usage_seen or bound(reservation, self.output_seen)


class _Responses:
    shape: TokensApi = "responses"

    def read(self, body: Mapping[str, Any]) -> Request:
        method = "responses.stream" if body.get("response_id") else "responses.create"
        if body.get("background"):
            raise UnmeteredCallError(method, "background responses are billed after the call returns and "
                                     "comptroller cannot settle them")
        if body.get("response_id") is not None:
            raise UnmeteredCallError(method, "resuming a stored (background) response is not metered")
        given = body.get("input")
        messages = [{"role": "user", "content": given}] if isinstance(given, str) else [
            item for item in given or [] if isinstance(item, Mapping) and "role" in item]
        return Request(model=body["model"], input_tokens_max=request_input_tokens_max(body, api="responses"),
                       max_tokens=_limit(body, ("max_output_tokens",)), messages=messages)

    def forward(self, kwargs: dict[str, Any], admission: Admission, request: Request) -> dict[str, Any]:
        sent = cap_output(kwargs, ("max_output_tokens",), admission.output_tokens_max)
        route = admission.route
        if route is not None and route.model != route.requested_model:
            sent["model"] = route.model
        return sent

    def usage(self, response: Any) -> Usage | None:
        return responses_usage(getattr(response, "usage", None))

    def tally(self, kwargs: Mapping[str, Any]) -> Tally:
        return _ResponsesTally()


class _Embeddings:
    shape: TokensApi = "embeddings"

    def read(self, body: Mapping[str, Any]) -> Request:
        return Request(model=body["model"], input_tokens_max=request_input_tokens_max(body, api="embeddings"),
                       max_tokens=0)

    def forward(self, kwargs: dict[str, Any], admission: Admission, request: Request) -> dict[str, Any]:
        route = admission.route
        return {**kwargs, "model": route.model} if route is not None and route.model != route.requested_model \
            else dict(kwargs)

    def usage(self, response: Any) -> Usage | None:
        return openai_usage(getattr(response, "usage", None))

    def tally(self, kwargs: Mapping[str, Any]) -> Tally:
        raise TypeError("embeddings do not stream")


_CHAT_FIELDS = ("max_tokens", "max_completion_tokens")  # max_tokens when neither is sent (every compatible server)
_CHAT, _CHAT_STREAM = _Chat("chat", _CHAT_FIELDS), _Chat("chat", _CHAT_FIELDS, helper=True)
_METHODS: dict[str, tuple[Shape, Api]] = {
    "chat.completions.create": ("create", _CHAT), "chat.completions.parse": ("create", _CHAT),
    "chat.completions.stream": ("stream", _CHAT_STREAM),
    "beta.chat.completions.create": ("create", _CHAT), "beta.chat.completions.parse": ("create", _CHAT),
    "beta.chat.completions.stream": ("stream", _CHAT_STREAM),
    "responses.create": ("create", _Responses()), "responses.parse": ("create", _Responses()),
    "responses.stream": ("stream", _Responses()),
    "embeddings.create": ("create", _Embeddings()),
    "completions.create": ("create", _Chat("completions", ("max_tokens",))),
}
"""Every name in ``catalog.METERED["openai"]``, with its shape and API."""


def wrap_openai(client: Any, meter: Meter, context: CallContext, allow_unmetered: frozenset[str],
                extra: Mapping[str, Callable[[Callable[..., Any]], Callable[..., Any]]] | None = None) -> Governed:
    """A governed proxy of an ``openai`` client: metered methods through ``meter`` (and ``extra``: name -> wrapper,
    e.g. :mod:`.batch_methods`), the rest by the catalog."""
    wiring = Wiring(meter, context, is_async=type(client).__name__.startswith("Async"))
    metered = {name: bind(shape, api, wiring) for name, (shape, api) in _METHODS.items()} | dict(extra or {})
    return govern(client, Rules("openai", metered, allow_unmetered))
