"""A small pooled HTTP/1.1 client for the upstream POSTs: asyncio transports and httptools' C parser.

aiohttp's request machinery cost about 145 µs of CPU per call to a loopback stub on this
project's VM, this client about 36 µs (BENCHMARKS.md, issue 14): one ``write`` per request
(head and body together), the response parsed by ``httptools`` (the parser uvicorn serves
the gateway with), no per-request request/response/timer/trace objects beyond one future.

What it does, and all it does:

* ``POST`` to one origin (``http`` or ``https``; TLS with the system's default context),
  keep-alive connections pooled per origin, at most ``connections_max`` open at once; a
  caller waits for a free one within the connect budget.
* Timeouts: ``connect_s`` bounds the pool wait and the connect together (the TCP and TLS
  handshake alone: ``sock_connect_s``); ``read_s`` bounds every wait for the next bytes of the
  answer, its head included. A timeout raises :class:`TimeoutError`.
* A connection that could not be opened raises :class:`ConnectError` (nothing was sent: safe
  to retry); any later failure (reset, parse error, cut short) raises :class:`HttpError`.
* The answer's body as it came (no decompression: ``accept-encoding: identity`` is sent),
  dechunked; read whole or line by line; the connection goes back to the pool once the answer
  ended and the server keeps it alive, else it is closed.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
from collections.abc import AsyncIterator, Mapping
from urllib.parse import urlsplit

import httptools

__all__ = ["Answer", "ConnectError", "HttpError", "Origin"]

_BUFFER_MAX = 1 << 18  # bytes of an answer buffered before the socket stops being read (flow control)


class HttpError(Exception):
    """The connection broke, or the answer could not be parsed."""


class ConnectError(HttpError):
    """No connection could be opened: nothing was sent."""


class _Connection(asyncio.Protocol):
    """One keep-alive connection and the answer being read on it."""

    def __init__(self, origin: Origin) -> None:
        self._origin = origin
        self._parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.status = 0
        self.chunks: collections.deque[bytes] = collections.deque()
        self.buffered = 0
        self.head_done = False
        self.done = False
        self.keep_alive = False
        self.error: BaseException | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.counted = True  # counts against the origin's limit until closed
        self._framed = False  # the answer gave a length or chunks (else its body ends with the connection)
        self._paused = False

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(HttpError("the upstream switched protocols"))
        except httptools.HttpParserError as exc:
            self._fail(HttpError(f"the upstream's answer could not be parsed: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._origin.lost(self)
        if not self.done and self.error is None:
            if self.head_done and not self._framed:  # no length given: the body ends with the connection
                self.done = True
                self._wake()
            else:
                self._fail(HttpError(f"the connection was closed{'' if exc is None else f': {exc}'}"))

    # httptools' callbacks
    def on_header(self, name: bytes, _value: bytes) -> None:
        if name.lower() in (b"content-length", b"transfer-encoding"):
            self._framed = True

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)
        self.buffered += len(body)
        if self.buffered > _BUFFER_MAX and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def on_headers_complete(self) -> None:
        self.status = self._parser.get_status_code()
        self.head_done = True
        self._wake()

    def on_message_complete(self) -> None:
        self.keep_alive = self._parser.should_keep_alive()
        self.done = True
        self._wake()

    # the client's side
    def _fail(self, error: BaseException) -> None:
        self.error = error
        self.close()
        self._wake()

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def start(self, data: bytes) -> None:
        """Send one request (its whole bytes); the answer is read afresh."""
        self.status, self.head_done, self.done, self.error, self._framed = 0, False, False, None, False
        self.chunks.clear()
        self.buffered = 0
        assert self.transport is not None
        self.transport.write(data)

    async def wait(self, timeout_s: float) -> None:
        """Wait for the next bytes or the end, at most ``timeout_s``.

        Raises:
            TimeoutError: nothing came in time.
            HttpError: the connection failed.
        """
        if self.error is None:
            loop = asyncio.get_running_loop()
            self.waiter = waiter = loop.create_future()
            timer = loop.call_later(timeout_s, _time_out, waiter)
            try:
                await waiter
            finally:
                timer.cancel()
                self.waiter = None
        if self.error is not None:
            raise self.error

    def take(self) -> bytes:
        """The body bytes received and not taken yet."""
        data = b"".join(self.chunks) if len(self.chunks) != 1 else self.chunks[0]
        self.chunks.clear()
        self.buffered = 0
        if self._paused and self.transport is not None and not self.closed:
            self._paused = False
            self.transport.resume_reading()
        return data

    def close(self) -> None:
        """Close the connection now (mid-answer too)."""
        if self.transport is not None and not self.closed:
            self.transport.close()
        self.closed = True


def _time_out(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


class Answer:
    """An answer being read: its status, then its body whole or by lines; then :meth:`release` or :meth:`close`."""

    def __init__(self, connection: _Connection, origin: Origin) -> None:
        self._connection = connection
        self._origin = origin
        self.status = connection.status
        self._finished = False

    async def read(self) -> bytes:
        """The whole body.

        Raises:
            TimeoutError: a wait for the next bytes passed the read timeout.
            HttpError: the connection broke before the end.
        """
        c = self._connection
        parts: list[bytes] = []
        while not c.done:
            await c.wait(self._origin.read_s)
            parts.append(c.take())
        parts.append(c.take())
        return b"".join(parts)

    async def lines(self) -> AsyncIterator[bytes]:
        """The body line by line, each with its line ending (the last one without, if the body has none).

        Raises:
            TimeoutError: a wait for the next bytes passed the read timeout.
            HttpError: the connection broke before the end.
        """
        c = self._connection
        rest = b""
        while True:
            data = c.take()
            if data:
                lines = (rest + data).split(b"\n")
                rest = lines.pop()
                for line in lines:
                    yield line + b"\n"
            if c.done:
                if rest:
                    yield rest
                return
            await c.wait(self._origin.read_s)

    def release(self) -> None:
        """Done with it: the connection goes back to the pool if the answer ended and it may be kept, else closes."""
        if not self._finished:
            self._finished = True
            self._origin.give_back(self._connection)

    def close(self) -> None:
        """Close the connection now, mid-answer (no-op once released)."""
        if not self._finished:
            self._finished = True
            self._connection.close()
            self._origin.give_back(self._connection)


class Origin:
    """A pool of keep-alive connections to one ``scheme://host:port``.

    Args:
        base_url: the provider's root URL (``http`` or ``https``); request paths are appended to it.
        headers: headers sent with every request (lower-case names), beside ``host``,
            ``content-length``, ``accept`` and ``accept-encoding``.
        connections_max: open connections at most.
        connect_s: the longest wait for a connection, pool wait and handshake together, seconds.
        sock_connect_s: the longest TCP (and TLS) handshake, seconds.
        read_s: the longest wait for the next bytes of an answer, seconds.

    Raises:
        ValueError: a URL that is not ``http`` or ``https``, without a host, or a header with a line break.
    """

    def __init__(self, base_url: str, headers: Mapping[str, str], *, connections_max: int, connect_s: float,
                 sock_connect_s: float, read_s: float) -> None:
        url = urlsplit(base_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"an upstream URL is http:// or https:// with a host, not {base_url!r}")
        self.host = url.hostname
        self.port = url.port or (443 if url.scheme == "https" else 80)
        self._ssl = ssl.create_default_context() if url.scheme == "https" else None
        self._root = base_url.rstrip("/")
        netloc = url.netloc.rpartition("@")[2]
        self._headers = {"host": netloc, "accept": "*/*", "accept-encoding": "identity",
                         **{k.lower(): v for k, v in headers.items()}}
        _check_headers(self._headers)
        self._head_tail = "".join(f"{k}: {v}\r\n" for k, v in self._headers.items())
        self.connections_max = connections_max
        self.connect_s = connect_s
        self.sock_connect_s = sock_connect_s
        self.read_s = read_s
        self._idle: list[_Connection] = []
        self._open = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._closed = False
        self._targets: dict[str, str] = {}

    def _target(self, path: str) -> str:
        """The request target of ``path`` under the root (the API paths are few: remembered)."""
        target = self._targets.get(path)
        if target is None:
            url = urlsplit(self._root + path)
            target = self._targets[path] = (url.path or "/") + (f"?{url.query}" if url.query else "")
        return target

    async def post(self, path: str, body: bytes, headers: Mapping[str, str] | None = None) -> Answer:
        """POST ``body`` (JSON) to ``path`` under the root; the answer once its head has come.

        Raises:
            ConnectError: no connection could be opened (nothing was sent).
            TimeoutError: the pool wait and connect, or the wait for the answer's head, took too long.
            HttpError: the connection broke.
            ValueError: a header with a line break.
        """
        head_tail = self._head_tail
        if headers:
            merged = {**self._headers, **{k.lower(): v for k, v in headers.items()}}
            _check_headers(merged)
            head_tail = "".join(f"{k}: {v}\r\n" for k, v in merged.items())
        data = (f"POST {self._target(path)} HTTP/1.1\r\n{head_tail}content-length: {len(body)}\r\n\r\n"
                ).encode() + body
        connection = await self._acquire()
        try:
            try:
                connection.start(data)
            except (OSError, RuntimeError) as exc:  # the transport closed under the write
                raise HttpError(f"the connection broke while sending: {exc}") from None
            while not connection.head_done:
                await connection.wait(self.read_s)
        except BaseException:
            connection.close()
            self.give_back(connection)
            raise
        return Answer(connection, self)

    async def _acquire(self) -> _Connection:
        """A connection: an idle one, a new one under the limit, or the next one freed.

        Raises:
            ConnectError: the pool is closed, or no connection could be opened.
            TimeoutError: the pool wait and the connect took longer than ``connect_s``.
        """
        connection = self._idle_one()
        if connection is not None:
            return connection
        if self._closed:
            raise ConnectError("the upstream pool is closed")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.connect_s
        while self._open >= self.connections_max:
            await self._turn(loop, deadline)
            connection = self._idle_one()
            if connection is not None:
                return connection
        self._open += 1
        try:
            _, opened = await asyncio.wait_for(
                loop.create_connection(lambda: _Connection(self), self.host, self.port, ssl=self._ssl,
                                       server_hostname=self.host if self._ssl is not None else None),
                min(self.sock_connect_s, max(0.0, deadline - loop.time())))
        except BaseException as exc:
            self._open -= 1
            self._wake_one()
            if isinstance(exc, OSError) and not isinstance(exc, TimeoutError):  # refused, unreachable, TLS
                raise ConnectError(f"cannot connect to {self.host}:{self.port}: {exc}") from None
            raise
        return opened

    def _idle_one(self) -> _Connection | None:
        idle = self._idle
        while idle:
            connection = idle.pop()
            if not connection.closed:
                return connection
        return None

    async def _turn(self, loop: asyncio.AbstractEventLoop, deadline: float) -> None:
        """Wait until a connection is given back or closed (at most until ``deadline``, loop time)."""
        waiter: asyncio.Future[None] = loop.create_future()
        self._waiters.append(waiter)
        timer = loop.call_later(max(0.0, deadline - loop.time()), _time_out, waiter)
        try:
            await waiter
        except BaseException:
            if waiter in self._waiters:
                self._waiters.remove(waiter)
            elif waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self._wake_one()  # woken, then cancelled: the turn goes to the next
            raise
        finally:
            timer.cancel()

    def give_back(self, connection: _Connection) -> None:
        """A connection whose answer is done with: pooled if it ended and may be kept, else closed."""
        if connection.done and connection.keep_alive and not connection.closed and not self._closed:
            self._idle.append(connection)
        else:
            connection.close()
            self.lost(connection)
            return
        self._wake_one()

    def lost(self, connection: _Connection) -> None:
        """A connection closed (by either side): it no longer counts against the limit."""
        if not connection.counted:
            return
        connection.counted = False
        if connection in self._idle:
            self._idle.remove(connection)
        self._open -= 1
        self._wake_one()

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def aclose(self) -> None:
        """Close every connection; later requests fail with :class:`ConnectError`."""
        self._closed = True
        for connection in list(self._idle):
            connection.close()
        self._idle.clear()


def _check_headers(headers: Mapping[str, str]) -> None:
    for name, value in headers.items():
        if "\r" in name or "\n" in name or "\r" in value or "\n" in value or ":" in name:
            raise ValueError(f"a header name or value with a line break or colon: {name!r}")
