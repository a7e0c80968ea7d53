"""Wrap an ``anthropic.Anthropic`` or ``anthropic.AsyncAnthropic`` client: every message goes through the engine.

``client.messages.create(...)`` is admitted first (its required ``max_tokens`` is
lowered to the agent's cap when larger), then settled with the response's usage.
Anthropic's ``input_tokens`` excludes cache reads and writes (docs, "Prompt caching:
tracking cache performance"); :func:`~comptroller.domain.usage.from_anthropic` adds
them back, so reads, 5-minute and 1-hour writes are each priced at their own rate.

A stream (``stream=True``) settles when it ends, is closed or dropped: the input side
from ``message_start``, the output from the last ``message_delta`` (cumulative), or,
cut short before that, the input bound and an upper bound on the text seen.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from comptroller.domain.ledger import Reservation
from comptroller.domain.tokens import input_tokens_upper_bound
from comptroller.domain.usage import Usage, UsageError, from_anthropic
from comptroller.engine import Admission
from comptroller.sdk.governor import CallContext, Comptroller, bound
from comptroller.sdk.metered import AsyncEndpoint, Endpoint, Proxy
from comptroller.sdk.openai import as_dict

__all__ = ["anthropic_usage", "wrap_anthropic"]


def anthropic_usage(value: Any) -> Usage | None:
    """Usage from an Anthropic ``usage`` object or dict, or None when absent or malformed."""
    data = as_dict(value)
    if not isinstance(data, Mapping):
        return None
    creation = data.get("cache_creation")
    one_hour = creation.get("ephemeral_1h_input_tokens") if isinstance(creation, Mapping) else None
    try:
        return from_anthropic(input_tokens=data["input_tokens"], output_tokens=data["output_tokens"],
                              cache_read_input_tokens=data.get("cache_read_input_tokens") or 0,
                              cache_creation_input_tokens=data.get("cache_creation_input_tokens") or 0,
                              ephemeral_1h_input_tokens=one_hour or 0)
    except (KeyError, UsageError):
        return None


class _Tally:
    """The usage of a message stream, assembled from its events."""

    def __init__(self) -> None:
        self.start: dict[str, Any] | None = None
        self.output_tokens: int | None = None
        self.output_seen = 0

    def observe(self, event: Any) -> None:
        data = as_dict(event)
        kind = data.get("type")
        if kind == "message_start":
            self.start = dict((data.get("message") or {}).get("usage") or {})
        elif kind == "message_delta":
            usage = data.get("usage") or {}
            if usage.get("output_tokens") is not None:
                self.output_tokens = int(usage["output_tokens"])
        elif kind == "content_block_delta":
            delta = data.get("delta") or {}
            text = str(delta.get("text") or delta.get("partial_json") or delta.get("thinking") or "")
            self.output_seen += max(1, len(text.encode("utf-8")))

    def usage(self, reservation: Reservation) -> Usage:
        if self.start is not None and self.output_tokens is not None:
            usage = anthropic_usage({**self.start, "output_tokens": self.output_tokens})
            if usage is not None:
                return usage
        return bound(reservation, self.output_seen)


class _Call:
    def __init__(self, comptroller: Comptroller, context: CallContext, kwargs: dict[str, Any]) -> None:
        self.comptroller = comptroller
        self.tally = _Tally()
        messages = list(kwargs["messages"])
        system = kwargs.get("system")
        framed = [*messages, {"role": "system", "content": system}] if system else messages
        self.admission: Admission = comptroller.admit(
            context=context, model=kwargs["model"], messages=messages,
            input_tokens_max=input_tokens_upper_bound(framed, tools=kwargs.get("tools")),
            max_tokens=kwargs.get("max_tokens"))
        self.kwargs = {**kwargs, "max_tokens": self.admission.output_tokens_max}
        route = self.admission.route
        if route is not None and route.model != route.requested_model:
            self.kwargs["model"] = route.model

    @property
    def reservation(self) -> Reservation:
        assert self.admission.reservation is not None
        return self.admission.reservation

    def observe(self, chunk: Any) -> bool:
        """Count a stream event; every event reaches the caller."""
        self.tally.observe(chunk)
        return True

    def settle_response(self, response: Any) -> None:
        self.comptroller.settle(self.reservation, anthropic_usage(getattr(response, "usage", None)))

    def settle_stream(self) -> None:
        self.comptroller.settle(self.reservation, self.tally.usage(self.reservation))


def wrap_anthropic(client: Any, comptroller: Comptroller, context: CallContext) -> Any:
    """A proxy of ``client`` whose ``messages.create`` goes through the engine."""
    is_async = type(client).__name__.startswith("Async")
    return Proxy(client, messages=(AsyncEndpoint if is_async else Endpoint)(client.messages, comptroller, context,
                                                                         _Call))
