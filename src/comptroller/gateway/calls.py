"""The call path of ``POST /v1/chat/completions``.

authenticate -> read and check the body -> attribute -> admit (every defense and
budget) -> forward with the output bound set -> read usage -> settle -> respond.

The output bound the engine reserved (the agent's cap when the request has no
``max_tokens`` or asks for more) is what goes upstream, in every output-limit field
the client sent (else the provider's ``max_tokens_field``), so the reserved ceiling
stays a true bound. Streams force ``stream_options.include_usage`` upstream; the
usage chunk reaches the client only if it asked for it.

Every exit settles or releases, exactly once (:class:`~comptroller.gateway.runtime.Gateway`):

=======================================================  ==================================================
exit                                                     ledger
=======================================================  ==================================================
completed (usage read)                                   settle the reported usage
completed without usage                                  settle the bound: input bound, output bound
upstream 4xx / 5xx, connect error, timeout before        release (the provider bills nothing)
any answer
client disconnect or upstream failure mid-stream         settle what was generated (the provider bills it):
                                                         the usage if seen, else the input bound and the
                                                         output seen (UTF-8 bytes of the text, an upper bound
                                                         on its tokens; :mod:`comptroller.domain.tokens`);
                                                         the upstream request is aborted
worker shutdown                                          release what is still in flight (``release_all``)
=======================================================  ==================================================
"""

from __future__ import annotations

import json
import time
from typing import Any

import anyio
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from comptroller.domain.ledger import Reservation
from comptroller.domain.usage import Usage, from_openai_usage
from comptroller.engine import Admission, CallRequest
from comptroller.gateway.chat_request import ChatRequest, parse_chat_request
from comptroller.gateway.config import ProviderConfig
from comptroller.gateway.errors import GatewayError, error_response, verdict_response
from comptroller.gateway.identity import Caller, attribute
from comptroller.gateway.runtime import Gateway, Settled
from comptroller.gateway.upstream import Upstream, UpstreamError, UpstreamResponse, UpstreamTimeoutError

__all__ = ["chat_completions", "check_model_allowed", "forward_body", "read_body",
           "read_chat", "usage_from"]

_MESSAGE_MAX = 2000


async def read_body(request: Request, limit_bytes: int) -> bytes:
    """The request body, refused with 400 once it passes ``limit_bytes``."""
    too_large = GatewayError(400, f"the request body is larger than the limit of {limit_bytes} bytes; "
                             "send less, or raise [gateway] body_bytes_max", code="request_too_large")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit_bytes:
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit_bytes:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


def forward_body(chat: ChatRequest, output_tokens_max: int, provider: ProviderConfig) -> dict[str, Any]:
    """The body sent upstream: the client's, with the reserved output bound and usage in streams."""
    body = dict(chat.body)
    fields = [f for f in ("max_completion_tokens", "max_tokens") if body.get(f) is not None]
    for name in fields or [provider.max_tokens_field]:
        body[name] = output_tokens_max
    if chat.stream:
        body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
    return body


def usage_from(value: Any) -> Usage | None:
    """Usage from an OpenAI ``usage`` object, or None when absent or malformed."""
    return from_openai_usage(value)


def _bound(reservation: Reservation, output_tokens: int | None = None) -> Usage:
    out = reservation.output_tokens_max if output_tokens is None else min(output_tokens,
                                                                          reservation.output_tokens_max)
    return Usage(input_tokens=reservation.input_tokens_max, output_tokens=out)


def _upstream_failure(status: int, raw: bytes, provider: str) -> Response:
    """A provider's 4xx passes through as it came; a 5xx becomes 502 with the provider's message."""
    try:
        parsed = json.loads(raw)
        message = str(parsed["error"]["message"])
    except (ValueError, KeyError, TypeError):
        parsed, message = None, raw.decode("utf-8", "replace")[:_MESSAGE_MAX] or f"HTTP {status}"
    if 400 <= status < 500 and parsed is not None:
        return Response(raw, status_code=status, media_type="application/json")
    if 400 <= status < 500:
        return error_response(status, f"{provider}: {message}", type_="invalid_request_error", code="upstream_error")
    return error_response(502, f"upstream {provider} answered HTTP {status}: {message}", type_="upstream_error",
                          code="upstream_error")


def _call_headers(admission: Admission, settled: Settled | None = None) -> dict[str, str]:
    headers = {"X-Comptroller-Model": admission.model, "X-Comptroller-Ceiling-Mc": str(admission.ceiling_mc)}
    remaining = admission.remaining_mc  # with the ceiling held: a stream's headers go before its settle
    if settled is not None and settled.cost_mc is not None:
        headers["X-Comptroller-Cost-Mc"] = str(settled.cost_mc)
        remaining = None if remaining is None else remaining + admission.ceiling_mc - settled.cost_mc
    if remaining is not None:
        headers["X-Comptroller-Budget-Remaining-Mc"] = str(remaining)
    return headers


