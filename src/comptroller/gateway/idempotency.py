"""``Idempotency-Key`` on paid routes, with Stripe's semantics, agreed by every replica through the ledger.

Stripe ("Idempotent requests", API reference): a client sends a key of its choosing with a
POST; a retry with the same key gets the first request's result instead of a second
execution. Here a result is a paid call, so a retry after a timeout is not paid twice.

==========================================  =================================================
a request with ``Idempotency-Key: K``       answer
==========================================  =================================================
K unseen (or its record expired, or freed)  run the route; its 2xx answer is stored for 24 h
K's first request still running             409 ``idempotency_key_in_use``, ``Retry-After: 1``
K done, same route and same body            the stored answer again, ``Idempotent-Replayed:
                                            true``; nothing goes upstream, nothing is charged
K seen with another route or body           422 ``idempotency_key_reused``, naming the key
K's first answer was not a 2xx              nothing stored (nothing was served and charged):
                                            K is free again, a retry runs
K's first answer was over 1 MiB             409 ``idempotency_replay_unavailable`` (it was
                                            served and charged once; use a new key to call again)
==========================================  =================================================

Records live in the ledger's state rows (kind ``idempotency``), claimed by compare-and-set
(:meth:`LedgerStore.put_state`), so exactly one request among concurrent retries on any
replica runs. Keys are per tenant: the row key is a hash of the caller's tenant and K. A
claim holds for ``read_timeout_s + shutdown_grace_s``; a claim whose worker died before it
stored an answer can be taken over after that (the first attempt's hold is resolved by the
ledger's own rule for calls whose outcome is unknown).

Streams: the answer is recorded as it is sent (the server-sent events, byte for byte), so a
retry of a finished stream replays the same events as a stream. A stream the client left
before its end is not stored (the generated part was charged; the key is freed).

Apply it to any route handler: ``Route(path, idempotent(handler), methods=["POST"])``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import anyio
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from comptroller.domain.defenses.verdict import JsonScalar
from comptroller.domain.state import StateKey, StoredState
from comptroller.gateway.apis.unmetered import shape_of
from comptroller.gateway.errors import GatewayError
from comptroller.gateway.runtime import Gateway

__all__ = ["HEADER", "REPLAYED_HEADER", "RESPONSE_BYTES_MAX", "TTL_S", "idempotent"]

log = logging.getLogger("comptroller.gateway")
HEADER = "idempotency-key"
REPLAYED_HEADER = "Idempotent-Replayed"
TTL_S = 24 * 3600  # Stripe keeps keys 24 hours
RESPONSE_BYTES_MAX = 1_048_576
_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")  # printable ASCII, as Stripe's keys (up to 255 characters)
_KIND = "idempotency"
_KEPT_HEADERS = ("content-type",)
_KEPT_PREFIX = "x-comptroller-"

Handler = Callable[[Request], Awaitable[Response]]


def _error(status: int, message: str, code: str, headers: dict[str, str] | None = None) -> GatewayError:
    return GatewayError(status, message, type_="invalid_request_error" if status < 500 else "api_error",
                        code=code, param="idempotency-key", headers=headers)


def _unavailable() -> GatewayError:
    return GatewayError(503, "the ledger cannot be reached, so the Idempotency-Key cannot be checked; retry shortly",
                        type_="api_error", code="ledger_unavailable", headers={"Retry-After": "1"})


@dataclass(frozen=True, slots=True)
class _Claim:
    """What the ledger said about a key: ``state`` None (ours now), or the stored record's."""

    key: StateKey
    version: int
    record: dict[str, JsonScalar]


def _row_key(tenant: str, key: str) -> StateKey:
    digest = hashlib.sha256(f"{tenant}\x00{key}".encode()).hexdigest()
    return StateKey(_KIND, digest)


def _claim(gw: Gateway, key: StateKey, fingerprint: str, now_s: float) -> _Claim:
    """Take the key (version bumped, state ``in_flight``), or return the live record that holds it."""
    lease_s = gw.config.read_timeout_s + gw.config.shutdown_grace_s
    for _ in range(3):  # a lost compare-and-set re-reads: someone else took it, or it changed state
        stored = gw.engine.store.state(key)
        version = 0 if stored is None else stored.version
        record = {} if stored is None else dict(stored.record)
        state = record.get("state")
        live = (state == "done" and float(record.get("expires_at") or 0) > now_s) or (
            state == "in_flight" and float(record.get("lease_until") or 0) > now_s)
        if live:
            return _Claim(key, version, record)
        mine: dict[str, JsonScalar] = {"state": "in_flight", "fingerprint": fingerprint, "lease_until": now_s + lease_s}
        if gw.engine.store.put_state(StoredState(key, version + 1, mine), expected_version=version):
            return _Claim(key, version + 1, {})
    raise _error(409, "this Idempotency-Key is changing hands too fast; retry", "idempotency_key_in_use",
                 {"Retry-After": "1"})


def _finish(gw: Gateway, claim: _Claim, fingerprint: str, answer: dict[str, JsonScalar] | None, now_s: float) -> None:
    """Store the answer (``done`` for 24 h), or free the key (``answer`` None)."""
    record: dict[str, JsonScalar] = {"state": "open", "fingerprint": fingerprint}
    if answer is not None:
        record = {"state": "done", "fingerprint": fingerprint, "expires_at": now_s + TTL_S, **answer}
    if not gw.engine.store.put_state(StoredState(claim.key, claim.version + 1, record), expected_version=claim.version):
        log.warning("idempotency record %s changed under its owner; the answer is not stored", claim.key.key)


