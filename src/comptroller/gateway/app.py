"""The ASGI app: routes, lifespan, and the factory ``comptroller serve`` runs in every worker.

=================================  ==========================================================
route                              what
=================================  ==========================================================
``POST /v1/chat/completions``      the governed call (:mod:`comptroller.gateway.calls`)
``GET /v1/models``                 the models this key may call
``GET /healthz``                   200 when the ledger answers, else 503
``GET /metrics``                   Prometheus exposition (:mod:`comptroller.gateway.metrics`)
``/admin/...``                     the admin API and its OpenAPI document (:mod:`comptroller.gateway.admin`)
=================================  ==========================================================

:func:`app_from_env` builds one worker's app from ``COMPTROLLER_CONFIG`` (the policy
TOML with its ``[gateway]`` table) and ``COMPTROLLER_DB`` (the ledger URL); uvicorn
calls it once per worker process, so each has its own engine on the shared ledger.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import AsyncIterator, Callable, Iterable

from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route

from comptroller.bootstrap import build_engine
from comptroller.domain.breaker import BreakerState, BreakerStatus
from comptroller.engine import Engine
from comptroller.engine.engine import allowed_models
from comptroller.gateway.admin import admin_app
from comptroller.gateway.calls import chat_completions
from comptroller.gateway.config import GatewayConfig, load_gateway_config
from comptroller.gateway.errors import GatewayError
from comptroller.gateway.identity import Identity
from comptroller.gateway.metrics import GatewayMetrics
from comptroller.gateway.runtime import Gateway
from comptroller.gateway.upstream import Upstreams
from comptroller.prices import UnknownModelError
from comptroller.storage.keys import KeyStore, keys_from_url

__all__ = ["app_from_env", "create_app"]

log = logging.getLogger("comptroller.gateway")
DEFAULT_DB = "sqlite:///comptroller.db"


def _gateway(request: Request) -> Gateway:
    gateway: Gateway = request.app.state.gateway
    return gateway


async def _chat(request: Request) -> Response:
    gw = _gateway(request)
    try:
        response = await chat_completions(gw, request)
    except GatewayError as exc:
        response = exc.response()
    gw.metrics.requests.labels("chat", str(response.status_code)).inc()
    return response


async def _models(request: Request) -> Response:
    gw = _gateway(request)
    try:
        caller = gw.identity.authenticate(request.headers)
    except GatewayError as exc:
        return exc.response()
    names = set(gw.config.models)
    if caller.key.models is not None:
        names = {m for m in caller.key.models if gw.config.provider_for(m) is not None}
    names = _pinned(gw.engine, caller.key.agent, names)
    data = [{"id": m, "object": "model", "created": 0, "owned_by": gw.config.provider_for(m)} for m in sorted(names)]
    return JSONResponse({"object": "list", "data": data})


def _pinned(engine: Engine, agent: str | None, names: set[str]) -> set[str]:
    """The models among ``names`` the key's agent is pinned to (all of them when it is not pinned)."""
    pinning = engine.defenses.pinning
    allowed = set(allowed_models(pinning, agent)) if pinning is not None and agent is not None else set()
    if not allowed:
        return names
    kept = set()
    for name in names:
        try:
            if engine.prices.resolve(name) in allowed or name in allowed:
                kept.add(name)
        except UnknownModelError:
            continue
    return kept


async def _healthz(request: Request) -> Response:
    try:
        _gateway(request).engine.store.budgets()
    except Exception:
        log.exception("health check: the ledger does not answer")
        return JSONResponse({"status": "ledger_unavailable"}, status_code=503)
    return JSONResponse({"status": "ok"})


async def _metrics(request: Request) -> Response:
    return Response(_gateway(request).metrics.exposition(), media_type=CONTENT_TYPE_LATEST)


def _breaker_states(engine: Engine) -> Callable[[], Iterable[tuple[str, bool]]]:
    def states() -> Iterable[tuple[str, bool]]:
        for stored in engine.store.states("breaker"):
            state = BreakerState.from_record(stored.record)
            yield f"{state.level}:{state.scope}", state.status is not BreakerStatus.CLOSED
    return states


def create_app(*, engine: Engine, keys: KeyStore, config: GatewayConfig, namespace: str,
               on_shutdown: Callable[[], None] | None = None) -> Starlette:
    """The gateway app for one worker.

    Args:
        engine: the engine on the ledger (its store is shared by every worker).
        keys: the API key store.
        config: the ``[gateway]`` settings.
        namespace: the namespace every call is attributed to (the policy's).
        on_shutdown: called after in-flight calls are released (close stores).
    """
    metrics = GatewayMetrics(_breaker_states(engine))
    identity = Identity(keys, config.admin_key())

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        gateway = Gateway(engine=engine, identity=identity,
                          upstreams=Upstreams(config), config=config, namespace=namespace,
                          metrics=metrics)
        app.state.gateway = gateway
        try:
            yield
        finally:
            released = gateway.release_all()
            if released:
                log.warning("shutdown: released %d reservations still in flight", released)
            await gateway.upstreams.aclose()
            if on_shutdown is not None:
                on_shutdown()

    routes = [
        Route("/v1/chat/completions", _chat, methods=["POST"]),
        Route("/v1/models", _models, methods=["GET"]),
        Route("/healthz", _healthz, methods=["GET"]),
        Route("/metrics", _metrics, methods=["GET"]),
        Mount("/admin", app=admin_app(engine=engine, keys=keys, identity=identity, namespace=namespace)),
    ]
    return Starlette(routes=routes, lifespan=lifespan)


def app_from_env() -> Starlette:
    """One worker's app from ``COMPTROLLER_CONFIG`` and ``COMPTROLLER_DB`` (uvicorn's factory).

    Raises:
        ConfigError: for an invalid config file or a missing provider key.
    """
    policy, config = load_gateway_config(os.environ.get("COMPTROLLER_CONFIG") or None)
    db_url = os.environ.get("COMPTROLLER_DB") or DEFAULT_DB
    if "ledger_threads" not in config.model_fields_set and db_url.startswith(("postgresql://", "postgres://")):
        config = config.model_copy(update={"ledger_threads": True})  # a network round trip per ledger call
    engine = build_engine(db_url=db_url, policy=policy)
    keys = keys_from_url(db_url)

    def close() -> None:
        engine.close()
        keys.close()
        engine.store.close()

    return create_app(engine=engine, keys=keys, config=config, namespace=policy.namespace, on_shutdown=close)