def _upstream_error(exc: UpstreamError, what: str) -> GatewayError:
    if isinstance(exc, UpstreamTimeoutError):
        return GatewayError(504, f"{exc}; {what}", type_="upstream_error", code="upstream_timeout")
    return GatewayError(502, f"{exc}; {what}", type_="upstream_error", code="upstream_error")


async def _open(gw: Gateway, upstream: Upstream, body: dict[str, Any], reservation: Reservation) -> UpstreamResponse:
    """Send upstream; on any failure before an answer, release and raise the 502/504."""
    try:
        return await upstream.open_chat(body)
    except UpstreamError as exc:
        await gw.run(gw.release, reservation)
        raise _upstream_error(exc, "nothing was charged") from None
    except BaseException:
        await gw.run(gw.release, reservation)
        raise


async def _unary(gw: Gateway, upstream: Upstream, body: dict[str, Any], admission: Admission,
                 started: float) -> Response:
    reservation = admission.reservation
    assert reservation is not None
    sent = time.perf_counter()
    response = await _open(gw, upstream, body, reservation)
    try:
        raw = await response.read()
    except BaseException as exc:
        response.abort()
        if response.ok:  # the provider ran the call: charge the bound
            await gw.run(gw.settle, reservation, _bound(reservation))
        else:
            await gw.run(gw.release, reservation)
        if isinstance(exc, UpstreamError):
            raise _upstream_error(exc, "the call was charged at its reserved bound") from None
        raise
    response.release()
    returned = time.perf_counter()
    gw.metrics.upstream_s.labels(upstream.name).observe(returned - sent)
    if not response.ok:
        await gw.run(gw.release, reservation)
        return _upstream_failure(response.status, raw, upstream.name)
    try:
        usage = usage_from(json.loads(raw).get("usage"))
    except (ValueError, AttributeError):
        usage = None
    settled = await gw.run(gw.settle, reservation, usage or _bound(reservation))
    gw.metrics.overhead_s.observe((sent - started) + (time.perf_counter() - returned))
    return Response(raw, media_type="application/json", headers=_call_headers(admission, settled))


class _Tally:
    """What a stream has generated so far."""

    def __init__(self) -> None:
        self.chunks = 0
        self.text_bytes = 0
        self.usage: Usage | None = None

    def observe(self, chunk: dict[str, Any]) -> None:
        usage = usage_from(chunk.get("usage"))
        if usage is not None:
            self.usage = usage
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") if isinstance(choice, dict) else None
            if not isinstance(delta, dict):
                continue
            self.chunks += 1
            for name in ("content", "reasoning_content", "refusal"):
                if isinstance(delta.get(name), str):
                    self.text_bytes += len(delta[name].encode("utf-8"))
            for call in delta.get("tool_calls") or ():
                arguments = (call.get("function") or {}).get("arguments") if isinstance(call, dict) else None
                if isinstance(arguments, str):
                    self.text_bytes += len(arguments.encode("utf-8")) + 8

    def usage_or_bound(self, reservation: Reservation) -> Usage:
        """The reported usage, else the input bound and an upper bound on the output seen."""
        return self.usage or _bound(reservation, max(self.chunks, self.text_bytes))


