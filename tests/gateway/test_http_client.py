"""The upstream HTTP client (:mod:`comptroller.gateway.http_client`) against a scripted loopback server.

Each test runs a real asyncio TCP server on 127.0.0.1 whose answers are written byte by byte
as a provider (or a broken one) would, so framing (length, chunks, until close), keep-alive,
the pool's limit and the timeouts are seen from the socket's side.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from comptroller.gateway.http_client import Answer, ConnectError, HttpError, Origin

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def _request(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """One request off the connection: its head and body (by content-length)."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    return head, await reader.readexactly(length)


def _answer(body: bytes, *, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n%s\r\n%s" % (
        len(body), extra, body)


async def _serve(handler: Handler, test: Callable[[int], Awaitable[None]]) -> None:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        await test(port)
    finally:
        server.close()


def _origin(port: int, **kw: float) -> Origin:
    options = {"connections_max": 4, "connect_s": 2.0, "sock_connect_s": 1.0, "read_s": 2.0, **kw}
    return Origin(f"http://127.0.0.1:{port}/v1", {"content-type": "application/json", "authorization": "Bearer k"},
                  connections_max=int(options["connections_max"]), connect_s=options["connect_s"],
                  sock_connect_s=options["sock_connect_s"], read_s=options["read_s"])


def test_keep_alive_reuses_one_connection_and_sends_one_request_per_post() -> None:
    connections: list[int] = []
    heads: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        while not reader.at_eof():
            try:
                head, body = await _request(reader)
            except asyncio.IncompleteReadError:
                break
            heads.append(head)
            writer.write(_answer(b'{"echo": %s}' % body))
            await writer.drain()
        writer.close()

    async def test(port: int) -> None:
        origin = _origin(port)
        for i in range(3):
            answer = await origin.post("/chat/completions", b"%d" % i)
            assert answer.status == 200
            assert await answer.read() == b'{"echo": %d}' % i
            answer.release()
        await origin.aclose()

    asyncio.run(_serve(handler, test))
    assert len(connections) == 1
    assert heads[0].startswith(b"POST /v1/chat/completions HTTP/1.1\r\n")
    lower = heads[0].lower()
    assert b"authorization: bearer k\r\n" in lower and b"content-length: 1\r\n" in lower
    assert b"accept-encoding: identity\r\n" in lower and b"user-agent" not in lower


def test_per_request_headers_replace_the_origins_headers_of_the_same_name() -> None:
    heads: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head, _ = await _request(reader)
        heads.append(head)
        writer.write(_answer(b"{}"))
        await writer.drain()
        writer.close()

    async def test(port: int) -> None:
        origin = _origin(port)
        answer = await origin.post("/messages", b"{}", {"Authorization": "Bearer other", "anthropic-beta": "x"})
        await answer.read()
        answer.release()
        with pytest.raises(ValueError, match="line break"):
            await origin.post("/messages", b"{}", {"anthropic-beta": "x\r\nevil: 1"})

    asyncio.run(_serve(handler, test))
    lower = heads[0].lower()
    assert lower.count(b"authorization:") == 1 and b"authorization: bearer other\r\n" in lower
    assert b"anthropic-beta: x\r\n" in lower


@settings(max_examples=25, deadline=None)
@given(chunks=st.lists(st.binary(min_size=1, max_size=40), min_size=1, max_size=6),
       splits=st.lists(st.integers(min_value=1, max_value=30), min_size=1, max_size=8))
def test_a_chunked_answer_is_read_whole_and_by_lines_however_the_bytes_arrive(
        chunks: list[bytes], splits: list[int]) -> None:
    body = b"".join(chunks)
    wire = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n" + b"".join(
        b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for _ in range(2):
            await _request(reader)
            at = 0
            for size in [*splits, len(wire)]:  # the answer in pieces, each sent on its own
                writer.write(wire[at:at + size])
                await writer.drain()
                await asyncio.sleep(0)
                at += size
        writer.close()

    async def test(port: int) -> None:
        origin = _origin(port)
        answer = await origin.post("/x", b"{}")
        assert await answer.read() == body
        answer.release()
        answer = await origin.post("/x", b"{}")
        lines = [line async for line in answer.lines()]
        answer.release()
        assert b"".join(lines) == body
        assert all(line.endswith(b"\n") for line in lines[:-1])
        assert b"\n" not in b"".join(line[:-1] for line in lines)

    asyncio.run(_serve(handler, test))