def _replay(record: dict[str, JsonScalar]) -> Response:
    if record.get("too_large"):
        raise _error(409, f"the first request with this Idempotency-Key was served and charged, but its answer was "
                     f"larger than {RESPONSE_BYTES_MAX} bytes and was not stored; send a new key to call again",
                     "idempotency_replay_unavailable")
    headers = dict(json.loads(str(record["headers"])))
    headers[REPLAYED_HEADER] = "true"
    body = base64.b64decode(str(record["body"]))
    return Response(body, status_code=int(str(record["status"])), headers=headers)


def idempotent(handler: Handler) -> Handler:
    """Wrap a route handler with ``Idempotency-Key`` (see the module docstring); without the header it is unchanged.

    Raises (as responses): 400 for a malformed key or an oversized body, 401 from the key
    check, 409 while the first request runs, 422 for a key reused with another request,
    503 ``ledger_unavailable`` when the ledger cannot be reached.
    """
    async def handle(request: Request) -> Response:
        key = request.headers.get(HEADER)
        if key is None:
            return await handler(request)
        try:
            return await _idempotent(handler, request, key)
        except GatewayError as exc:
            return exc.response(shape_of(request.url.path))

    return handle


async def _idempotent(handler: Handler, request: Request, key: str) -> Response:
    gw: Gateway = request.app.state.gateway
    if not _KEY.match(key):
        raise _error(400, "Idempotency-Key must be 1 to 255 printable ASCII characters without spaces",
                     "invalid_idempotency_key")
    caller = gw.identity.authenticate(request.headers)
    declared = request.headers.get("content-length", "")
    if not declared.isdigit() or int(declared) > gw.config.body_bytes_max:
        raise _error(400, f"a request with an Idempotency-Key needs a Content-Length of at most "
                     f"{gw.config.body_bytes_max} bytes", "invalid_request")
    body = await request.body()
    fingerprint = hashlib.sha256(request.url.path.encode() + b"\x00" + body).hexdigest()
    row = _row_key(caller.key.tenant, key)
    now_s = gw.engine.clock.now().timestamp()
    claim = await _ledger(gw, _claim, gw, row, fingerprint, now_s)
    if claim.record:
        if claim.record.get("fingerprint") != fingerprint:
            raise _error(422, f"Idempotency-Key {key!r} was already used with a different request (another body "
                         "or endpoint); send a new key for a new request", "idempotency_key_reused")
        if claim.record.get("state") == "in_flight":
            raise _error(409, f"a request with Idempotency-Key {key!r} is still in progress; retry after it ends",
                         "idempotency_key_in_use", {"Retry-After": "1"})
        return _replay(claim.record)
    try:
        response = await handler(request)
    except BaseException:
        with anyio.CancelScope(shield=True):
            await _ledger(gw, _finish, gw, claim, fingerprint, None, now_s)
        raise
    return _Recording(response, gw, claim, fingerprint, now_s)


async def _ledger(gw: Gateway, operation: Callable[..., Any], *args: Any) -> Any:
    """A ledger operation through :meth:`Gateway.run` (bounded); any ledger failure is 503."""
    try:
        return await gw.run(operation, *args)
    except GatewayError:
        raise
    except Exception:
        log.exception("idempotency record: the ledger failed")
        raise _unavailable() from None


class _Recording(Response):
    """Sends the route's answer and records it as it goes; at its end, stores it (2xx) or frees the key."""

    def __init__(self, inner: Response, gw: Gateway, claim: _Claim, fingerprint: str, now_s: float) -> None:
        self.inner, self.gw, self.claim, self.fingerprint, self.now_s = inner, gw, claim, fingerprint, now_s
        self.status_code = inner.status_code
        self.background = None
        self.raw_headers = inner.raw_headers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        status, headers, chunks, size, complete = 500, {}, [], 0, False

        async def recording_send(message: Message) -> None:
            nonlocal status, headers, size, complete
            if message["type"] == "http.response.start":
                status = int(message["status"])
                for name, value in message.get("headers", []):
                    text = name.decode("latin-1").lower()
                    if text in _KEPT_HEADERS or text.startswith(_KEPT_PREFIX):
                        headers[text] = value.decode("latin-1")
            elif message["type"] == "http.response.body":
                body = message.get("body", b"")
                size += len(body)
                if size <= RESPONSE_BYTES_MAX:
                    chunks.append(body)
                complete = not message.get("more_body", False)
            await send(message)

        try:
            await self.inner(scope, receive, recording_send)
        finally:
            answer: dict[str, JsonScalar] | None = None
            if complete and 200 <= status < 300:
                answer = {"too_large": True} if size > RESPONSE_BYTES_MAX else {
                    "status": status, "headers": json.dumps(headers),
                    "body": base64.b64encode(b"".join(chunks)).decode("ascii")}
            try:
                with anyio.CancelScope(shield=True):
                    await _ledger(self.gw, _finish, self.gw, self.claim, self.fingerprint, answer, self.now_s)
            except GatewayError:
                log.warning("idempotency record %s not stored (ledger unavailable); retries get 409 until its lease "
                            "ends", self.claim.key.key)
