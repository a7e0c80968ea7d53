"""Streams that settle exactly once: when they end, are closed, or are dropped.

Two kinds of stream come out of the clients, and both are wrapped here, sync and async:

* the raw event stream of ``create(..., stream=True)``: :class:`MeteredStream`;
* the helper streams of ``.stream(...)`` (``ChatCompletionStream``, ``ResponseStream``,
  ``MessageStream``), entered through a manager: :class:`StreamManager` admits nothing
  itself (the call was admitted when ``.stream(...)`` was called); it releases the hold if
  entering (the request) fails, and its stream settles once.

Every event the caller reads passes the call's tally first. The helpers' own consumers
(``until_done``, ``get_final_*``, ``text_stream``) are re-routed through the wrapper, so the
tally sees the events whichever way the stream is read. A stream cut short settles the input
bound and an upper bound on the output seen (never less than was generated).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any, Protocol

__all__ = ["AsyncMeteredStream", "AsyncStreamManager", "MeteredStream", "StreamManager"]


class Settles(Protocol):
    """An admitted call, as a stream sees it."""

    def observe(self, event: Any) -> bool:
        """Count one event; True to hand it to the caller."""
        ...

    def settle_stream(self) -> None:
        """Settle with what the events reported."""
        ...

    def release(self) -> None:
        """Return the hold (the request never started)."""
        ...


def _text_of(event: Any) -> str | None:
    """The text of a text-delta event (Anthropic ``content_block_delta``, OpenAI ``*.output_text.delta``)."""
    delta = getattr(event, "delta", None)
    if getattr(event, "type", None) == "content_block_delta" and getattr(delta, "type", None) == "text_delta":
        return str(getattr(delta, "text", ""))
    return delta if isinstance(delta, str) and str(getattr(event, "type", "")).endswith("text.delta") else None


class _Settling:
    """The settle-once part of both stream wrappers."""

    _stream: Any
    _call: Settles
    _open: bool

    def finish(self) -> None:
        """Settle now, unless already settled."""
        if self._open:
            self._open = False
            self._call.settle_stream()

    def __del__(self) -> None:
        if getattr(self, "_open", False):
            self.finish()


class MeteredStream(_Settling):
    """A sync stream that settles when it ends, is closed, or is dropped."""

    def __init__(self, stream: Any, call: Settles) -> None:
        self._stream, self._call, self._open = stream, call, True
        self._events: Iterator[Any] = iter(stream)

    def __iter__(self) -> MeteredStream:
        return self

    def __next__(self) -> Any:
        try:
            while True:
                event = next(self._events)
                if self._call.observe(event):
                    return event
        except BaseException:
            self.finish()
            raise

    def close(self) -> None:
        """Abort the response and settle what was generated."""
        try:
            self._stream.close()
        finally:
            self.finish()

    def until_done(self) -> MeteredStream:
        """Read the stream to its end (through the tally)."""
        for _ in self:
            pass
        return self

    @property
    def text_stream(self) -> Iterator[str]:
        """The text deltas (through the tally)."""
        return (text for event in self if (text := _text_of(event)) is not None)

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._stream, name)
        if name.startswith("get_final_") and callable(value):
            def final(*args: Any, **kwargs: Any) -> Any:
                self.until_done()
                return value(*args, **kwargs)
            return final
        return value

    def __enter__(self) -> MeteredStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncMeteredStream(_Settling):
    """An async stream that settles when it ends, is closed, or is dropped."""

    def __init__(self, stream: Any, call: Settles) -> None:
        self._stream, self._call, self._open = stream, call, True
        self._events: AsyncIterator[Any] = stream.__aiter__()

    def __aiter__(self) -> AsyncMeteredStream:
        return self

    async def __anext__(self) -> Any:
        try:
            while True:
                event = await self._events.__anext__()
                if self._call.observe(event):
                    return event
        except BaseException:
            self.finish()
            raise

    async def close(self) -> None:
        """Abort the response and settle what was generated."""
        try:
            await self._stream.close()
        finally:
            self.finish()

    aclose = close

    async def until_done(self) -> AsyncMeteredStream:
        """Read the stream to its end (through the tally)."""
        async for _ in self:
            pass
        return self

    @property
    def text_stream(self) -> AsyncIterator[str]:
        """The text deltas (through the tally)."""
        async def texts() -> AsyncIterator[str]:
            async for event in self:
                text = _text_of(event)
                if text is not None:
                    yield text
        return texts()

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._stream, name)
        if name.startswith("get_final_") and callable(value):
            async def final(*args: Any, **kwargs: Any) -> Any:
                await self.until_done()
                return await value(*args, **kwargs)
            return final
        return value

    async def __aenter__(self) -> AsyncMeteredStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class _Managed:
    """The part both managers share: settle a stream never entered (release) when dropped."""

    _call: Settles
    _entered: bool

    def __del__(self) -> None:
        if not getattr(self, "_entered", True):
            self._entered = True
            self._call.release()


class StreamManager(_Managed):
    """A helper's stream manager (``with client.chat.completions.stream(...) as stream``), metered."""

    def __init__(self, manager: Any, call: Settles) -> None:
        self._manager, self._call, self._entered = manager, call, False
        self._stream: MeteredStream | None = None

    def __enter__(self) -> MeteredStream:
        self._entered = True
        try:
            inner = self._manager.__enter__()
        except BaseException:
            self._call.release()
            raise
        self._stream = MeteredStream(inner, self._call)
        return self._stream

    def __exit__(self, *exc: Any) -> None:
        try:
            self._manager.__exit__(*exc)
        finally:
            if self._stream is not None:
                self._stream.finish()


class AsyncStreamManager(_Managed):
    """:class:`StreamManager` for an async client (``async with``)."""

    def __init__(self, manager: Any, call: Settles) -> None:
        self._manager, self._call, self._entered = manager, call, False
        self._stream: AsyncMeteredStream | None = None

    async def __aenter__(self) -> AsyncMeteredStream:
        self._entered = True
        try:
            inner = await self._manager.__aenter__()
        except BaseException:
            self._call.release()
            raise
        self._stream = AsyncMeteredStream(inner, self._call)
        return self._stream

    async def __aexit__(self, *exc: Any) -> None:
        try:
            await self._manager.__aexit__(*exc)
        finally:
            if self._stream is not None:
                self._stream.finish()

