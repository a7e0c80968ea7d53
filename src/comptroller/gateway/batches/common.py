"""What both batch APIs share at the edge: the caller, the tenant wall, the create sequence, upstream errors.

A batch create, for either API (:func:`create`):

1. the create's key names a ``batch_create`` row: the ``Idempotency-Key`` header when sent,
   else what the batch is made of (OpenAI: the input file id; Anthropic: a digest of the
   body), so the retries the openai and anthropic clients make on a timeout or a 5xx (they
   send no key of their own) never run or hold a batch twice. A key whose create succeeded
   answers that batch again; one in progress answers 409 (clients retry it); one that failed
   reserves afresh (a new attempt number in the line keys). To run the same file or requests
   again, send a new ``Idempotency-Key``;
2. every line is reserved (:meth:`BatchService.reserve`), or the batch is refused with the
   first refused line's verdict, in the API's error shape, and nothing is sent;
3. the batch goes to the provider; any failure there releases every line;
4. the batch's rows are written (``batch``, ``batch_lines``) and the key marked created.

A batch or file of another tenant (or none) is a 404 that says nothing more (DESIGN.md rule 13).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from comptroller.domain.state import StateKey
from comptroller.engine import Admission
from comptroller.gateway.attribution import attribute
from comptroller.gateway.batches.provider import Reply
from comptroller.gateway.batches.records import (
    BATCH_CREATE,
    BATCH_FILE,
    BatchRecord,
    CreateRecord,
    FileRecord,
    lines_state,
)
from comptroller.gateway.batches.service import BatchService, PlannedLine
from comptroller.gateway.errors import ErrorShape, GatewayError, error_response, verdict_response
from comptroller.gateway.identity import Caller
from comptroller.gateway.upstream import UpstreamError, UpstreamTimeoutError

__all__ = ["CREATING_STALE_S", "authenticate", "create", "json_response", "not_found", "open_summary", "owned_batch",
           "owned_file", "upstream_error", "upstream_failure"]

CREATING_STALE_S = 300.0
"""A create still marked in progress after this long was cut short (a crash): the next retry takes over."""


def authenticate(service: BatchService, request: Request) -> Caller:
    """The caller: ``Authorization: Bearer`` or, as Anthropic's client sends it, ``x-api-key``.

    Raises:
        GatewayError: 401.
    """
    headers: Any = request.headers
    if not headers.get("authorization") and headers.get("x-api-key"):
        headers = {"authorization": f"Bearer {headers['x-api-key']}"}
    anthropic = request.url.path.startswith("/v1/messages")  # the 401 names the header its clients send
    return service.gw.identity.authenticate(headers, key_header="x-api-key" if anthropic else "authorization")


def not_found(what: str, ident: str) -> GatewayError:
    """The 404 for a batch or file that is not the caller's (or does not exist)."""
    return GatewayError(404, f"no {what} {ident!r} for this key; it is created through this gateway by a key of "
                        "your tenant", code="not_found", param="id")


async def owned_batch(service: BatchService, caller: Caller, batch_id: str, api: str) -> BatchRecord:
    """The batch's row if the caller's tenant owns it (an admin key reads any).

    Raises:
        GatewayError: 404 otherwise; 503 when the ledger fails.
    """
    found = await service.ledger(service.record, batch_id)
    if found is None or found[0].api != api or (found[0].tenant != caller.key.tenant and not caller.admin):
        raise not_found("batch", batch_id)
    record: BatchRecord = found[0]
    return record


async def owned_file(service: BatchService, caller: Caller, file_id: str) -> FileRecord:
    """The file's row if the caller's tenant owns it.

    Raises:
        GatewayError: 404 otherwise; 503 when the ledger fails.
    """
    stored = await service.ledger(service.engine.store.state, StateKey(BATCH_FILE, file_id))
    record = None if stored is None else FileRecord.from_state(stored)
    if record is None or (record.tenant != caller.key.tenant and not caller.admin):
        raise not_found("file", file_id)
    return record


def upstream_error(exc: UpstreamError, provider: str) -> GatewayError:
    """502/504 for a provider that could not be reached; nothing is held."""
    status, code = (504, "upstream_timeout") if isinstance(exc, UpstreamTimeoutError) else (502, "upstream_error")
    return GatewayError(status, f"{exc}; nothing is held for this request", type_="upstream_error", code=code)


def upstream_failure(reply: Reply, provider: str, shape: ErrorShape) -> Response:
    """A provider's 4xx with a JSON body passes through as it came; anything else becomes a 502."""
    if 400 <= reply.status < 500 and reply.json():
        return Response(reply.body, status_code=reply.status, media_type="application/json")
    text = reply.body.decode("utf-8", "replace")[:500] or f"HTTP {reply.status}"
    return error_response(502, f"upstream {provider} answered HTTP {reply.status}: {text}", type_="upstream_error",
                          code="upstream_error", shape=shape)


def json_response(value: dict[str, Any], status: int = 200) -> Response:
    """A JSON answer."""
    return Response(json.dumps(value, separators=(",", ":")), status_code=status, media_type="application/json")


