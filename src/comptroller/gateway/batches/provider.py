"""The provider side of the batch endpoints: files, batches and results over one pooled aiohttp session.

Requests go to the provider's ``base_url`` (the API root, ``.../v1``) with its key: OpenAI
style (``Authorization: Bearer``) for files and batches, Anthropic style (``x-api-key``,
``anthropic-version``) for message batches. A failed connection attempt (nothing sent) is
retried ``connect_retries`` times, nothing else, so a batch is never created twice by the
gateway. Failures surface as :class:`~comptroller.gateway.upstream.UpstreamError` or
:class:`~comptroller.gateway.upstream.UpstreamTimeoutError`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import aiohttp

from comptroller.gateway.config import GatewayConfig
from comptroller.gateway.upstream import UpstreamError, UpstreamTimeoutError

__all__ = ["ANTHROPIC_VERSION", "BatchUpstream", "Reply"]

ANTHROPIC_VERSION = "2023-06-01"


@dataclass(frozen=True, slots=True)
class Reply:
    """A provider's whole answer."""

    status: int
    body: bytes
    content_type: str

    @property
    def ok(self) -> bool:
        """True for 2xx."""
        return 200 <= self.status < 300

    def json(self) -> dict[str, Any]:
        """The body as a JSON object ({} when it is not one)."""
        try:
            value = json.loads(self.body)
        except ValueError:
            return {}
        return value if isinstance(value, dict) else {}


class BatchUpstream:
    """Calls the configured providers' batch endpoints (opened lazily in the worker's event loop).

    Args:
        config: the gateway settings (providers, timeouts, retries).
    """

    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        g = self.config
        timeout = aiohttp.ClientTimeout(total=None, connect=g.pool_timeout_s + g.connect_timeout_s,
                                        sock_connect=g.connect_timeout_s, sock_read=g.read_timeout_s)
        # No cookie jar: one session serves every tenant (see gateway.upstream.Upstream).
        return aiohttp.ClientSession(timeout=timeout, skip_auto_headers=("User-Agent",),
                                     cookie_jar=aiohttp.DummyCookieJar())

    def _headers(self, provider: str, anthropic: bool) -> dict[str, str]:
        key = self.config.providers[provider].api_key()
        if anthropic:
            return {"anthropic-version": ANTHROPIC_VERSION, **({"x-api-key": key} if key else {})}
        return {"authorization": f"Bearer {key}"} if key else {}

    async def call(self, provider: str, method: str, path: str, *, anthropic: bool = False,
                   body: dict[str, Any] | None = None, form: aiohttp.FormData | None = None) -> Reply:
        """One request to ``base_url + path``; the whole answer.

        Raises:
            UpstreamTimeoutError: no answer in time.
            UpstreamError: the connection failed (after the connect retries) or broke.
        """
        if self._session is None:
            self._session = self._open()
        url = self.config.providers[provider].base_url.rstrip("/") + path
        headers = self._headers(provider, anthropic)
        data: Any = form
        if body is not None:
            data = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
            headers["content-type"] = "application/json"
        for attempt in range(self.config.connect_retries + 1):
            try:
                async with self._session.request(method, url, data=data, headers=headers) as response:
                    return Reply(response.status, await response.read(), response.headers.get("content-type", ""))
            except aiohttp.ClientConnectorError as exc:  # nothing was sent: safe to try again
                if attempt == self.config.connect_retries or form is not None:
                    raise UpstreamError(f"upstream {provider}: {exc}") from None
            except TimeoutError:
                raise UpstreamTimeoutError(f"upstream {provider} timed out") from None
            except aiohttp.ClientError as exc:
                raise UpstreamError(f"upstream {provider}: {type(exc).__name__}: {exc}") from None
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def aclose(self) -> None:
        """Close the pool."""
        if self._session is not None:
            await self._session.close()
