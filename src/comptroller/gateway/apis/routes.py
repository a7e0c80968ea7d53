"""The routes of every metered API, the free allowlist, and the 404 for everything else under ``/v1``.

=====================================  ===============================================================
route                                  adapter
=====================================  ===============================================================
``POST /v1/chat/completions``          :mod:`.chat` (a model ``cascade/<name>`` runs a cascade:
                                       :mod:`comptroller.gateway.cascades`)
``POST /v1/responses``                 :mod:`.responses`
``POST /v1/messages``                  :mod:`.messages` (Anthropic shape)
``POST /v1/embeddings``                :mod:`.embeddings`
``POST /v1/completions``               :mod:`.completions`
``POST /v1/messages/count_tokens``     free, passed through (:mod:`.unmetered`)
=====================================  ===============================================================

:func:`not_found` is the app's 404/405 handler: under ``/v1`` it answers 404
``unknown_endpoint`` in the path's API shape naming the supported endpoints; being a
handler rather than a catch-all route, every route the app has (batches, groups...) wins
whatever order they were added in.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from comptroller.gateway.apis.base import Api, ApiRequest
from comptroller.gateway.apis.chat import ChatApi
from comptroller.gateway.apis.completions import CompletionsApi
from comptroller.gateway.apis.embeddings import EmbeddingsApi
from comptroller.gateway.apis.messages import MessagesApi
from comptroller.gateway.apis.pipeline import read_request, serve
from comptroller.gateway.apis.responses import ResponsesApi
from comptroller.gateway.apis.unmetered import count_tokens, shape_of, unknown_endpoint
from comptroller.gateway.cascades import cascade_completion, cascade_name
from comptroller.gateway.errors import GatewayError
from comptroller.gateway.idempotency import idempotent
from comptroller.gateway.identity import Caller
from comptroller.gateway.runtime import Gateway
from comptroller.gateway.telemetry import observe_call

__all__ = ["APIS", "api_routes", "not_found"]

APIS: dict[str, Api] = {"/v1/chat/completions": ChatApi(), "/v1/responses": ResponsesApi(),
                        "/v1/messages": MessagesApi(), "/v1/embeddings": EmbeddingsApi(),
                        "/v1/completions": CompletionsApi()}
"""Each metered endpoint's adapter."""


def _handler(api: Api) -> Callable[[Request], Awaitable[Response]]:
    async def handle(request: Request) -> Response:
        started = time.perf_counter()
        gw: Gateway = request.app.state.gateway
        caller: Caller | None = None
        call: ApiRequest | None = None
        try:
            caller, call = await read_request(gw, request, api)
            if api.name == "chat" and cascade_name(call.model) is not None:
                response = await cascade_completion(gw, request, caller, call)
            else:
                response = await serve(gw, request, api, caller, call, started=started)
        except GatewayError as exc:
            response = exc.response(api.shape)
        gw.metrics.child(gw.metrics.requests, api.name, str(response.status_code)).inc()
        observe_call(gw.config, request, api, response, started=started, caller=caller, call=call)  # log, span
        return response

    return handle


async def _count_tokens(request: Request) -> Response:
    gw: Gateway = request.app.state.gateway
    try:
        response = await count_tokens(gw, request)
    except GatewayError as exc:
        response = exc.response(shape_of(request.url.path))
    gw.metrics.requests.labels("count_tokens", str(response.status_code)).inc()
    return response


def api_routes() -> list[Route]:
    """The routes of every metered API and of ``count_tokens``."""
    routes = [Route(path, idempotent(_handler(api)), methods=["POST"]) for path, api in APIS.items()]
    return [*routes, Route("/v1/messages/count_tokens", _count_tokens, methods=["POST"])]


async def not_found(request: Request, exc: Exception) -> Response:
    """404 ``unknown_endpoint`` in the API's shape under ``/v1`` (405s too); elsewhere the plain 404/405."""
    path = request.url.path
    if path == "/v1" or path.startswith("/v1/"):
        return unknown_endpoint(request).response(shape_of(path))
    status = exc.status_code if isinstance(exc, HTTPException) else 404
    return PlainTextResponse("Not Found" if status == 404 else "Method Not Allowed", status_code=status)
