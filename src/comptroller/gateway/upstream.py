"""The upstream side: one pooled ``aiohttp.ClientSession`` per configured provider, behind a small seam.

Each provider gets keep-alive connections (at most ``pool_connections_max`` per worker),
a connect timeout (pool wait included) and a read timeout between bytes. A failed
connection attempt (``aiohttp.ClientConnectorError``: nothing was sent) is retried up to
``connect_retries`` times; nothing else is ever retried, so a request that reached the
provider is never sent twice and a call is never paid twice.

Why aiohttp and not httpx: on this project's 2-core VM an httpx ``AsyncClient`` round trip
to a local stub costs about 3.5 ms (almost all of it Python CPU in httpcore, h11 and
anyio), aiohttp's about 1.0 ms (C HTTP parser); the gateway's added-latency target is
0.5 ms (see BENCHMARKS.md).

:class:`UpstreamResponse` is all the call path sees: the status, the whole body or its
lines, and ``release`` (done: the connection goes back to the pool) or ``abort`` (close
it mid-answer, so the provider stops generating). Failures surface as
:class:`UpstreamTimeoutError` or :class:`UpstreamError`.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson

from comptroller.gateway.config import GatewayConfig, ProviderConfig

__all__ = ["Upstream", "UpstreamError", "UpstreamResponse", "UpstreamTimeoutError", "Upstreams", "body_bytes"]


class UpstreamError(Exception):
    """The provider could not be reached, or the connection broke."""


class UpstreamTimeoutError(UpstreamError):
    """The provider did not answer, or stopped sending, within the timeout."""


def body_bytes(body: dict[str, Any]) -> bytes:
    """A request body as compact UTF-8 JSON, by ``orjson`` (about 10x ``json``'s speed on the hot path).

    What ``orjson`` cannot write (an integer beyond 64 bits, a lone surrogate: both only in a body
    ``json`` decoded) is written by ``json`` as before. Both give the same JSON values (floats in
    their shortest round-trip form; ``orjson`` spells ``1e+16`` as ``1e16``).
    """
    try:
        return orjson.dumps(body)
    except (orjson.JSONEncodeError, TypeError):
        return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _translate(exc: BaseException, provider: str) -> UpstreamError:
    if isinstance(exc, TimeoutError):
        return UpstreamTimeoutError(f"upstream {provider} timed out")
    return UpstreamError(f"upstream {provider}: {type(exc).__name__}: {exc}")


class UpstreamResponse:
    """An open answer from a provider."""

    def __init__(self, response: aiohttp.ClientResponse, provider: str) -> None:
        self._response = response
        self.provider = provider
        self.status = response.status
        self._done = False

    @property
    def ok(self) -> bool:
        """True for a 2xx status."""
        return 200 <= self.status < 300

    async def read(self) -> bytes:
        """The whole body.

        Raises:
            UpstreamError: the connection broke or timed out.
        """
        try:
            return await self._response.read()
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise _translate(exc, self.provider) from None

    async def lines(self) -> AsyncIterator[str]:
        """The body line by line, without line endings (SSE).

        Raises:
            UpstreamError: the connection broke or timed out.
        """
        try:
            async for raw in self._response.content:
                yield raw.decode("utf-8").rstrip("\r\n")
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise _translate(exc, self.provider) from None

    def release(self) -> None:
        """Done with it, body read: the connection returns to the pool."""
        if not self._done:
            self._done = True
            self._response.release()

    def abort(self) -> None:
        """Close the connection now, mid-answer, so the provider sees the client leave (no-op once released)."""
        if not self._done:
            self._done = True
            self._response.close()


ANTHROPIC_VERSION = "2023-06-01"
"""The ``anthropic-version`` sent to an Anthropic upstream when the client sent none (Anthropic docs, "Versions")."""


class Upstream:
    """One provider: its settings, key and pooled session (opened in the worker's event loop).

    Its key goes in the family's header: ``authorization: Bearer`` (``openai``), or
    ``x-api-key`` with ``anthropic-version`` (``anthropic``; Anthropic docs, "API overview").
    """

    def __init__(self, name: str, config: ProviderConfig, gateway: GatewayConfig) -> None:
        self.name = name
        self.config = config
        self.root = config.base_url.rstrip("/")
        # identity: the answer is read for its usage and passed on as received, and the session does
        # not decompress (aiohttp would otherwise ask for gzip and hand over the compressed bytes).
        self.headers = {"content-type": "application/json", "accept-encoding": "identity"}
        key = config.api_key()
        if config.kind == "anthropic":
            self.headers["anthropic-version"] = ANTHROPIC_VERSION
            if key is not None:
                self.headers["x-api-key"] = key
        elif key is not None:
            self.headers["authorization"] = f"Bearer {key}"
        self._gateway = gateway
        self._session: aiohttp.ClientSession | None = None

    def _open_session(self) -> aiohttp.ClientSession:
        g = self._gateway
        connector = aiohttp.TCPConnector(limit=g.pool_connections_max, limit_per_host=g.pool_connections_max)
        timeout = aiohttp.ClientTimeout(total=None, connect=g.pool_timeout_s + g.connect_timeout_s,
                                        sock_connect=g.connect_timeout_s, sock_read=g.read_timeout_s)
        # No cookie jar: the session serves every tenant, so a cookie one answer sets (a CDN's, say) must not
        # ride on the next tenant's request; it also spares each request the jar's filtering.
        return aiohttp.ClientSession(connector=connector, timeout=timeout, headers=self.headers,
                                     auto_decompress=False, skip_auto_headers=("User-Agent",),
                                     cookie_jar=aiohttp.DummyCookieJar())

    async def open(self, path: str, body: dict[str, Any], headers: dict[str, str] | None = None) -> UpstreamResponse:
        """POST ``body`` to ``path`` under the provider's root; the answer is open (read it, then release
        or abort it).

        Args:
            path: the API path after ``base_url`` (``/chat/completions``, ``/messages``...).
            headers: per-request headers beside the provider's (``anthropic-version``, ``anthropic-beta``).

        Raises:
            UpstreamTimeoutError: the provider did not answer in time.
            UpstreamError: the connection failed (after the connect retries).
        """
        if self._session is None:
            self._session = self._open_session()
        content = body_bytes(body)
        for attempt in range(self._gateway.connect_retries + 1):
            try:
                response = await self._session.post(self.root + path, data=content, headers=headers or None)
            except aiohttp.ClientConnectorError as exc:  # nothing was sent: safe to try again
                if attempt == self._gateway.connect_retries:
                    raise _translate(exc, self.name) from None
            except (TimeoutError, aiohttp.ClientError) as exc:
                raise _translate(exc, self.name) from None
            else:
                return UpstreamResponse(response, self.name)
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def aclose(self) -> None:
        """Close the pool."""
        if self._session is not None:
            await self._session.close()


class Upstreams:
    """Every configured provider, by name."""

    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self.by_name = {name: Upstream(name, provider, config) for name, provider in config.providers.items()}

    def for_model(self, model: str) -> Upstream | None:
        """The provider serving ``model``, or None if none does."""
        name = self.config.provider_for(model)
        return None if name is None else self.by_name[name]

    async def aclose(self) -> None:
        """Close every pool."""
        for upstream in self.by_name.values():
            await upstream.aclose()
