"""Wrap an ``openai.OpenAI`` or ``openai.AsyncOpenAI`` client: every chat completion goes through the engine.

``client.chat.completions.create(...)`` is admitted first (a refusal raises
:class:`~comptroller.sdk.errors.RefusedError` before any request), sent with the reserved
output bound (``max_completion_tokens`` / ``max_tokens`` lowered to the agent's cap,
or ``max_tokens`` set when the call has none), and settled with the response's usage.
OpenAI counts cached prompt tokens inside ``prompt_tokens`` (API reference, "Prompt
caching"), which is our convention, so the cost is exact.

A stream (``stream=True``) is sent with ``stream_options.include_usage`` and settled
when it ends, is closed, or is dropped (the wrapper's ``__del__``); the usage chunk
reaches the caller only if they asked for it. A stream cut short settles the input
bound and an upper bound on the output seen. Any exception from the client before a
response releases the hold. Everything else on the client passes through unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from comptroller.domain.ledger import Reservation
from comptroller.domain.tokens import input_tokens_upper_bound
from comptroller.domain.usage import Usage, from_openai_usage
from comptroller.engine import Admission
from comptroller.sdk.governor import CallContext, Comptroller, bound
from comptroller.sdk.metered import AsyncEndpoint, Endpoint, Proxy

__all__ = ["as_dict", "openai_usage", "wrap_openai"]


def as_dict(value: Any) -> Any:
    """A pydantic model (the openai types) as plain data; anything else unchanged."""
    dump = getattr(value, "model_dump", None)
    return dump() if callable(dump) else value


def openai_usage(value: Any) -> Usage | None:
    """Usage from an OpenAI ``usage`` object or dict, or None when absent or malformed."""
    return from_openai_usage(as_dict(value))


class _Tally:
    """Usage and generated output of a stream so far."""

    def __init__(self) -> None:
        self.usage: Usage | None = None
        self.output_seen = 0

    def observe(self, chunk: Any) -> bool:
        """Count a chunk; True if it is the usage-only chunk (no choices)."""
        data = as_dict(chunk)
        usage = openai_usage(data.get("usage"))
        if usage is not None:
            self.usage = usage
        choices = data.get("choices") or []
        for choice in choices:
            delta = choice.get("delta") or {}
            text = "".join(str(delta.get(k) or "") for k in ("content", "reasoning_content", "refusal"))
            calls = delta.get("tool_calls") or []
            text += "".join(str((c.get("function") or {}).get("arguments") or "") for c in calls)
            self.output_seen += max(1, len(text.encode("utf-8")))
        return not choices and usage is not None


class _Call:
    """One admitted call: what to send and how to settle it."""

    def __init__(self, comptroller: Comptroller, context: CallContext, kwargs: dict[str, Any]) -> None:
        self.comptroller = comptroller
        self.tally = _Tally()
        self.show_usage = bool((kwargs.get("stream_options") or {}).get("include_usage"))
        messages: Sequence[Mapping[str, Any]] = kwargs["messages"]
        limits = [kwargs[f] for f in ("max_completion_tokens", "max_tokens") if kwargs.get(f) is not None]
        self.admission: Admission = comptroller.admit(
            context=context, model=kwargs["model"], messages=messages,
            input_tokens_max=input_tokens_upper_bound(messages, tools=kwargs.get("tools")),
            max_tokens=min(limits) if limits else None)
        self.kwargs = self._forwarded(kwargs)

    @property
    def reservation(self) -> Reservation:
        assert self.admission.reservation is not None
        return self.admission.reservation

    def _forwarded(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        sent = dict(kwargs)
        fields = [f for f in ("max_completion_tokens", "max_tokens") if sent.get(f) is not None]
        for name in fields or ["max_tokens"]:
            sent[name] = self.admission.output_tokens_max
        route = self.admission.route
        if route is not None and route.model != route.requested_model:
            sent["model"] = route.model
        if sent.get("stream"):
            sent["stream_options"] = {**(sent.get("stream_options") or {}), "include_usage": True}
        return sent

    def observe(self, chunk: Any) -> bool:
        """Count a stream chunk; the usage-only chunk reaches the caller only if they asked for it."""
        return not self.tally.observe(chunk) or self.show_usage

    def settle_response(self, response: Any) -> None:
        self.comptroller.settle(self.reservation, openai_usage(getattr(response, "usage", None)))

    def settle_stream(self) -> None:
        tally = self.tally
        self.comptroller.settle(self.reservation, tally.usage or bound(self.reservation, tally.output_seen))


def wrap_openai(client: Any, comptroller: Comptroller, context: CallContext) -> Any:
    """A proxy of ``client`` whose ``chat.completions.create`` goes through the engine."""
    is_async = type(client).__name__.startswith("Async")
    completions = (AsyncEndpoint if is_async else Endpoint)(client.chat.completions, comptroller, context, _Call)
    return Proxy(client, chat=Proxy(client.chat, completions=completions))
