"""Wrap an ``anthropic.Anthropic`` or ``anthropic.AsyncAnthropic`` client: every message goes through the engine.

Metered (see :mod:`comptroller.sdk.catalog` for the free and refused lists), sync and
async: ``messages.create/parse/stream`` and ``beta.messages.create/parse/stream``. The
required ``max_tokens`` is lowered to the admitted bound. Anthropic's ``input_tokens``
excludes cache reads and writes (docs, "Prompt caching: tracking cache performance");
:func:`~comptroller.domain.usage.from_anthropic` adds them back, so reads, 5-minute and
1-hour writes are each priced at their own rate.

A stream (``create(stream=True)`` or ``.stream(...)``) settles when it ends, is closed or
dropped: the input side from ``message_start``, the output from the last
``message_delta`` (cumulative), or, cut short before that, the input bound and an upper
bound on the output seen. Server tools billed per use (web search, code execution) raise
:class:`~comptroller.sdk.errors.UnmeteredCallError`. Message batches are metered by
:mod:`comptroller.sdk.batch_methods`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from comptroller.domain.ledger import Reservation
from comptroller.domain.tokens import Api as TokensApi
from comptroller.domain.tokens import request_input_tokens_max
from comptroller.domain.usage import Usage, from_anthropic_usage
from comptroller.engine import Admission
from comptroller.sdk.context import CallContext
from comptroller.sdk.governed import Governed, Rules, govern
from comptroller.sdk.metered import Api, Meter, Request, Shape, Tally, Wiring, bind, bound, cap_output
from comptroller.sdk.openai import as_dict

__all__ = ["anthropic_usage", "wrap_anthropic"]

def anthropic_usage(value: Any) -> Usage | None:
    """Usage from an Anthropic ``usage`` object or dict, or None when absent or malformed."""
    return from_anthropic_usage(as_dict(value))


class _Tally:
    """The usage of a message stream, assembled from its events."""

    def __init__(self) -> None:
        self.start: dict[str, Any] | None = None
        self.output_tokens: int | None = None
        self.output_seen = 0
        self.served_model: str | None = None

    def observe(self, event: Any) -> bool:
        kind = getattr(event, "type", None)
        if kind == "message_start":
            message = getattr(event, "message", None)
            self.start = dict(as_dict(getattr(message, "usage", None)) or {})
            model = getattr(message, "model", None)
            self.served_model = model if isinstance(model, str) else None
        elif kind == "message_delta":
            output = getattr(getattr(event, "usage", None), "output_tokens", None)
            if output is not None:
                self.output_tokens = int(output)
        elif kind == "content_block_delta":
            delta = getattr(event, "delta", None)
            text = next((str(getattr(delta, k)) for k in ("text", "partial_json", "thinking")
                         if getattr(delta, k, None)), "")
            self.output_seen += max(1, len(text.encode("utf-8")))
        return True

    def usage(self, reservation: Reservation) -> Usage:
        if self.start is not None and self.output_tokens is not None:
            usage = anthropic_usage({**self.start, "output_tokens": self.output_tokens})
            if usage is not None:
                return usage
        return bound(reservation, self.output_seen)


class _Messages:
    shape: TokensApi = "messages"

    def read(self, body: Mapping[str, Any]) -> Request:
        return Request(model=body["model"], input_tokens_max=request_input_tokens_max(body, api="messages"),
                       max_tokens=body.get("max_tokens"), messages=list(body["messages"]))

    def forward(self, kwargs: dict[str, Any], admission: Admission, request: Request) -> dict[str, Any]:
        sent = cap_output(kwargs, ("max_tokens",), admission.output_tokens_max)
        route = admission.route
        if route is not None and route.model != route.requested_model:
            sent["model"] = route.model
        return sent

    def usage(self, response: Any) -> Usage | None:
        return anthropic_usage(getattr(response, "usage", None))

    def tally(self, kwargs: Mapping[str, Any]) -> Tally:
        return _Tally()


_MESSAGES = _Messages()
_METHODS: dict[str, tuple[Shape, Api]] = {
    f"{prefix}messages.{verb}": ("stream" if verb == "stream" else "create", _MESSAGES)
    for prefix in ("", "beta.") for verb in ("create", "parse", "stream")
}
"""Every name in ``catalog.METERED["anthropic"]``, with its shape and API."""


def wrap_anthropic(client: Any, meter: Meter, context: CallContext, allow_unmetered: frozenset[str],
                   extra: Mapping[str, Callable[[Callable[..., Any]], Callable[..., Any]]] | None = None) -> Governed:
    """A governed proxy of an ``anthropic`` client: metered methods through ``meter`` (and ``extra``: name ->
    wrapper, e.g. :mod:`.batch_methods`), the rest by the catalog."""
    wiring = Wiring(meter, context, is_async=type(client).__name__.startswith("Async"))
    metered = {name: bind(shape, api, wiring) for name, (shape, api) in _METHODS.items()} | dict(extra or {})
    return govern(client, Rules("anthropic", metered, allow_unmetered))
