"""Batch APIs through the gateway: every line reserved at create, every custom_id reconciled at the end.

* :mod:`~comptroller.gateway.batches.openai_api`: ``/v1/files``, ``/v1/batches`` (OpenAI Batch API);
* :mod:`~comptroller.gateway.batches.anthropic_api`: ``/v1/messages/batches`` (Anthropic Message Batches);
* :mod:`~comptroller.gateway.batches.service`: the reservations, the reconciliation and its background task;
* :mod:`comptroller.prices.batch`: batch prices (genai-prices, else ``[batch]``), shared with the SDK;
* :mod:`comptroller.domain.batches` and :mod:`comptroller.domain.batch_results`: the pure rules (lines and
  bounds; results -> settle and release actions).

The app mounts :func:`batch_routes` and, in its lifespan, :func:`start_batches` /
``BatchService.aclose``. Errors answer in the API's own shape.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from comptroller.batch_config import BatchSection
from comptroller.gateway.batches import anthropic_api, openai_api
from comptroller.gateway.batches.service import BatchService
from comptroller.gateway.errors import ErrorShape, GatewayError
from comptroller.gateway.runtime import Gateway

__all__ = ["BatchService", "batch_routes", "start_batches"]

Handler = Callable[[BatchService, Request], Awaitable[Response]]


async def start_batches(gateway: Gateway, section: BatchSection | None = None) -> BatchService:
    """The worker's batch service, its background reconciler started (close it with ``aclose``)."""
    service = BatchService(gateway, section or BatchSection(),
                           polls={openai_api.API: openai_api.poll, anthropic_api.API: anthropic_api.poll})
    await service.start()
    return service


def _endpoint(handler: Handler, shape: ErrorShape) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        service: BatchService = request.app.state.batches
        try:
            response = await handler(service, request)
        except GatewayError as exc:
            response = exc.response(shape)
        service.gw.metrics.requests.labels("batches", str(response.status_code)).inc()
        return response
    return endpoint


def batch_routes() -> list[Route]:
    """The batch routes (mount them before any catch-all route)."""
    openai, anthropic = ErrorShape.OPENAI, ErrorShape.ANTHROPIC
    return [
        Route("/v1/files", _endpoint(openai_api.upload_file, openai), methods=["POST"]),
        Route("/v1/files/{file_id}", _endpoint(openai_api.file_object, openai), methods=["GET"]),
        Route("/v1/files/{file_id}/content", _endpoint(openai_api.file_content, openai), methods=["GET"]),
        Route("/v1/batches", _endpoint(openai_api.create_batch, openai), methods=["POST"]),
        Route("/v1/batches/{batch_id}", _endpoint(openai_api.retrieve_batch, openai), methods=["GET"]),
        Route("/v1/batches/{batch_id}/cancel", _endpoint(openai_api.cancel_batch, openai), methods=["POST"]),
        Route("/v1/messages/batches", _endpoint(anthropic_api.create_batch, anthropic), methods=["POST"]),
        Route("/v1/messages/batches/{batch_id}", _endpoint(anthropic_api.retrieve_batch, anthropic),
              methods=["GET"]),
        Route("/v1/messages/batches/{batch_id}/results", _endpoint(anthropic_api.batch_results, anthropic),
              methods=["GET"], name="anthropic_batch_results"),
        Route("/v1/messages/batches/{batch_id}/cancel", _endpoint(anthropic_api.cancel_batch, anthropic),
              methods=["POST"]),
    ]
