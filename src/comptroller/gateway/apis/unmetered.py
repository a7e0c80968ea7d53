"""What is not metered: an explicit allowlist of free endpoints, and a 404 for every other path.

Free (no money moves, so nothing is reserved; the caller must still hold a key):

=====================================  ==========================================================
endpoint                               why free
=====================================  ==========================================================
``GET /v1/models``                     the gateway answers it itself (:mod:`comptroller.gateway.app`)
``POST /v1/messages/count_tokens``     Anthropic: "free to use" (docs, "Token counting"); passed
                                       through to the model's ``anthropic`` provider
=====================================  ==========================================================

Every other path under ``/v1`` (any method) answers 404 ``unknown_endpoint`` naming the
supported endpoints (every ``/v1`` route the app has: batches and groups too), in Anthropic's
shape under ``/v1/messages`` and OpenAI's elsewhere: a path the gateway cannot meter is never
passed through (DESIGN.md rule 11).
"""

from __future__ import annotations

from collections.abc import Iterable

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from comptroller.gateway.apis.base import require_model
from comptroller.gateway.apis.messages import MessagesApi
from comptroller.gateway.apis.pipeline import authenticate, check_model_allowed, upstream_error, upstream_for
from comptroller.gateway.apis.request_body import loads_object, read_body
from comptroller.gateway.errors import ErrorShape, GatewayError
from comptroller.gateway.runtime import Gateway
from comptroller.gateway.upstream import UpstreamError

__all__ = ["count_tokens", "shape_of", "supported_endpoints", "unknown_endpoint"]

_MESSAGES = MessagesApi()


def supported_endpoints(routes: Iterable[BaseRoute]) -> list[str]:
    """``METHOD /v1/...`` of every ``/v1`` route among ``routes``, in route order."""
    found = []
    for route in routes:
        if isinstance(route, Route) and route.path.startswith("/v1/"):
            methods = sorted((route.methods or set()) - {"HEAD"})
            found += [f"{method} {route.path}" for method in methods]
    return found


def unknown_endpoint(request: Request) -> GatewayError:
    """The 404 for a path or method the gateway does not meter (render it in :func:`shape_of` the path)."""
    supported = ", ".join(supported_endpoints(request.app.routes))
    return GatewayError(404, f"{request.method} {request.url.path} is not an endpoint of this gateway: it meters "
                        f"every call that can cost money and passes nothing else through. Supported: {supported}",
                        type_="not_found_error", code="unknown_endpoint")


def shape_of(path: str) -> ErrorShape:
    """Anthropic's error shape under ``/v1/messages``, OpenAI's elsewhere."""
    return ErrorShape.ANTHROPIC if path.startswith("/v1/messages") else ErrorShape.OPENAI


async def count_tokens(gw: Gateway, request: Request) -> Response:
    """Pass ``POST /v1/messages/count_tokens`` through to the model's Anthropic provider (free: nothing reserved).

    Raises:
        GatewayError: 401 for the key, 400 for the body or a model of another family, 403 for a
            model outside the key's list, 502/504 when the provider fails.
    """
    caller = await authenticate(gw, request, _MESSAGES)
    body = loads_object(await read_body(request, gw.config.body_bytes_max))
    model = require_model(body)
    check_model_allowed(caller, model)
    upstream = upstream_for(gw, model, _MESSAGES)
    headers = {name: request.headers[name] for name in ("anthropic-version", "anthropic-beta")
               if name in request.headers}
    try:
        response = await upstream.open("/messages/count_tokens", body, headers)
        raw = await response.read()
    except UpstreamError as exc:
        raise upstream_error(exc, "nothing was charged (token counting is free)") from None
    response.release()
    return Response(raw, status_code=response.status, media_type="application/json")
