"""The upstream client's session: it asks providers for uncompressed answers (the gateway reads each answer
for its usage and passes it on as received; the session does not decompress), and it keeps no cookies (one
session serves every tenant)."""

from __future__ import annotations

import asyncio
import gzip
import json

from aiohttp import web
from aiohttp.test_utils import TestServer

from comptroller.gateway.batches.provider import BatchUpstream
from comptroller.gateway.config import GatewayConfig, ProviderConfig
from comptroller.gateway.upstream import Upstream

ANSWER = {"id": "x", "usage": {"prompt_tokens": 3, "completion_tokens": 2}}


async def _calls(n: int) -> tuple[list[tuple[str, str]], list[bytes]]:
    """``n`` POSTs through one ``Upstream`` to a loopback provider that gzips whenever the request allows it
    and sets a cookie on every answer; returns the (accept-encoding, cookie) headers it saw and the bodies."""
    seen: list[tuple[str, str]] = []

    async def chat(request: web.Request) -> web.Response:
        accepted = request.headers.get("accept-encoding", "")
        seen.append((accepted, request.headers.get("cookie", "")))
        body = json.dumps(ANSWER).encode()
        headers = {"set-cookie": f"__cf_bm=tenant{len(seen)}; Path=/"}
        if "gzip" in accepted:
            headers["content-encoding"] = "gzip"
            body = gzip.compress(body)
        return web.Response(body=body, headers=headers, content_type="application/json")

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    async with TestServer(app, host="127.0.0.1") as server:
        # by name: a cookie jar would keep the cookies of a named host (an IP address's it drops anyway)
        base_url = str(server.make_url("/v1")).replace("127.0.0.1", "localhost")
        upstream = Upstream("p", ProviderConfig(base_url=base_url), GatewayConfig())
        bodies = []
        try:
            for _ in range(n):
                response = await upstream.open("/chat/completions", {"model": "m", "messages": []})
                bodies.append(await response.read())
                response.release()
        finally:
            await upstream.aclose()
    return seen, bodies


def test_the_provider_is_asked_for_identity_and_its_answer_reads_as_json() -> None:
    seen, bodies = asyncio.run(_calls(1))
    assert seen[0][0] == "identity"
    assert json.loads(bodies[0]) == ANSWER


def test_a_cookie_the_provider_sets_is_not_sent_with_later_calls() -> None:
    seen, _ = asyncio.run(_calls(3))
    assert [cookie for _, cookie in seen] == ["", "", ""]


async def _batch_calls(n: int) -> list[str]:
    """``n`` GETs through one ``BatchUpstream`` to a loopback provider (by name) that sets a cookie on every
    answer; returns the cookie header of each request it saw."""
    seen: list[str] = []

    async def batch(request: web.Request) -> web.Response:
        seen.append(request.headers.get("cookie", ""))
        return web.json_response({"id": "batch_1"}, headers={"set-cookie": f"__cf_bm=tenant{len(seen)}; Path=/"})

    app = web.Application()
    app.router.add_get("/v1/batches/batch_1", batch)
    async with TestServer(app, host="127.0.0.1") as server:
        base_url = str(server.make_url("/v1")).replace("127.0.0.1", "localhost")
        upstream = BatchUpstream(GatewayConfig(providers={"p": ProviderConfig(base_url=base_url)}))
        try:
            for _ in range(n):
                assert (await upstream.call("p", "GET", "/batches/batch_1")).status == 200
        finally:
            await upstream.aclose()
    return seen


def test_the_batch_client_sends_no_cookie_a_provider_set() -> None:
    assert asyncio.run(_batch_calls(3)) == ["", "", ""]
