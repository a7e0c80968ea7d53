"""The OpenAI Batch API through the gateway: files in, batches reserved whole, results reconciled.

=================================  ==================================================================
route                              what the gateway does
=================================  ==================================================================
``POST /v1/files``                 ``purpose=batch`` only: reads the JSONL, bounds every line
                                   (:func:`comptroller.domain.batches.parse_openai_jsonl`), sets each
                                   line's output limit to its bound (the key's agent's cap, as for a
                                   call), uploads that file to the model's provider, keeps the plan
``POST /v1/batches``               reserves every line at the batch price, or refuses the batch whole
                                   (nothing sent); then creates it upstream
``GET /v1/batches/{id}``           the provider's batch; once it has ended, reconciled (settle, release,
                                   report) and the report in ``comptroller_reconciliation``
``POST /v1/batches/{id}/cancel``   forwarded; the unfinished lines are released when it ends
``GET /v1/files/{id}``,            the caller's own batches' files only (input, output, error): free
``GET /v1/files/{id}/content``
=================================  ==================================================================

A finished batch (``completed``, ``failed``, ``expired``, ``cancelled``) is reconciled from its
output and error files: a ``completed`` batch's unreturned lines are charged their bound (the
outcome is unknown), the others' are released (not run). The file's lines were bounded with the
uploading key's agent; a create whose attribution gives another output bound is refused (400),
so a line never runs with more output than it reserved.
"""

from __future__ import annotations

import json
from typing import Any

import aiohttp
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import Request
from starlette.responses import Response

from comptroller.domain.batch_results import LineResult, Unreturned, openai_results
from comptroller.domain.batches import BatchInputError, BatchLine, parse_openai_jsonl
from comptroller.domain.caps import NoOutputCapError
from comptroller.engine import Admission
from comptroller.gateway.apis.request_body import loads_object, read_body
from comptroller.gateway.attribution import attribute
from comptroller.gateway.batches.common import (
    authenticate,
    create,
    json_response,
    open_summary,
    owned_batch,
    owned_file,
    upstream_error,
    upstream_failure,
)
from comptroller.gateway.batches.provider import Reply
from comptroller.gateway.batches.records import BatchRecord, FileRecord, LinePlan
from comptroller.gateway.batches.service import BatchService, PlannedLine
from comptroller.gateway.errors import ErrorShape, GatewayError
from comptroller.gateway.identity import Caller
from comptroller.gateway.upstream import UpstreamError
from comptroller.prices import UnknownModelError

__all__ = ["API", "ENDED", "cancel_batch", "create_batch", "file_content", "file_object", "poll", "retrieve_batch",
           "upload_file"]

API = "openai"
ENDED = {"completed": Unreturned.SETTLE_BOUND, "failed": Unreturned.RELEASE, "expired": Unreturned.RELEASE,
         "cancelled": Unreturned.RELEASE}
"""Terminal batch statuses (API reference, "The batch object") and what their unreturned lines mean."""
_WINDOW = "24h"


def _bad(message: str, param: str | None, code: str = "invalid_request") -> GatewayError:
    return GatewayError(400, message, code=code, param=param)


def _output_bound(service: BatchService, line: BatchLine, agent: str) -> int:
    """The line's output bound as a call's: its max_tokens lowered to the agent's cap (embeddings: 0)."""
    if line.api == "embeddings":
        return 0
    engine = service.gw.engine
    try:
        price = engine.prices.price(line.model, engine.clock.now())
        return engine.caps.output_tokens_max(agent=agent, requested=line.max_tokens, price=price,
                                             input_tokens_max=line.input_tokens_max)
    except UnknownModelError as exc:
        raise _bad(str(exc), f"{line.custom_id}.body.model", "model_not_found") from None
    except NoOutputCapError as exc:
        raise _bad(f"request {line.custom_id!r}: {exc}; send max_tokens", f"{line.custom_id}.body.max_tokens") \
            from None