def _begin(service: BatchService, key: str, request: str) -> tuple[str, CreateRecord]:
    """Claim a create key: ``go`` (with the attempt), ``created``, ``busy`` or ``conflict`` (another request)."""
    store, now = service.engine.store, service.engine.clock.now()
    stored = store.state(StateKey(BATCH_CREATE, key))
    if stored is None:
        record = CreateRecord("creating", 1, started_at=now.isoformat(), request=request)
        return ("go" if store.put_state(record.state(key, 1), 0) else "busy"), record
    previous = CreateRecord.from_state(stored)
    if previous.request != request:
        return "conflict", previous
    if previous.status == "created":
        return "created", previous
    stale = now - datetime.fromisoformat(previous.started_at) > timedelta(seconds=CREATING_STALE_S)
    if previous.status == "creating" and not stale:
        return "busy", previous
    attempt = previous.attempt + 1 if previous.status == "failed" else previous.attempt  # a crash: reuse its holds
    record = CreateRecord("creating", attempt, started_at=now.isoformat(), request=request)
    return ("go" if store.put_state(record.state(key, stored.version + 1), stored.version) else "busy"), record


def _finish(service: BatchService, key: str, status: str, batch_id: str = "") -> None:
    store = service.engine.store
    stored = store.state(StateKey(BATCH_CREATE, key))
    if stored is not None:
        record = dataclasses.replace(CreateRecord.from_state(stored), status=status, batch_id=batch_id)
        store.put_state(record.state(key, stored.version + 1), stored.version)


def _save(service: BatchService, record: BatchRecord, reservations: dict[str, str]) -> None:
    store = service.engine.store
    store.put_state(lines_state(record.batch_id, reservations), 0)
    store.put_state(record.state(1), 0)


async def create(service: BatchService, request: Request, caller: Caller, *, api: str, provider: str,
                 lines: Sequence[PlannedLine], shape: ErrorShape,
                 send: Callable[[dict[str, Admission]], Awaitable[Reply]],
                 existing: Callable[[str], Awaitable[Response]], default_key: str,
                 input_file_id: str = "") -> Response:
    """Reserve every line, send the batch, keep its rows (see the module docstring).

    Args:
        send: sends the batch upstream once every line is held (it may rewrite each line's
            output limit from its admission).
        existing: answers a batch created before under the same key.
        default_key: the create's key when the request has no ``Idempotency-Key``.

    Raises:
        GatewayError: 400/403 for attribution, 409 while the same key's create runs, 502/504 for
            the provider (every hold released), 503 when the ledger fails.
    """
    gw = service.gw
    attribution = attribute(caller, request.headers, namespace=gw.namespace, groups=gw.groups)
    header = request.headers.get("idempotency-key")
    key = f"{caller.key.tenant}|{f'key:{header}' if header else default_key}"
    state, claim = await service.ledger(_begin, service, key, default_key)
    if state == "conflict":
        raise GatewayError(409, "this Idempotency-Key was used for another batch; send a new key for a new batch",
                           code="idempotency_conflict", param="idempotency-key")
    if state == "created":
        return await existing(claim.batch_id)
    if state == "busy":
        raise GatewayError(409, "a create with this Idempotency-Key is in progress; retry shortly",
                           type_="invalid_request_error", code="create_in_progress", headers={"Retry-After": "1"})
    try:
        held = await service.reserve(lines, attribution, f"batch|{key}|{claim.attempt}")
    except BaseException:
        await service.ledger(_finish, service, key, "failed")
        raise
    if isinstance(held, tuple):
        await service.ledger(_finish, service, key, "failed")
        custom_id, admission = held
        if admission.verdict is None:  # the ledger knew the line's key with another request
            raise GatewayError(409, f"batch request {custom_id!r}: its hold key was used for another request "
                               f"({admission.code}); retry with a new Idempotency-Key", code="idempotency_conflict")
        verdict = dataclasses.replace(admission.verdict, message=f"batch request {custom_id!r} (the batch is refused "
                                      f"whole, nothing was sent): {admission.verdict.message}")
        return verdict_response(verdict, shape)
    try:
        reply = await send(held)
    except BaseException as exc:
        await service.release(held.values())
        await service.ledger(_finish, service, key, "failed")
        if isinstance(exc, UpstreamError):
            raise upstream_error(exc, provider) from None
        raise
    batch_id = reply.json().get("id")
    if not reply.ok or not isinstance(batch_id, str) or not batch_id:
        await service.release(held.values())
        await service.ledger(_finish, service, key, "failed")
        return upstream_failure(reply, provider, shape)
    record = BatchRecord(batch_id=batch_id, tenant=caller.key.tenant, api=api, provider=provider, lines=len(held),
                         ceiling_mc=sum(a.ceiling_mc for a in held.values()), input_file_id=input_file_id)
    reservations = {cid: a.reservation.id for cid, a in held.items() if a.reservation is not None}
    await service.ledger(_save, service, record, reservations)
    await service.ledger(_finish, service, key, "created", batch_id)
    return json_response({**reply.json(), "comptroller_reconciliation": open_summary(record)})


def open_summary(record: BatchRecord) -> dict[str, Any]:
    """The ``comptroller_reconciliation`` of a batch not reconciled yet."""
    return {"status": "open", "lines": record.lines, "ceiling_mc": record.ceiling_mc}
