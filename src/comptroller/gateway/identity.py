"""Who is calling: the API key (``Authorization: Bearer ck-...``), checked against the key store.

The key fixes the tenant and, if it is bound to one, the agent; the attribution a call
gets from its key and its ``X-Comptroller-*`` headers is :mod:`comptroller.gateway.attribution`.
"""

from __future__ import annotations

import hmac
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

import anyio
import anyio.to_thread
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from comptroller.gateway.errors import GatewayError
from comptroller.storage.keys import ApiKey, KeyStore, hash_key

__all__ = ["Caller", "Identity", "KeyPrefetch"]

_ENV_ADMIN_ID = "env-admin"
log = logging.getLogger("comptroller.gateway")


@dataclass(frozen=True, slots=True)
class Caller:
    """An authenticated caller (a stored key or the environment's admin key)."""

    key: ApiKey

    @property
    def admin(self) -> bool:
        """True for an admin key."""
        return self.key.admin


def _unauthorized(message: str) -> GatewayError:
    return GatewayError(401, message, type_="authentication_error", code="invalid_api_key",
                        headers={"WWW-Authenticate": "Bearer"})


class Identity:
    """Authenticates bearer keys against a :class:`KeyStore` and an optional admin key.

    A verified key is kept in memory for ``cache_ttl_s`` (at most ``cache_size_max`` keys,
    the oldest dropped first), so a key revoked on any replica stops working everywhere
    within that time, and most requests read no store. A key not in the cache is looked up
    in a worker thread by :meth:`prefetch` (the ASGI middleware :class:`KeyPrefetch` runs it
    before any route), waiting at most ``timeout_s``: the event loop never waits on the key
    store. What the lookup found, an unknown key or a store failure included, is kept for
    the request (``outcome_ttl_s``), so :meth:`authenticate`, called synchronously by the
    routes, answers from memory. A store failure is not reused by the next request's
    prefetch, which asks the store again: one slow lookup does not answer 503 to every
    request with that key for ``outcome_ttl_s``.

    :attr:`keys` is the store as the rest of the worker should use it: a key revoked
    through it (the admin API) leaves this worker's cache at once.

    Args:
        keys: the key store.
        admin_key: a plaintext admin key from the environment, or None.
        cache_ttl_s: how long a verified key is trusted without reading the store, seconds.
        timeout_s: the longest a request waits for the key store, seconds (then 503).
        cache_size_max: verified keys kept at most.
        clock: monotonic seconds (injected for tests).
    """

    outcome_ttl_s = 1.0  # an unknown key or a store failure is remembered for one request's length

    def __init__(self, keys: KeyStore, admin_key: str | None = None, *, cache_ttl_s: float = 10.0,
                 timeout_s: float = 2.0, cache_size_max: int = 10_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.keys: KeyStore = _EvictOnRevoke(keys, self)
        self._admin_digest = None if admin_key is None else hash_key(admin_key)
        self.cache_ttl_s, self.timeout_s, self._size_max, self._clock = cache_ttl_s, timeout_s, cache_size_max, clock
        self._cache: OrderedDict[str, tuple[float, ApiKey | GatewayError | None]] = OrderedDict()
        self._lock = threading.Lock()

    def authenticate(self, headers: Mapping[str, str], *, key_header: str = "authorization") -> Caller:
        """The caller of a request: from memory when :meth:`prefetch` ran, else from the store.

        Args:
            headers: the request's headers (the key in ``Authorization: Bearer``).
            key_header: the header the route's clients send the key in, named by the 401 for a
                missing key: ``authorization`` (OpenAI's clients) or ``x-api-key`` (Anthropic's).

        Raises:
            GatewayError: 401 when the key is missing, malformed, unknown or revoked; 503
                ``ledger_unavailable`` when the key store cannot answer.
        """
        token = _token(headers, key_header)
        digest = hash_key(token)
        if self._admin_digest is not None and hmac.compare_digest(self._admin_digest, digest):
            return Caller(ApiKey(id=_ENV_ADMIN_ID, tenant="*", agent=None, name="admin key from the environment",
                                 admin=True, models=None, created_at=datetime.fromtimestamp(0, UTC),
                                 revoked_at=None, digest=self._admin_digest))
        found = self._cached(digest)
        if found is _MISSING:
            found = self._lookup(token, digest)
        if isinstance(found, GatewayError):
            raise found
        if found is None:
            raise _unauthorized("invalid or revoked API key; create one with `comptroller key create`")
        assert isinstance(found, ApiKey)
        return Caller(found)

    async def prefetch(self, headers: Mapping[str, str]) -> None:
        """Look a request's key up in a worker thread (at most ``timeout_s``) unless it is cached."""
        header = headers.get("authorization") or ""
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return
        digest = hash_key(token)
        cached = self._cached(digest)
        if cached is not _MISSING and not isinstance(cached, GatewayError):
            return  # a verified key, or a key the store said is unknown; a store failure is asked again
        with anyio.move_on_after(self.timeout_s):
            await anyio.to_thread.run_sync(self._lookup, token, digest, abandon_on_cancel=True)
            return
        self._remember(digest, _key_store_unavailable(f"the key store gave no answer within {self.timeout_s:g} s"),
                       self.outcome_ttl_s)

    def _cached(self, digest: str) -> ApiKey | GatewayError | object | None:
        with self._lock:
            entry = self._cache.get(digest)
        if entry is None or entry[0] <= self._clock():
            return _MISSING
        return entry[1]

    def _remember(self, digest: str, value: ApiKey | GatewayError | None, ttl_s: float) -> None:
        with self._lock:
            self._cache[digest] = (self._clock() + ttl_s, value)
            self._cache.move_to_end(digest)
            while len(self._cache) > self._size_max:
                self._cache.popitem(last=False)

    def forget(self, key_id: str) -> None:
        """Drop a key from the cache (it was revoked here)."""
        with self._lock:
            for digest in [d for d, (_, v) in self._cache.items() if isinstance(v, ApiKey) and v.id == key_id]:
                del self._cache[digest]

    def _lookup(self, token: str, digest: str) -> ApiKey | GatewayError | None:
        """Read the store and remember what it said (a verified key for ``cache_ttl_s``)."""
        try:
            key = self.keys.verify(token)
        except Exception as exc:
            log.warning("key store lookup failed: %s", exc)
            found: ApiKey | GatewayError | None = _key_store_unavailable("the key store cannot be reached")
        else:
            found = key
        self._remember(digest, found, self.cache_ttl_s if isinstance(found, ApiKey) else self.outcome_ttl_s)
        return found


class _EvictOnRevoke:
    """A key store whose :meth:`revoke` also drops the key from an :class:`Identity`'s cache."""

    def __init__(self, store: KeyStore, identity: Identity) -> None:
        self._store, self._identity = store, identity

    def add(self, record: ApiKey) -> None:
        self._store.add(record)

    def verify(self, plaintext: str) -> ApiKey | None:
        return self._store.verify(plaintext)

    def get(self, key_id: str) -> ApiKey | None:
        return self._store.get(key_id)

    def keys(self, tenant: str | None = None) -> list[ApiKey]:
        return self._store.keys(tenant)

    def revoke(self, key_id: str, now: datetime) -> bool:
        found = self._store.revoke(key_id, now)
        self._identity.forget(key_id)
        return found

    def close(self) -> None:
        self._store.close()


class KeyPrefetch:
    """ASGI middleware: looks each request's API key up off the event loop, before any route runs.

    Args:
        app: the ASGI app it wraps.
        identity: the identity whose cache it fills.
    """

    def __init__(self, app: ASGIApp, identity: Identity) -> None:
        self.app, self.identity = app, identity

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Prefetch the key of an HTTP request, then run the app."""
        if scope["type"] == "http":
            await self.identity.prefetch(Headers(scope=scope))
        await self.app(scope, receive, send)


_MISSING = object()


def _token(headers: Mapping[str, str], key_header: str = "authorization") -> str:
    header = headers.get("authorization")
    if not header and key_header == "x-api-key":
        raise _unauthorized("no API key: send the header 'x-api-key: ck-...' (as the anthropic client does) or "
                            "'Authorization: Bearer ck-...'")
    if not header:
        raise _unauthorized("no API key: send the header 'Authorization: Bearer ck-...'")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise _unauthorized("the Authorization header must be 'Bearer <API key>'")
    return token


def _key_store_unavailable(why: str) -> GatewayError:
    return GatewayError(503, f"{why}, so the API key cannot be checked; retry shortly", type_="api_error",
                        code="ledger_unavailable", headers={"Retry-After": "1"})