def _bounded_line(line: BatchLine, url: str, bound: int, field: str) -> bytes:
    body = dict(line.body)
    if line.api != "embeddings":
        for name in [f for f in ("max_completion_tokens", "max_tokens") if body.get(f) is not None] or [field]:
            body[name] = bound
    item = {"custom_id": line.custom_id, "method": "POST", "url": url, "body": body}
    return json.dumps(item, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


async def _form_file(service: BatchService, request: Request) -> tuple[str, bytes]:
    limit = service.section.file_bytes_max
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _bad(f"the file is larger than [batch] file_bytes_max = {limit} bytes; split it", "file",
                   "request_too_large")
    try:
        form = await request.form(max_files=1, max_fields=8)
    except (MultiPartException, HTTPException) as exc:  # Starlette wraps the parser's error in a 400 HTTPException
        detail = exc.message if isinstance(exc, MultiPartException) else exc.detail
        raise _bad(f"the upload is not a valid multipart form ({detail}); send the fields purpose and file",
                   "file") from None
    purpose, upload = form.get("purpose"), form.get("file")
    if purpose != "batch":
        raise _bad(f"purpose must be \"batch\": this gateway accepts batch input files only, got {purpose!r}",
                   "purpose")
    if not isinstance(upload, UploadFile):
        raise _bad("file is required: the batch input JSONL, as a multipart file field", "file")
    content = await upload.read()
    if len(content) > limit:
        raise _bad(f"the file is larger than [batch] file_bytes_max = {limit} bytes; split it", "file",
                   "request_too_large")
    return upload.filename or "batch.jsonl", content


async def upload_file(service: BatchService, request: Request) -> Response:
    """``POST /v1/files`` (see the module table)."""
    caller = authenticate(service, request)
    gw = service.gw
    attribution = attribute(caller, request.headers, namespace=gw.namespace, groups=gw.groups)
    filename, content = await _form_file(service, request)
    try:
        lines = parse_openai_jsonl(content)
    except BatchInputError as exc:
        raise _bad(str(exc), exc.param) from None
    model = lines[0].model
    provider = _provider(service, caller, model)
    url = next(u for u, a in (("/v1/chat/completions", "chat"), ("/v1/embeddings", "embeddings")) if a == lines[0].api)
    field = gw.config.providers[provider].max_tokens_field
    plan, out = [], []
    for line in lines:
        bound = _output_bound(service, line, attribution.agent)
        plan.append(LinePlan(line.custom_id, line.input_tokens_max, bound, line.choices))
        out.append(_bounded_line(line, url, bound, field))
    form = aiohttp.FormData()
    form.add_field("purpose", "batch")
    form.add_field("file", b"\n".join(out) + b"\n", filename=filename, content_type="application/jsonl")
    try:
        reply = await service.upstream.call(provider, "POST", "/files", form=form)
    except UpstreamError as exc:
        raise upstream_error(exc, provider) from None
    file_id = reply.json().get("id")
    if not reply.ok or not isinstance(file_id, str):
        return upstream_failure(reply, provider, ErrorShape.OPENAI)
    record = FileRecord(file_id=file_id, tenant=caller.key.tenant, provider=provider, role="input",
                        agent=attribution.agent, model=model, endpoint=url, plan=tuple(plan))
    await service.ledger(service.engine.store.put_state, record.state(1), 0)
    return Response(reply.body, media_type="application/json")


def _provider(service: BatchService, caller: Caller, model: str) -> str:
    allowed = caller.key.models
    if allowed is not None and model not in allowed:
        raise GatewayError(403, f"this key may call {sorted(allowed)}, not {model!r}", type_="permission_error",
                           code="model_not_allowed", param="model")
    provider = service.gw.config.provider_for(model)
    if provider is None:
        raise _bad(f"no provider serves model {model!r}; add it to [gateway.models]", "model", "model_not_found")
    if service.gw.config.providers[provider].kind != "openai":
        raise _bad(f"model {model!r} is served by {provider!r}, a provider of kind "
                   f"{service.gw.config.providers[provider].kind!r}; OpenAI batches go to providers of kind "
                   "\"openai\" (use its own batch API)", "model", "model_not_found")
    return provider


async def create_batch(service: BatchService, request: Request) -> Response:
    """``POST /v1/batches`` (see the module table)."""
    caller = authenticate(service, request)
    body = loads_object(await read_body(request, service.gw.config.body_bytes_max))
    file_id = body.get("input_file_id")
    if not isinstance(file_id, str) or not file_id:
        raise _bad("input_file_id must name a file uploaded with purpose=batch", "input_file_id")
    if body.get("completion_window") != _WINDOW:
        raise _bad(f"completion_window must be \"{_WINDOW}\" (the only window the leases cover)", "completion_window")
    source = await owned_file(service, caller, file_id)
    if source.role != "input":
        raise _bad(f"file {file_id!r} is a batch's {source.role} file, not an input file", "input_file_id")
    if body.get("endpoint") != source.endpoint:
        raise _bad(f"endpoint must be {source.endpoint!r}, the url of every line of {file_id!r}", "endpoint")
    gw = service.gw
    agent = attribute(caller, request.headers, namespace=gw.namespace, groups=gw.groups).agent
    if agent != source.agent:
        raise _bad(f"the file's lines were bounded for agent {source.agent!r} when it was uploaded; create the batch "
                   f"as that agent (not {agent!r}), or upload the file again as this one", "x-comptroller-agent")
    bounds = {p.custom_id: p.output_tokens_max * p.choices for p in source.plan}  # what the engine holds
    lines = [PlannedLine(p.custom_id, source.model, p.input_tokens_max, p.output_tokens_max, p.choices)
             for p in source.plan]

    async def send(held: dict[str, Admission]) -> Reply:
        moved = [cid for cid, a in held.items() if a.output_tokens_max != bounds[cid]]
        if moved:
            raise GatewayError(400, f"request {moved[0]!r}: the output cap is now {held[moved[0]].output_tokens_max} "
                               f"tokens, not the {bounds[moved[0]]} the file was bounded with; upload it again",
                               code="invalid_request", param="input_file_id")
        return await service.upstream.call(source.provider, "POST", "/batches", body=body)

    async def existing(batch_id: str) -> Response:
        return await _retrieve(service, await owned_batch(service, caller, batch_id, API))

    return await create(service, request, caller, api=API, provider=source.provider, lines=lines,
                        shape=ErrorShape.OPENAI, send=send, existing=existing, default_key=f"file:{file_id}",
                        input_file_id=file_id)


async def _download(service: BatchService, record: BatchRecord, file_id: Any, role: str) -> bytes:
    """A result file's content, registered as the batch tenant's so it may download it."""
    if not isinstance(file_id, str) or not file_id:
        return b""
    file = FileRecord(file_id=file_id, tenant=record.tenant, provider=record.provider, role=role)
    await service.ledger(service.engine.store.put_state, file.state(1), 0)  # False when already known
    reply = await service.upstream.call(record.provider, "GET", f"/files/{file_id}/content")
    if not reply.ok:
        raise UpstreamError(f"upstream {record.provider} answered HTTP {reply.status} for file {file_id}")
    return reply.body


async def _look(service: BatchService, record: BatchRecord) -> tuple[Reply, tuple[list[LineResult], Unreturned, str]
                                                                      | None]:
    reply = await service.upstream.call(record.provider, "GET", f"/batches/{record.batch_id}")
    status = reply.json().get("status")
    if not reply.ok or status not in ENDED:
        return reply, None
    obj = reply.json()
    output = await _download(service, record, obj.get("output_file_id"), "output")
    errors = await _download(service, record, obj.get("error_file_id"), "error")
    return reply, (openai_results(output, errors), ENDED[str(status)], str(status))


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


async def _retrieve(service: BatchService, record: BatchRecord) -> Response:
    try:
        reply, ended = await _look(service, record)
    except UpstreamError as exc:
        raise upstream_error(exc, record.provider) from None
    if not reply.ok:
        return upstream_failure(reply, record.provider, ErrorShape.OPENAI)
    report = open_summary(record) if ended is None else await service.reconcile(record.batch_id, *ended)
    return json_response({**reply.json(), "comptroller_reconciliation": report})


async def retrieve_batch(service: BatchService, request: Request) -> Response:
    """``GET /v1/batches/{batch_id}`` (see the module table)."""
    caller = authenticate(service, request)
    return await _retrieve(service, await owned_batch(service, caller, request.path_params["batch_id"], API))


async def cancel_batch(service: BatchService, request: Request) -> Response:
    """``POST /v1/batches/{batch_id}/cancel`` (see the module table)."""
    caller = authenticate(service, request)
    record = await owned_batch(service, caller, request.path_params["batch_id"], API)
    try:
        reply = await service.upstream.call(record.provider, "POST", f"/batches/{record.batch_id}/cancel")
    except UpstreamError as exc:
        raise upstream_error(exc, record.provider) from None
    if not reply.ok:
        return upstream_failure(reply, record.provider, ErrorShape.OPENAI)
    return json_response({**reply.json(), "comptroller_reconciliation": open_summary(record)})


async def file_object(service: BatchService, request: Request) -> Response:
    """``GET /v1/files/{file_id}``: the caller's own batch file's object."""
    return await _file(service, request, "")


async def file_content(service: BatchService, request: Request) -> Response:
    """``GET /v1/files/{file_id}/content``: the caller's own batch file's bytes (free)."""
    return await _file(service, request, "/content")


async def _file(service: BatchService, request: Request, suffix: str) -> Response:
    caller = authenticate(service, request)
    record = await owned_file(service, caller, request.path_params["file_id"])
    try:
        reply = await service.upstream.call(record.provider, "GET", f"/files/{record.file_id}{suffix}")
    except UpstreamError as exc:
        raise upstream_error(exc, record.provider) from None
    if not reply.ok:
        return upstream_failure(reply, record.provider, ErrorShape.OPENAI)
    return Response(reply.body, media_type=reply.content_type or "application/octet-stream")
