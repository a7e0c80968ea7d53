"""Anthropic Message Batches through the gateway, in Anthropic's shapes (the anthropic client works unchanged).

========================================  ===============================================================
route                                     what the gateway does
========================================  ===============================================================
``POST /v1/messages/batches``             bounds every request
                                          (:func:`comptroller.domain.batches.parse_anthropic_requests`),
                                          reserves all at the batch price or refuses the batch whole,
                                          sets each ``params.max_tokens`` to its reserved bound, sends it
``GET /v1/messages/batches/{id}``         the provider's batch (``results_url`` pointing at this gateway);
                                          once ``processing_status`` is ``ended``, reconciled, the report
                                          in ``comptroller_reconciliation``
``GET /v1/messages/batches/{id}/results`` the results JSONL (free)
``POST /v1/messages/batches/{id}/cancel`` forwarded; canceled requests are released when it ends
========================================  ===============================================================

Results say per ``custom_id`` ``succeeded`` (settled from ``message.usage``, cache reads and
writes included), ``errored``, ``canceled`` or ``expired`` (released); a request the results do
not mention is charged its bound (its outcome is unknown) and reported missing.
"""

from __future__ import annotations

import hashlib

from starlette.requests import Request
from starlette.responses import Response

from comptroller.domain.batch_results import LineResult, Unreturned, anthropic_results
from comptroller.domain.batches import BatchInputError, parse_anthropic_requests
from comptroller.engine import Admission
from comptroller.gateway.apis.request_body import loads_object, read_body
from comptroller.gateway.batches.common import (
    authenticate,
    create,
    json_response,
    open_summary,
    owned_batch,
    upstream_error,
    upstream_failure,
)
from comptroller.gateway.batches.provider import Reply
from comptroller.gateway.batches.records import BatchRecord
from comptroller.gateway.batches.service import BatchService, PlannedLine
from comptroller.gateway.errors import ErrorShape, GatewayError
from comptroller.gateway.upstream import UpstreamError

__all__ = ["API", "batch_results", "cancel_batch", "create_batch", "poll", "retrieve_batch"]

API = "anthropic"
_SHAPE = ErrorShape.ANTHROPIC


def _bad(message: str, param: str | None) -> GatewayError:
    return GatewayError(400, message, code="invalid_request", param=param)


async def create_batch(service: BatchService, request: Request) -> Response:
    """``POST /v1/messages/batches`` (see the module table)."""
    caller = authenticate(service, request)
    raw = await read_body(request, service.section.file_bytes_max)
    body = loads_object(raw)
    try:
        lines = parse_anthropic_requests(body)
    except BatchInputError as exc:
        raise _bad(str(exc), exc.param) from None
    providers = {}
    for line in lines:
        allowed = caller.key.models
        if allowed is not None and line.model not in allowed:
            raise GatewayError(403, f"this key may call {sorted(allowed)}, not {line.model!r} (request "
                               f"{line.custom_id!r})", type_="permission_error", code="model_not_allowed",
                               param="model")
        provider = service.gw.config.provider_for(line.model)
        if provider is None:
            raise GatewayError(400, f"no provider serves model {line.model!r} (request {line.custom_id!r}); add it "
                               "to [gateway.models]", code="model_not_found", param="model")
        if service.gw.config.providers[provider].kind != "anthropic":
            raise GatewayError(400, f"model {line.model!r} (request {line.custom_id!r}) is served by {provider!r}, "
                               "not a provider of kind \"anthropic\"; message batches go to Anthropic providers",
                               code="model_not_found", param="model")
        providers[provider] = line.model
    if len(providers) > 1:
        raise _bad(f"the batch's models go to different providers ({providers}); send one batch per provider",
                   "requests")
    provider = next(iter(providers))
    planned = [PlannedLine(line.custom_id, line.model, line.input_tokens_max, line.max_tokens) for line in lines]

    async def send(held: dict[str, Admission]) -> Reply:
        requests = [{"custom_id": line.custom_id,
                     "params": {**line.body, "max_tokens": held[line.custom_id].output_tokens_max}} for line in lines]
        return await service.upstream.call(provider, "POST", "/messages/batches", anthropic=True,
                                           body={**body, "requests": requests})

    async def existing(batch_id: str) -> Response:
        return await _retrieve(service, request, await owned_batch(service, caller, batch_id, API))

    return await create(service, request, caller, api=API, provider=provider, lines=planned, shape=_SHAPE,
                        send=send, existing=existing, default_key=f"body:{hashlib.sha256(raw).hexdigest()}")