def test_an_answer_without_length_ends_with_the_connection_and_is_not_reused() -> None:
    connections: list[int] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        await _request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n{\"a\": 1}")
        await writer.drain()
        writer.close()

    async def test(port: int) -> None:
        origin = _origin(port)
        for _ in range(2):
            answer = await origin.post("/x", b"{}")
            assert await answer.read() == b'{"a": 1}'
            answer.release()

    asyncio.run(_serve(handler, test))
    assert len(connections) == 2


def test_an_answer_cut_short_raises_and_its_connection_is_dropped() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n{\"partial\":")
        await writer.drain()
        writer.close()

    async def test(port: int) -> None:
        origin = _origin(port, connections_max=1)
        answer = await origin.post("/x", b"{}")
        with pytest.raises(HttpError, match="closed"):
            await answer.read()
        answer.close()
        assert origin._open == 0  # the limit's slot is free again

    asyncio.run(_serve(handler, test))


def test_a_refused_connection_is_a_connect_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, not listening: connections are refused

        async def test() -> None:
            origin = _origin(port)
            with pytest.raises(ConnectError):
                await origin.post("/x", b"{}")
            assert origin._open == 0

        asyncio.run(test())


def test_a_silent_server_times_out_the_read_and_the_connection_is_closed() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _request(reader)
        await reader.read()  # never answers; returns when the client closes
        writer.close()

    async def test(port: int) -> None:
        origin = _origin(port, read_s=0.2)
        with pytest.raises(TimeoutError):
            await origin.post("/x", b"{}")
        assert origin._open == 0 and origin._idle == []

    asyncio.run(_serve(handler, test))


def test_the_pool_limit_makes_a_caller_wait_for_a_connection_then_times_out() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                await _request(reader)
            except asyncio.IncompleteReadError:
                break
            writer.write(_answer(b"{}"))
            await writer.drain()
        writer.close()

    async def test(port: int) -> None:
        origin = _origin(port, connections_max=1, connect_s=0.3)
        first = await origin.post("/x", b"{}")
        await first.read()
        waiting = asyncio.create_task(origin.post("/x", b"{}"))
        await asyncio.sleep(0.05)
        assert not waiting.done()  # the one connection is still out
        first.release()
        second = await waiting  # it got the connection given back
        await second.read()
        with pytest.raises(TimeoutError):  # the connection is out and never comes back in time
            await origin.post("/x", b"{}")
        second.release()
        third = await origin.post("/x", b"{}")
        await third.read()
        third.release()
        assert origin._open == 1

    asyncio.run(_serve(handler, test))


def test_a_connection_closed_by_the_server_while_idle_is_not_used_again() -> None:
    connections: list[int] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        await _request(reader)
        writer.write(_answer(b"{}"))  # keep-alive by HTTP/1.1's default, then closed anyway
        await writer.drain()
        writer.close()

    async def test(port: int) -> None:
        origin = _origin(port)
        for _ in range(2):
            answer: Answer = await origin.post("/x", b"{}")
            await answer.read()
            answer.release()
            await asyncio.sleep(0.1)  # the server's close arrives
        assert origin._idle == [] and origin._open == 0

    asyncio.run(_serve(handler, test))
    assert len(connections) == 2


def test_an_origin_needs_an_http_url_with_a_host() -> None:
    for url in ("ftp://example.com/", "http:///v1"):
        with pytest.raises(ValueError, match="http"):
            Origin(url, {}, connections_max=1, connect_s=1, sock_connect_s=1, read_s=1)
