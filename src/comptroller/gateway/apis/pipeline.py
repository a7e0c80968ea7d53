"""The one metered call path every API adapter plugs into.

authenticate -> read the body (size limit, strict JSON) -> parse (the adapter) -> pick the
provider (the key's model list, the API's family) -> attribute -> admit (every defense and
budget) -> forward with the output bound set (the adapter) -> read usage (the adapter) ->
check and settle (:mod:`~comptroller.gateway.apis.settlement`) -> respond. Nothing is
reserved before the body is checked, and every answer that is not a result is an error in
the API's own shape (:mod:`comptroller.gateway.errors`).

The output bound the engine reserved (the agent's cap when the request has none or asks
for more) is what goes upstream, per output (``n`` outputs reserve ``n`` times the bound,
plus what is billed as output beyond it: a Predicted Output's rejected tokens), so the
reserved ceiling stays a true bound.

Every exit settles or releases, exactly once (:class:`~comptroller.gateway.runtime.Gateway`):

=======================================================  ==================================================
exit                                                     ledger
=======================================================  ==================================================
completed (usage read)                                   settle the reported usage (checked: anomalies are
                                                         charged in full and recorded)
completed without usage                                  settle the bound: input bound, output bound
upstream 4xx / 5xx, connect error, timeout before        release (the provider bills nothing)
any answer
answered 2xx, body cut short                             settle the bound (the provider ran the call)
client disconnect or upstream failure mid-stream         settle what was generated (the provider bills it):
                                                         the usage if seen (output at least the text seen),
                                                         else the input bound and the output seen (UTF-8
                                                         bytes of the text, an upper bound on its tokens);
                                                         the upstream request is aborted
request cancelled (shutdown) before the answer          settle the bound (the provider may have billed it)
=======================================================  ==================================================
"""

from __future__ import annotations

import json
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from comptroller.engine import Admission, CallRequest
from comptroller.exact_input import input_recount
from comptroller.gateway.apis.base import Api, ApiRequest, Family, json_or_none
from comptroller.gateway.apis.relay import Relay
from comptroller.gateway.apis.request_body import loads_object, read_body
from comptroller.gateway.apis.settlement import bound_usage, call_headers, settle_answer
from comptroller.gateway.attribution import attribute
from comptroller.gateway.errors import ErrorShape, GatewayError, error_response, verdict_response
from comptroller.gateway.identity import Caller
from comptroller.gateway.runtime import Gateway
from comptroller.gateway.upstream import Upstream, UpstreamError, UpstreamResponse, UpstreamTimeoutError

__all__ = ["authenticate", "check_model_allowed", "read_request", "serve", "upstream_error", "upstream_for"]

_MESSAGE_MAX = 2000
_FORWARDED_HEADERS = ("anthropic-version", "anthropic-beta")


async def authenticate(gw: Gateway, request: Request, api: Api) -> Caller:
    """The caller of a request; Anthropic-family APIs also take the key in ``x-api-key`` (as Anthropic does).

    Raises:
        GatewayError: 401 for a missing, unknown or revoked key; 503 when the key store cannot answer.
    """
    headers = request.headers
    if api.family is Family.ANTHROPIC and "authorization" not in headers and headers.get("x-api-key"):
        bearer = {"authorization": f"Bearer {headers['x-api-key']}"}
        await gw.identity.prefetch(bearer)  # off the loop, like KeyPrefetch does for Authorization
        return gw.identity.authenticate(bearer)
    key_header = "x-api-key" if api.family is Family.ANTHROPIC else "authorization"  # named by the 401
    return gw.identity.authenticate(headers, key_header=key_header)


async def read_request(gw: Gateway, request: Request, api: Api) -> tuple[Caller, ApiRequest]:
    """Authenticate, read and check the body (nothing is reserved yet).

    Raises:
        GatewayError: 401 for the key, 400 naming the problem or the parameter at fault.
    """
    caller = await authenticate(gw, request, api)
    raw = await read_body(request, gw.config.body_bytes_max)
    return caller, api.parse(loads_object(raw), len(raw))


