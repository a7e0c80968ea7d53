"""What every metered client method shares: admit before the request, settle (or release) exactly once.

A provider module (:mod:`.openai`, :mod:`.anthropic`) describes each API it meters as an
:class:`Api` (how to read the model, the input and output bounds from a request, how to cap
the output upstream, how to read usage from a response and from a stream); :func:`bind` turns
an API and a method shape into the wrapped method, sync or async:

* ``create``-shaped (``create``, ``parse``): admits first (a refusal raises before any
  request), releases the hold if the client raises before a response, settles a plain
  response with its usage, and wraps a ``stream=True`` response in a stream that settles
  once (:mod:`.streams`);
* ``stream``-shaped (the clients' ``.stream(...)`` helpers): admits at the call, and
  returns a manager whose stream settles once when it ends, is closed or is dropped.

The wrappers only need the four calls of :class:`Meter` (the :class:`~.governor.Comptroller`
provides them), so this module imports nothing of the governor.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from comptroller.domain.ledger import Reservation, SettleResult
from comptroller.domain.tokens import Api as TokensApi
from comptroller.domain.usage import Usage
from comptroller.engine import Admission
from comptroller.engine.recount import InputRecount
from comptroller.exact_input import input_recount
from comptroller.sdk.context import CallContext
from comptroller.sdk.streams import AsyncMeteredStream, AsyncStreamManager, MeteredStream, StreamManager

__all__ = ["Api", "Call", "Meter", "Request", "Tally", "Wiring", "bind", "bound", "cap_output", "request_body"]

Shape = Literal["create", "stream"]

_SENTINELS = frozenset({"NotGiven", "Omit"})  # the clients' "argument not given" values: never sent


class Meter(Protocol):
    """The engine as the wrappers see it (:class:`~comptroller.sdk.governor.Comptroller` is one)."""

    def context(self, wrapper: CallContext | None = None, call: CallContext | None = None) -> CallContext:
        """The effective attribution of a call."""
        ...

    def admit(self, *, context: CallContext, model: str, messages: Sequence[Mapping[str, Any]] | None,
              input_tokens_max: int, max_tokens: int | None, choices: int = 1,
              input_recount: InputRecount | None = None) -> Admission:
        """Admit a call or raise its refusal."""
        ...

    def settle(self, reservation: Reservation, usage: Usage | None, *,
               served_model: str | None = None) -> SettleResult:
        """Charge what the call used (None: the whole bound) at the served model's price."""
        ...

    def release(self, reservation: Reservation) -> None:
        """Return the hold of a call the provider did not bill."""
        ...


@dataclass(frozen=True, slots=True)
class Request:
    """What an :class:`Api` reads from a request before it is admitted.

    Attributes:
        model: the requested model.
        input_tokens_max: an upper bound on the input tokens.
        max_tokens: the requested output limit per choice, if any.
        choices: outputs generated (OpenAI ``n``).
        messages: chat-shaped messages for the loop detectors (None: not a conversation turn).
    """

    model: str
    input_tokens_max: int
    max_tokens: int | None
    choices: int = 1
    messages: Sequence[Mapping[str, Any]] | None = None


class Tally(Protocol):
    """The usage of one stream, assembled from its events."""

    served_model: str | None
    """The model the stream says it comes from, once an event has said so."""

    def observe(self, event: Any) -> bool:
        """Count one event; True to hand it to the caller."""
        ...

    def usage(self, reservation: Reservation) -> Usage:
        """The final usage, or (cut short) the input bound and an upper bound on the output seen."""
        ...


class Api(Protocol):
    """One provider API as the meter needs it."""

    shape: TokensApi
    """Its request shape for :func:`~comptroller.domain.tokens.request_input_tokens_max`."""

    def read(self, body: Mapping[str, Any]) -> Request:
        """The request's model and bounds (raises UnmeteredCallError for a mode that cannot be metered)."""
        ...

    def forward(self, kwargs: dict[str, Any], admission: Admission, request: Request) -> dict[str, Any]:
        """The keyword arguments to send: output capped at the admitted bound, routed model in place."""
        ...

    def usage(self, response: Any) -> Usage | None:
        """The billed usage of a plain response (None: not reported)."""
        ...

    def tally(self, kwargs: Mapping[str, Any]) -> Tally:
        """A fresh tally for a stream sent with ``kwargs``."""
        ...


def bound(reservation: Reservation, output_tokens: int | None = None) -> Usage:
    """The usage to charge when the provider reported none: the input bound and the output bound
    (or ``output_tokens`` seen, if fewer), so the ledger never under-counts."""
    out = reservation.output_tokens_max if output_tokens is None else min(output_tokens,
                                                                          reservation.output_tokens_max)
    return Usage(input_tokens=reservation.input_tokens_max, output_tokens=out)


def _sent(value: Any) -> Any:
    """A keyword argument as the client sends it: a pydantic class (a ``parse`` response format) as its
    JSON schema, other classes by name."""
    if isinstance(value, type):
        schema = getattr(value, "model_json_schema", None)
        return schema() if callable(schema) else value.__name__
    return value