async def _results(service: BatchService, record: BatchRecord) -> Reply:
    reply = await service.upstream.call(record.provider, "GET", f"/messages/batches/{record.batch_id}/results",
                                        anthropic=True)
    if not reply.ok:
        raise UpstreamError(f"upstream {record.provider} answered HTTP {reply.status} for the results of "
                            f"{record.batch_id}")
    return reply


async def _look(service: BatchService, record: BatchRecord) -> tuple[Reply, tuple[list[LineResult], Unreturned, str]
                                                                      | None]:
    reply = await service.upstream.call(record.provider, "GET", f"/messages/batches/{record.batch_id}",
                                        anthropic=True)
    if not reply.ok or reply.json().get("processing_status") != "ended":
        return reply, None
    results = anthropic_results((await _results(service, record)).body)
    return reply, (results, Unreturned.SETTLE_BOUND, "ended")


async def poll(service: BatchService, record: BatchRecord) -> tuple[list[LineResult], Unreturned, str] | None:
    """The reconciler's look at one batch: its results once it has ended (None while it runs).

    Raises:
        UpstreamError: the provider cannot be reached, or no longer knows the batch (404): its
            leases are then not renewed, so its lines end charged at their ceilings
            (``unknown_outcome``) unless a later reconcile corrects them.
    """
    reply, ended = await _look(service, record)
    if reply.status == 404:
        raise UpstreamError(f"upstream {record.provider} does not know batch {record.batch_id} (HTTP 404)")
    return ended


async def _retrieve(service: BatchService, request: Request, record: BatchRecord) -> Response:
    try:
        reply, ended = await _look(service, record)
    except UpstreamError as exc:
        raise upstream_error(exc, record.provider) from None
    if not reply.ok:
        return upstream_failure(reply, record.provider, _SHAPE)
    report = open_summary(record) if ended is None else await service.reconcile(record.batch_id, *ended)
    obj = reply.json()
    if obj.get("results_url"):
        obj["results_url"] = str(request.url_for("anthropic_batch_results", batch_id=record.batch_id))
    return json_response({**obj, "comptroller_reconciliation": report})


async def retrieve_batch(service: BatchService, request: Request) -> Response:
    """``GET /v1/messages/batches/{batch_id}`` (see the module table)."""
    caller = authenticate(service, request)
    return await _retrieve(service, request, await owned_batch(service, caller, request.path_params["batch_id"], API))


async def batch_results(service: BatchService, request: Request) -> Response:
    """``GET /v1/messages/batches/{batch_id}/results``: the caller's own batch's results (free)."""
    caller = authenticate(service, request)
    record = await owned_batch(service, caller, request.path_params["batch_id"], API)
    try:
        reply = await _results(service, record)
    except UpstreamError as exc:
        raise upstream_error(exc, record.provider) from None
    return Response(reply.body, media_type=reply.content_type or "application/binary")


async def cancel_batch(service: BatchService, request: Request) -> Response:
    """``POST /v1/messages/batches/{batch_id}/cancel`` (see the module table)."""
    caller = authenticate(service, request)
    record = await owned_batch(service, caller, request.path_params["batch_id"], API)
    try:
        reply = await service.upstream.call(record.provider, "POST", f"/messages/batches/{record.batch_id}/cancel",
                                            anthropic=True)
    except UpstreamError as exc:
        raise upstream_error(exc, record.provider) from None
    if not reply.ok:
        return upstream_failure(reply, record.provider, _SHAPE)
    return json_response({**reply.json(), "comptroller_reconciliation": open_summary(record)})