def check_model_allowed(caller: Caller, model: str) -> None:
    """Refuse a model outside the key's model list (a cascade is allowed as ``cascade/<name>``).

    Raises:
        GatewayError: 403 ``model_not_allowed``.
    """
    allowed = caller.key.models
    if allowed is not None and model not in allowed:
        raise GatewayError(403, f"this key may call {sorted(allowed)}, not {model!r}", type_="permission_error",
                           code="model_not_allowed", param="model")


def upstream_for(gw: Gateway, model: str, api: Api) -> Upstream:
    """The provider of ``model``, which must speak ``api``'s family.

    Raises:
        GatewayError: 400 ``model_not_found`` (no provider) or ``wrong_api_family``.
    """
    upstream = gw.upstreams.for_model(model)
    if upstream is None:
        raise GatewayError(400, f"no provider serves model {model!r}; configured models: "
                           f"{sorted(gw.config.models)} (add it to [gateway.models])", code="model_not_found",
                           param="model")
    if upstream.config.kind != api.family:
        raise GatewayError(400, f"model {model!r} is served by provider {upstream.name!r} of the "
                           f"{upstream.config.kind!r} API family; {api.path} is a {api.family.value!r} API. Call it "
                           f"through its own family's endpoint (nothing is translated)", code="wrong_api_family",
                           param="model")
    return upstream


def upstream_error(exc: UpstreamError, what: str) -> GatewayError:
    """The 502 (504 on a timeout) for a provider that failed; ``what`` says what was charged."""
    if isinstance(exc, UpstreamTimeoutError):
        return GatewayError(504, f"{exc}; {what}", type_="upstream_error", code="upstream_timeout")
    return GatewayError(502, f"{exc}; {what}", type_="upstream_error", code="upstream_error")


def _upstream_failure(status: int, raw: bytes, provider: str, shape: ErrorShape) -> Response:
    """A provider's 4xx with a JSON body passes through as it came; else a 502 (4xx: the status) in our shape."""
    try:
        parsed = json.loads(raw)
        message = str(parsed["error"]["message"])
    except (ValueError, KeyError, TypeError):
        parsed, message = None, raw.decode("utf-8", "replace")[:_MESSAGE_MAX] or f"HTTP {status}"
    if 400 <= status < 500 and parsed is not None:
        return Response(raw, status_code=status, media_type="application/json")
    if 400 <= status < 500:
        return error_response(status, f"{provider}: {message}", type_="invalid_request_error", code="upstream_error",
                              shape=shape)
    return error_response(502, f"upstream {provider} answered HTTP {status}: {message}", type_="upstream_error",
                          code="upstream_error", shape=shape)


async def _routed(gw: Gateway, model: str, admission: Admission, upstream: Upstream, api: Api) -> tuple[Upstream, str]:
    """The upstream and model the engine routed to: the client's, unless pinning or pacing moved the call."""
    route = admission.route
    if route is None or route.model == route.requested_model:
        return upstream, model
    assert admission.reservation is not None
    try:
        return upstream_for(gw, route.model, api), route.model
    except GatewayError as exc:
        await gw.run(gw.release, admission.reservation)
        raise GatewayError(400, f"the engine routed the call to {route.model!r} ({route.detail}), but: "
                           f"{exc.message}", code=exc.code, param="model") from None