def request_body(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON body the client will send: the keyword arguments that are given, with ``extra_body``
    merged over them (a field there reaches the provider just the same)."""
    body = {k: _sent(v) for k, v in kwargs.items()
            if k not in ("extra_headers", "extra_query", "extra_body", "timeout", "attribution")
            and type(v).__name__ not in _SENTINELS}
    extra = kwargs.get("extra_body")
    if isinstance(extra, Mapping):
        body.update(extra)
    return body


def cap_output(kwargs: dict[str, Any], fields: Sequence[str], value: int) -> dict[str, Any]:
    """``kwargs`` with every output-limit field that is set (in the arguments or ``extra_body``)
    lowered to ``value``, or the first of ``fields`` set when none is."""
    sent = dict(kwargs)
    extra = dict(sent["extra_body"]) if isinstance(sent.get("extra_body"), Mapping) else None
    present = [f for f in fields if sent.get(f) is not None]
    for name in present or ([] if extra and any(f in extra for f in fields) else [fields[0]]):
        sent[name] = value
    if extra is not None:
        extra.update({f: value for f in fields if f in extra})
        sent["extra_body"] = extra
    return sent


class Call:
    """One admitted call: what to send, and how to settle it exactly once.

    Raises (at construction):
        RefusedError: when the engine refuses (nothing is sent).
        UnmeteredCallError: when the request uses a mode the API cannot meter.
        UnboundableInputError: (a ValueError naming the part) for input no documented rule bounds.
        TypeError: when a required argument (``model``, ``messages``) is missing.
    """

    def __init__(self, meter: Meter, context: CallContext, api: Api, kwargs: dict[str, Any]) -> None:
        self.meter, self.api = meter, api
        try:
            body = request_body(kwargs)
            request = api.read(body)
        except KeyError as exc:  # the client would refuse it too, before sending
            raise TypeError(f"{api.shape} request is missing the required argument {exc.args[0]!r}") from None
        self.admission = meter.admit(context=context, model=request.model, messages=request.messages,
                                     input_tokens_max=request.input_tokens_max, max_tokens=request.max_tokens,
                                     choices=request.choices, input_recount=input_recount(body, api=api.shape))
        self.kwargs = api.forward(kwargs, self.admission, request)
        self.asked = kwargs
        self._tally: Tally | None = None

    @property
    def tally(self) -> Tally:
        """The stream's tally (made on the first event)."""
        if self._tally is None:
            self._tally = self.api.tally(self.asked)
        return self._tally

    @property
    def reservation(self) -> Reservation:
        """The hold to settle or release."""
        assert self.admission.reservation is not None
        return self.admission.reservation

    def observe(self, event: Any) -> bool:
        """Count a stream event; True to hand it to the caller."""
        return self.tally.observe(event)

    def settle_response(self, response: Any) -> None:
        """Settle a plain response with its usage (the whole bound when it reports none)."""
        model = getattr(response, "model", None)
        self.meter.settle(self.reservation, self.api.usage(response),
                          served_model=model if isinstance(model, str) else None)

    def settle_stream(self) -> None:
        """Settle a stream with what its events reported."""
        self.meter.settle(self.reservation, self.tally.usage(self.reservation), served_model=self.tally.served_model)

    def release(self) -> None:
        """Return the hold (the request failed before the provider billed it)."""
        self.meter.release(self.reservation)


@dataclass(frozen=True, slots=True)
class Wiring:
    """What every wrapped method of one client shares: the meter, the wrapper's ids, sync or async."""

    meter: Meter
    context: CallContext
    is_async: bool


def _admit(wiring: Wiring, api: Api, kwargs: dict[str, Any]) -> Call:
    attribution = kwargs.pop("attribution", None)
    return Call(wiring.meter, wiring.meter.context(wiring.context, attribution), api, kwargs)


def bind(shape: Shape, api: Api, wiring: Wiring) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """A function that wraps one client method (``inner``) of this shape and API.

    Each wrapped method takes the client's keyword arguments plus ``attribution=`` (a
    :class:`CallContext` overriding ids for that call).
    """
    if shape == "stream":
        manager = AsyncStreamManager if wiring.is_async else StreamManager

        def streamed(inner: Callable[..., Any]) -> Callable[..., Any]:
            def method(**kwargs: Any) -> Any:
                call = _admit(wiring, api, kwargs)
                try:
                    return manager(inner(**call.kwargs), call)
                except BaseException:
                    call.release()
                    raise
            return method
        return streamed

    def created(inner: Callable[..., Any]) -> Callable[..., Any]:
        if wiring.is_async:
            async def method_async(**kwargs: Any) -> Any:
                call = _admit(wiring, api, kwargs)
                try:
                    response = await inner(**call.kwargs)
                except BaseException:
                    call.release()
                    raise
                return _settled(call, response, AsyncMeteredStream)
            return method_async

        def method(**kwargs: Any) -> Any:
            call = _admit(wiring, api, kwargs)
            try:
                response = inner(**call.kwargs)
            except BaseException:
                call.release()
                raise
            return _settled(call, response, MeteredStream)
        return method
    return created


def _settled(call: Call, response: Any, stream: Callable[[Any, Call], Any]) -> Any:
    if call.kwargs.get("stream"):
        return stream(response, call)
    call.settle_response(response)
    return response
