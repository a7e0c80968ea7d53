"""What every provider wrapper shares: a metered ``create`` and streams that settle exactly once.

A provider module (:mod:`.openai`, :mod:`.anthropic`) supplies only its :class:`MeteredCall`
(what to send, how to read usage from a response or a stream's chunks); the endpoint and the
stream wrappers here do the rest, sync and async alike:

* ``create`` admits first (a refusal raises before any request), releases the hold if the
  client raises before a response, and settles a plain response with its usage;
* a stream settles once, when it ends, is closed, or is dropped (``__del__``), with what its
  chunks reported (or the input bound and an upper bound on the output seen when cut short).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, Protocol

from comptroller.domain.ledger import Reservation
from comptroller.sdk.governor import CallContext, Comptroller

__all__ = ["AsyncEndpoint", "AsyncMeteredStream", "Endpoint", "MeteredCall", "MeteredStream", "Proxy"]


class MeteredCall(Protocol):
    """One admitted call of a provider API."""

    kwargs: dict[str, Any]
    """What to send the client (the reserved output bound and the routed model in place)."""

    @property
    def reservation(self) -> Reservation:
        """The hold to settle or release."""
        ...

    def observe(self, chunk: Any) -> bool:
        """Count one stream chunk; True to hand it to the caller."""
        ...

    def settle_response(self, response: Any) -> None:
        """Settle a plain (non-stream) response with its usage."""
        ...

    def settle_stream(self) -> None:
        """Settle a stream with what its chunks reported."""
        ...


MakeCall = Callable[[Comptroller, CallContext, dict[str, Any]], MeteredCall]


class Proxy:
    """Passes every attribute through to ``inner``, except the ``replaced`` ones."""

    def __init__(self, inner: Any, **replaced: Any) -> None:
        self._inner = inner
        self.__dict__.update(replaced)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class _Settles:
    """The settle-once part of both stream wrappers."""

    _stream: Any
    _call: MeteredCall
    _open: bool

    def _finish(self) -> None:
        if self._open:
            self._open = False
            self._call.settle_stream()

    def __del__(self) -> None:
        if getattr(self, "_open", False):
            self._finish()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


class MeteredStream(_Settles):
    """A sync stream that settles when it ends, is closed, or is dropped."""

    def __init__(self, stream: Any, call: MeteredCall) -> None:
        self._stream, self._call, self._open = stream, call, True
        self._chunks: Iterator[Any] = iter(stream)

    def __iter__(self) -> MeteredStream:
        return self

    def __next__(self) -> Any:
        try:
            while True:
                chunk = next(self._chunks)
                if self._call.observe(chunk):
                    return chunk
        except BaseException:
            self._finish()
            raise

    def close(self) -> None:
        """Abort the response and settle what was generated."""
        try:
            self._stream.close()
        finally:
            self._finish()

    def __enter__(self) -> MeteredStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncMeteredStream(_Settles):
    """An async stream that settles when it ends, is closed, or is dropped."""

    def __init__(self, stream: Any, call: MeteredCall) -> None:
        self._stream, self._call, self._open = stream, call, True
        self._chunks: AsyncIterator[Any] = stream.__aiter__()

    def __aiter__(self) -> AsyncMeteredStream:
        return self

    async def __anext__(self) -> Any:
        try:
            while True:
                chunk = await self._chunks.__anext__()
                if self._call.observe(chunk):
                    return chunk
        except BaseException:
            self._finish()
            raise

    async def close(self) -> None:
        """Abort the response and settle what was generated."""
        try:
            await self._stream.close()
        finally:
            self._finish()

    aclose = close

    async def __aenter__(self) -> AsyncMeteredStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class Endpoint:
    """A client endpoint (``chat.completions``, ``messages``) whose ``create`` goes through the engine.

    Args:
        inner: the client's endpoint.
        comptroller: the engine's SDK front.
        context: the wrapper's attribution.
        make_call: admits one call (raises its refusal) and knows how to settle it.
    """

    def __init__(self, inner: Any, comptroller: Comptroller, context: CallContext, make_call: MakeCall) -> None:
        self._inner, self._comptroller, self._context, self._make_call = inner, comptroller, context, make_call

    def _admit(self, attribution: CallContext | None, kwargs: dict[str, Any]) -> MeteredCall:
        return self._make_call(self._comptroller, self._comptroller.context(self._context, attribution), kwargs)

    def create(self, *, attribution: CallContext | None = None, **kwargs: Any) -> Any:
        """The client's ``create`` through the engine; ``attribution`` overrides ids for this call.

        Raises:
            RefusedError: when the engine refuses (nothing is sent).
        """
        call = self._admit(attribution, kwargs)
        try:
            response = self._inner.create(**call.kwargs)
        except BaseException:
            self._comptroller.release(call.reservation)
            raise
        if call.kwargs.get("stream"):
            return MeteredStream(response, call)
        call.settle_response(response)
        return response

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class AsyncEndpoint(Endpoint):
    """:class:`Endpoint` for an async client."""

    async def create(self, *, attribution: CallContext | None = None, **kwargs: Any) -> Any:
        """The client's ``create`` through the engine (async).

        Raises:
            RefusedError: when the engine refuses (nothing is sent).
        """
        call = self._admit(attribution, kwargs)
        try:
            response = await self._inner.create(**call.kwargs)
        except BaseException:
            self._comptroller.release(call.reservation)
            raise
        if call.kwargs.get("stream"):
            return AsyncMeteredStream(response, call)
        call.settle_response(response)
        return response