class _Relay(Response):
    """Streams the upstream SSE to the client, then settles (or, cut short, settles what was generated)."""

    def __init__(self, *, gw: Gateway, upstream: Upstream, response: UpstreamResponse, admission: Admission,
                 chat: ChatRequest, started: float, sent: float) -> None:
        # not Response.__init__: it would declare a Content-Length of the (empty) body
        self.status_code, self.media_type, self.background = 200, "text/event-stream", None
        self.init_headers(_call_headers(admission))
        self.gw, self.upstream, self.upstream_response = gw, upstream, response
        self.admission, self.chat, self.started, self.sent = admission, chat, started, sent
        self.tally = _Tally()
        self.settled: Settled | None = None

    @property
    def reservation(self) -> Reservation:
        assert self.admission.reservation is not None
        return self.admission.reservation

    async def _settle(self) -> Settled:
        if self.settled is None:
            done = time.perf_counter()
            self.gw.metrics.upstream_s.labels(self.upstream.name).observe(done - self.sent)
            self.settled = Settled(None)  # claimed: a second caller never settles again
            self.settled = await self.gw.run(self.gw.settle, self.reservation,
                                             self.tally.usage_or_bound(self.reservation))
            self.gw.metrics.overhead_s.observe((self.sent - self.started) + (time.perf_counter() - done))
        return self.settled

    async def _event(self, lines: list[str]) -> bytes | None:
        """The bytes to forward for one SSE event (None: drop it)."""
        out = []
        for line in lines:
            if line.startswith("data:"):
                payload = line[5:].strip()
                if payload == "[DONE]":
                    settled = await self._settle()
                    out.append(f": x-comptroller-cost-mc={settled.cost_mc}\n\n")
                else:
                    try:
                        chunk = json.loads(payload)
                    except ValueError:
                        chunk = None
                    if isinstance(chunk, dict):
                        self.tally.observe(chunk)
                        if not self.chat.include_usage and not chunk.get("choices") and chunk.get("usage"):
                            return None
            out.append(line + "\n")
        return "".join(out).encode("utf-8") + b"\n"

    async def _relay(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        lines: list[str] = []
        try:
            async for line in self.upstream_response.lines():
                if line:
                    lines.append(line)
                    continue
                data = await self._event(lines) if lines else None
                lines = []
                if data is not None:
                    await send({"type": "http.response.body", "body": data, "more_body": True})
            self.upstream_response.release()
        except UpstreamError as exc:
            error = {"error": {"message": f"{exc}, mid-stream; the generated part was charged",
                               "type": "upstream_error", "code": "upstream_error"}}
            await send({"type": "http.response.body", "body": f"data: {json.dumps(error)}\n\n".encode(),
                        "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def watch_disconnect(cancel: anyio.CancelScope) -> None:
            message: Message = {}
            while message.get("type") != "http.disconnect":
                message = await receive()
            cancel.cancel()

        try:
            async with anyio.create_task_group() as group:
                group.start_soon(watch_disconnect, group.cancel_scope)
                await self._relay(send)
                group.cancel_scope.cancel()
        except* OSError:
            pass  # the client went away while we wrote: settle below
        finally:
            self.upstream_response.abort()  # a no-op once the stream was read to its end and released
            with anyio.CancelScope(shield=True):
                await self._settle()


def _call_request(chat: ChatRequest, caller: Caller, request: Request, namespace: str) -> CallRequest:
    headers = request.headers
    return CallRequest(attribution=attribute(caller, headers, namespace=namespace), model=chat.model,
                       input_tokens_max=chat.input_tokens_max, max_tokens=chat.max_tokens,
                       run_id=headers.get("x-comptroller-run"), attempt_id=headers.get("x-comptroller-attempt"),
                       fingerprint=chat.fingerprint(), text=chat.last_text())


def check_model_allowed(caller: Caller, model: str) -> None:
    """Refuse a model outside the key's model list (a cascade is allowed as ``cascade/<name>``).

    Raises:
        GatewayError: 403 ``model_not_allowed``.
    """
    allowed = caller.key.models
    if allowed is not None and model not in allowed:
        raise GatewayError(403, f"this key may call {sorted(allowed)}, not {model!r}", type_="permission_error",
                           code="model_not_allowed", param="model")


def _upstream_for(gw: Gateway, chat: ChatRequest, caller: Caller) -> Upstream:
    check_model_allowed(caller, chat.model)
    upstream = gw.upstreams.for_model(chat.model)
    if upstream is None:
        raise GatewayError(400, f"no provider serves model {chat.model!r}; configured models: "
                           f"{sorted(gw.config.models)} (add it to [gateway.models])", code="model_not_found",
                           param="model")
    return upstream


async def _routed(gw: Gateway, chat: ChatRequest, admission: Admission,
                  upstream: Upstream) -> tuple[Upstream, str]:
    """The upstream and model the engine routed to: the client's, unless pinning or pacing moved the call."""
    route = admission.route
    if route is None or route.model == route.requested_model:
        return upstream, chat.model
    moved = gw.upstreams.for_model(route.model)
    if moved is None:
        assert admission.reservation is not None
        await gw.run(gw.release, admission.reservation)
        raise GatewayError(400, f"the engine routed the call to {route.model!r} ({route.detail}), but no provider "
                           "serves it; add it to [gateway.models]", code="model_not_found", param="model")
    return moved, route.model


async def read_chat(gw: Gateway, request: Request) -> tuple[Caller, ChatRequest]:
    """Authenticate the caller and read and check the body (nothing is reserved yet).

    Raises:
        GatewayError: 401 for the key, 400 naming the parameter at fault.
    """
    caller = gw.identity.authenticate(request.headers)
    return caller, parse_chat_request(await read_body(request, gw.config.body_bytes_max))


async def chat_completions(gw: Gateway, request: Request, caller: Caller, chat: ChatRequest,
                           started: float) -> Response:
    """Serve one chat completion of a model (see the module docstring), after :func:`read_chat`.

    Args:
        started: ``time.perf_counter()`` when the request arrived (for the overhead metric).

    Raises:
        GatewayError: for every answer that is not a completion or a refusal.
    """
    upstream = _upstream_for(gw, chat, caller)
    admission = await gw.run(gw.admit, _call_request(chat, caller, request, gw.namespace))
    if admission.reservation is None:
        assert admission.verdict is not None
        return verdict_response(admission.verdict)
    upstream, model = await _routed(gw, chat, admission, upstream)
    body = forward_body(chat, admission.output_tokens_max, upstream.config)
    body["model"] = model
    if not chat.stream:
        return await _unary(gw, upstream, body, admission, started)
    sent = time.perf_counter()
    response = await _open(gw, upstream, body, admission.reservation)
    if not response.ok:
        try:
            raw = await response.read()
        except UpstreamError:
            raw = b""
        finally:
            response.abort()
            await gw.run(gw.release, admission.reservation)
        return _upstream_failure(response.status, raw, upstream.name)
    return _Relay(gw=gw, upstream=upstream, response=response, admission=admission, chat=chat, started=started,
                  sent=sent)
