"""The upstream client asks providers for uncompressed answers: the gateway reads each answer for its usage
and passes it on as received, and its session does not decompress."""

from __future__ import annotations

import asyncio
import gzip
import json

from aiohttp import web
from aiohttp.test_utils import TestServer

from comptroller.gateway.config import GatewayConfig, ProviderConfig
from comptroller.gateway.upstream import Upstream

ANSWER = {"id": "x", "usage": {"prompt_tokens": 3, "completion_tokens": 2}}


async def _call() -> tuple[str, bytes]:
    """POST through an ``Upstream`` to a loopback provider that gzips whenever the request allows it."""
    seen: list[str] = []

    async def chat(request: web.Request) -> web.Response:
        accepted = request.headers.get("accept-encoding", "")
        seen.append(accepted)
        body = json.dumps(ANSWER).encode()
        if "gzip" in accepted:
            return web.Response(body=gzip.compress(body), headers={"content-encoding": "gzip"},
                                content_type="application/json")
        return web.Response(body=body, content_type="application/json")

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    async with TestServer(app, host="127.0.0.1") as server:
        upstream = Upstream("p", ProviderConfig(base_url=str(server.make_url("/v1"))), GatewayConfig())
        try:
            response = await upstream.open("/chat/completions", {"model": "m", "messages": []})
            body = await response.read()
            response.release()
        finally:
            await upstream.aclose()
    return seen[0], body


def test_the_provider_is_asked_for_identity_and_its_answer_reads_as_json() -> None:
    accepted, body = asyncio.run(_call())
    assert accepted == "identity"
    assert json.loads(body) == ANSWER