async def _unary(gw: Gateway, api: Api, upstream: Upstream, body: dict[str, Any], *, headers: dict[str, str],
                 admission: Admission, started: float) -> Response:
    reservation = admission.reservation
    assert reservation is not None
    sent = time.perf_counter()
    response = await _open(gw, upstream, api, body, headers=headers, admission=admission)
    try:
        raw = await response.read()
    except BaseException as exc:
        response.abort()
        if response.ok:  # the provider ran the call: charge the bound
            await gw.run(gw.settle, reservation, bound_usage(reservation))
        else:
            await gw.run(gw.release, reservation)
        if isinstance(exc, UpstreamError):
            raise upstream_error(exc, "the call was charged at its reserved bound") from None
        raise
    response.release()
    returned = time.perf_counter()
    gw.metrics.child(gw.metrics.upstream_s, upstream.name).observe(returned - sent)
    if not response.ok:
        await gw.run(gw.release, reservation)
        return _upstream_failure(response.status, raw, upstream.name, api.shape)
    answer = json_or_none(raw)
    answer = answer if isinstance(answer, dict) else {}
    served = answer.get("model")
    outcome = await settle_answer(gw, admission, api.usage(answer) or bound_usage(reservation),
                                  served if isinstance(served, str) else None, api.name)
    gw.metrics.overhead_s.observe((sent - started) + (time.perf_counter() - returned))
    return Response(raw, media_type="application/json", headers=call_headers(admission, outcome))


async def _open(gw: Gateway, upstream: Upstream, api: Api, body: dict[str, Any], *, headers: dict[str, str],
                admission: Admission) -> UpstreamResponse:
    """Send upstream; on an upstream failure before an answer, release and raise the 502/504.

    Cut off otherwise while waiting (shutdown cancels the request), the call may have reached
    the provider and been billed: it is charged its reserved bound (DESIGN.md rule 12).
    """
    assert admission.reservation is not None
    try:
        return await upstream.open(api.path, body, headers)
    except UpstreamError as exc:
        await gw.run(gw.release, admission.reservation)
        raise upstream_error(exc, "nothing was charged") from None
    except BaseException:
        await gw.run(gw.settle, admission.reservation, bound_usage(admission.reservation))
        raise


async def serve(gw: Gateway, request: Request, api: Api, caller: Caller, call: ApiRequest, *,
                started: float) -> Response:
    """Serve one call of ``api`` (see the module docstring), after :func:`read_request`.

    Args:
        started: ``time.perf_counter()`` when the request arrived (for the overhead metric).

    Raises:
        GatewayError: for every answer that is not a result or a refusal (render it in ``api.shape``).
    """
    check_model_allowed(caller, call.model)
    upstream = upstream_for(gw, call.model, api)
    headers = request.headers
    call_request = CallRequest(
        attribution=attribute(caller, headers, namespace=gw.namespace, groups=gw.groups), model=call.model,
        input_tokens_max=call.input_tokens_max, max_tokens=call.max_tokens, choices=call.choices,
        output_tokens_extra=call.output_tokens_extra,
        run_id=headers.get("x-comptroller-run"), attempt_id=headers.get("x-comptroller-attempt"),
        fingerprint=call.fingerprint, text=call.text, message_id=headers.get("x-comptroller-message"),
        input_recount=input_recount(call.body, api=api.name), sends=True)  # recount: asked only near the edge
    admission = await gw.run(gw.admit, call_request)
    if admission.reservation is None:
        assert admission.verdict is not None
        return verdict_response(admission.verdict, api.shape)
    upstream, model = await _routed(gw, call.model, admission, upstream, api)
    per_output = (admission.output_tokens_max - call.output_tokens_extra) // call.choices
    body = api.forward_body(call, per_output, upstream.config)
    body["model"] = model
    forwarded = {name: headers[name] for name in _FORWARDED_HEADERS if name in headers}
    if not call.stream:
        return await _unary(gw, api, upstream, body, headers=forwarded, admission=admission, started=started)
    sent = time.perf_counter()
    response = await _open(gw, upstream, api, body, headers=forwarded, admission=admission)
    if not response.ok:
        try:
            raw = await response.read()
        except UpstreamError:
            raw = b""
        finally:
            response.abort()
            await gw.run(gw.release, admission.reservation)
        return _upstream_failure(response.status, raw, upstream.name, api.shape)
    return Relay(gw=gw, api=api, upstream=upstream, response=response, admission=admission,
                 tally=api.tally(call), started=started, sent=sent)
