"""The upstream side: one pooled ``httpx.AsyncClient`` per configured provider.

Each provider gets a client with keep-alive connections (at most
``pool_connections_max`` per worker), the configured connect / read / write / pool
timeouts, and ``httpx.AsyncHTTPTransport(retries=N)``, which retries only failed
connection attempts (``ConnectError``, ``ConnectTimeout``; httpx docs, "Transports:
retries"): a request whose bytes reached the provider is never sent twice, so a
call is never paid twice.

The transport is the seam for tests: pass ``transport=`` to talk to an in-process
app, though the gateway's own tests use a real stub server on loopback.
"""

from __future__ import annotations

import json
from typing import Any

import httpx

from comptroller.gateway.config import GatewayConfig, ProviderConfig

__all__ = ["Upstream", "Upstreams"]


class Upstream:
    """One provider: its settings, key and pooled client."""

    def __init__(self, name: str, config: ProviderConfig, gateway: GatewayConfig,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.name = name
        self.config = config
        headers = {"content-type": "application/json"}
        key = config.api_key()
        if key is not None:
            headers["authorization"] = f"Bearer {key}"
        limits = httpx.Limits(max_connections=gateway.pool_connections_max,
                              max_keepalive_connections=gateway.pool_connections_max)
        timeout = httpx.Timeout(connect=gateway.connect_timeout_s, read=gateway.read_timeout_s,
                                write=gateway.write_timeout_s, pool=gateway.pool_timeout_s)
        self.client = httpx.AsyncClient(
            base_url=config.base_url.rstrip("/"), headers=headers, timeout=timeout,
            transport=transport or httpx.AsyncHTTPTransport(retries=gateway.connect_retries, limits=limits),
        )

    async def open_chat(self, body: dict[str, Any]) -> httpx.Response:
        """Send a chat completion request; the response is open (read or close it).

        Raises:
            httpx.TimeoutException: the provider did not answer in time.
            httpx.TransportError: the connection failed (after the connect retries).
        """
        content = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        request = self.client.build_request("POST", "/chat/completions", content=content)
        return await self.client.send(request, stream=True)


class Upstreams:
    """Every configured provider, by name."""

    def __init__(self, config: GatewayConfig, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.config = config
        self.by_name = {name: Upstream(name, provider, config, transport)
                        for name, provider in config.providers.items()}

    def for_model(self, model: str) -> Upstream | None:
        """The provider serving ``model``, or None if none does."""
        name = self.config.provider_for(model)
        return None if name is None else self.by_name[name]

    async def aclose(self) -> None:
        """Close every pool."""
        for upstream in self.by_name.values():
            await upstream.client.aclose()
