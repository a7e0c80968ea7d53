"""The ASGI app: routes, lifespan, and the factory ``comptroller serve`` runs in every worker.

=================================  ==========================================================
route                              what
=================================  ==========================================================
``POST /v1/chat/completions``,     the metered APIs, one pipeline with an adapter each
``/v1/responses``, ``/v1/messages``, (:mod:`comptroller.gateway.apis.routes`); a chat model
``/v1/embeddings``,                ``cascade/<name>`` runs a cascade (:mod:`comptroller.gateway.cascades`);
``/v1/completions``                ``POST /v1/messages/count_tokens`` is passed through (free)
``/v1/files``, ``/v1/batches``,   the batch APIs: every line reserved at create, each ``custom_id``
``/v1/messages/batches``           reconciled when the batch ends (:mod:`comptroller.gateway.batches`)
``POST /v1/groups/{id}/dispatch``  who in a group chat answers a message (:mod:`comptroller.gateway.groups`)
``POST /v1/runs``                  open a scheduled run: deadline, spend cap (:mod:`comptroller.gateway.runs`)
``GET /v1/models``                 the models and cascades this key may call
``GET /healthz``                   200 when every worker is up and the ledger answers, else 503 (from
                                   memory: :mod:`comptroller.gateway.lifecycle`)
``GET /metrics``                   Prometheus exposition (:mod:`comptroller.gateway.metrics`)
``/admin/...``                     the admin API and its OpenAPI document (:mod:`comptroller.gateway.admin`)
any other ``/v1`` path or method   404 ``unknown_endpoint`` in the API's shape (nothing passes unmetered)
=================================  ==========================================================

The metered routes are served before the router, through the same middlewares
(:class:`~comptroller.gateway.hot_path.GatewayApp`): the router's walk and two wrappers per
call were a few per cent of a call's CPU (BENCHMARKS.md, issue 14).

:func:`app_from_env` builds one worker's app from ``COMPTROLLER_CONFIG`` (the policy
TOML with its ``[gateway]`` table) and ``COMPTROLLER_DB`` (the ledger URL); uvicorn
calls it once per worker process, so each has its own engine on the shared ledger.
The policy's ``[cascades.NAME]``, ``[routing]`` and ``[groups.NAME]`` sections are built
there, once: a bad section, or a cascade tier model no provider serves, stops start-up.
Groups put or removed through the admin API are kept in the ledger: every worker finds
them (:mod:`comptroller.groups.rows`) and they outlive a restart.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import AsyncIterator, Callable, Iterable
from decimal import Decimal

from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route

from comptroller.batch_config import BatchSection
from comptroller.bootstrap import build_engine
from comptroller.domain.breaker import BreakerState, BreakerStatus
from comptroller.domain.routing import Router
from comptroller.engine import Engine
from comptroller.engine.engine import allowed_models
from comptroller.gateway.actions import action_routes, guard_services
from comptroller.gateway.admin import admin_app
from comptroller.gateway.apis.routes import api_routes, not_found
from comptroller.gateway.batches import batch_routes, start_batches
from comptroller.gateway.cascades import CASCADE_PREFIX
from comptroller.gateway.config import GatewayConfig, load_gateway_config, tier_models
from comptroller.gateway.errors import GatewayError
from comptroller.gateway.groups import dispatch
from comptroller.gateway.hot_path import GatewayApp
from comptroller.gateway.identity import Identity, KeyPrefetch
from comptroller.gateway.lifecycle import LedgerProbe, Roster, WorkerLife, die_with_parent
from comptroller.gateway.metrics import GatewayMetrics, authorize_scrape
from comptroller.gateway.reverify import start_reverifier
from comptroller.gateway.runs import runs_endpoint
from comptroller.gateway.runtime import Gateway
from comptroller.gateway.upkeep import start_upkeep
from comptroller.gateway.upstream import Upstreams
from comptroller.gateway.warmup import warm_worker
from comptroller.groups import GroupDefinition, GroupService
from comptroller.prices import UnknownModelError
from comptroller.routing import RoutingConfig
from comptroller.storage.key_stores import keys_from_url
from comptroller.storage.keys import KeyStore
from comptroller.storage.transfer_stores import transfers_from_url
from comptroller.storage.transfers import TransferStore
from comptroller.ui import ui_routes

__all__ = ["app_from_env", "create_app"]

log = logging.getLogger("comptroller.gateway")
DEFAULT_DB = "sqlite:///comptroller.db"


def _gateway(request: Request) -> Gateway:
    gateway: Gateway = request.app.state.gateway
    return gateway


async def _dispatch(request: Request) -> Response:
    gw = _gateway(request)
    try:
        response = await dispatch(gw, request)
    except GatewayError as exc:
        response = exc.response()
    gw.metrics.requests.labels("dispatch", str(response.status_code)).inc()
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
    for name, cascade in sorted(gw.routing.cascades.items()):
        model = CASCADE_PREFIX + name
        tiers = {m for t in cascade.tiers for m in t.models}
        if (caller.key.models is None or model in caller.key.models) and _pinned(gw.engine, caller.key.agent, tiers):
            data.append({"id": model, "object": "model", "created": 0, "owned_by": "comptroller"})
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
    life: WorkerLife = request.app.state.life
    status, body = life.health()
    return JSONResponse(body, status_code=status)


async def _metrics(request: Request) -> Response:
    gw = _gateway(request)
    try:
        authorize_scrape(gw.identity, request.headers, gw.config.metrics_token())
    except GatewayError as exc:
        return exc.response()
    return Response(gw.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)


def _breaker_states(engine: Engine) -> Callable[[], Iterable[tuple[str, bool]]]:
    def states() -> Iterable[tuple[str, bool]]:
        for stored in engine.store.states("breaker"):
            state = BreakerState.from_record(stored.record)
            yield f"{state.level}:{state.scope}", state.status is not BreakerStatus.CLOSED
    return states


def create_app(*, engine: Engine, keys: KeyStore, config: GatewayConfig, namespace: str,
               routing: RoutingConfig | None = None, groups: Iterable[GroupDefinition] = (),
               on_shutdown: Callable[[], None] | None = None, batch: BatchSection | None = None,
               transfers: TransferStore | None = None, margin_floor: Decimal | None = None) -> Starlette:
    """The gateway app for one worker.

    Args:
        engine: the engine on the ledger (its store is shared by every worker).
        keys: the API key store.
        config: the ``[gateway]`` settings.
        namespace: the namespace every call is attributed to (the policy's).
        routing: the policy's cascades and rules (``Policy.routing_config``; None: no cascades).
        groups: the groups to register at start (``Policy.group_definitions().values()``).
        on_shutdown: called after in-flight calls are resolved (close stores).
        batch: the policy's ``[batch]`` section (batch prices, reconciler interval; None: defaults).
        transfers: the wallets' transfer store beside the ledger, for the UI's Wallets page (None:
            the page says none is wired).
        margin_floor: the policy's ``fees.margin_floor`` (the UI flags P&L rows below it; None: none).

    Raises:
        ConfigError: a cascade tier model no provider serves.
    """
    metrics = GatewayMetrics(_breaker_states(engine), tenants_top=config.metrics_tenants_top)
    identity = Identity(keys, config.admin_key(), cache_ttl_s=config.key_cache_ttl_s, timeout_s=config.ledger_timeout_s)
    life = WorkerLife(Roster.from_env(), LedgerProbe(engine.store, timeout_s=config.ledger_timeout_s),
                      grace_s=config.shutdown_grace_s)
    routing = routing or RoutingConfig(Router({}))
    tiers = tier_models(routing, config, engine.prices)
    group_service = GroupService(engine=engine, namespace=namespace, groups=groups)
    guard = guard_services()  # [actions], [tasks], [retries] of COMPTROLLER_CONFIG

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        gateway = Gateway(engine=engine, identity=identity, upstreams=Upstreams(config), config=config,
                          namespace=namespace, metrics=metrics, routing=routing, groups=group_service,
                          tier_models=tiers)
        app.state.gateway = gateway
        app.state.life = life
        life.start(gateway)
        app.state.batches = await start_batches(gateway, batch)
        app.state.upkeep = await start_upkeep(gateway)  # lease renewal, outbox delivery, WAL checkpoints
        await warm_worker(gateway)  # the exact tokenizer's vocabularies loaded, start-up's objects frozen (issue 14)
        app.state.reverifier = await start_reverifier(gateway, guard)  # unverified actions' durable re-checks
        try:
            yield
        finally:
            await app.state.upkeep.aclose()
            await app.state.reverifier.aclose()
            await app.state.batches.aclose()
            life.stop()
            left, released = gateway.resolve_all()  # sent: left to its lease (unknown_outcome); never sent: released
            if left or released:
                log.warning("shutdown: %d sent call(s) still in flight left to their lease, %d hold(s) released",
                            left, released)
            await gateway.upstreams.aclose()
            if gateway.outbox is not None:  # kept open for resolve_all's outcomes, now closed
                gateway.outbox.close()
            if on_shutdown is not None:
                on_shutdown()

    hot = api_routes()  # the metered calls: served before the router (comptroller.gateway.hot_path)
    routes = [
        *hot,
        *batch_routes(),
        Route("/v1/groups/{group_id}/dispatch", _dispatch, methods=["POST"]),
        Route("/v1/runs", runs_endpoint, methods=["POST"]),
        *action_routes(guard),  # /v1/actions/..., /v1/tasks/...
        Route("/v1/models", _models, methods=["GET"]),
        Route("/healthz", _healthz, methods=["GET"]),
        Route("/metrics", _metrics, methods=["GET"]),
        Mount("/admin", app=admin_app(engine=engine, keys=identity.keys, identity=identity, namespace=namespace,
                                      groups=group_service, transfers=transfers, margin_floor=margin_floor)),
        *ui_routes(engine=engine, keys=identity.keys, namespace=namespace, admin_key=config.admin_key(),  # /ui, /
                   transfers=transfers, margin_floor=margin_floor),
    ]
    return GatewayApp(hot=hot, routes=routes, lifespan=lifespan, exception_handlers={404: not_found, 405: not_found},
                      middleware=[Middleware(KeyPrefetch, identity=identity), Middleware(life.middleware)])


def app_from_env() -> Starlette:
    """One worker's app from ``COMPTROLLER_CONFIG`` and ``COMPTROLLER_DB`` (uvicorn's factory).

    Raises:
        ConfigError: for an invalid config file (cascades, routing and groups included), a cascade
            tier model no provider serves, or a missing provider key.
    """
    die_with_parent()  # a worker of `comptroller serve` exits when serve dies
    policy, config = load_gateway_config(os.environ.get("COMPTROLLER_CONFIG") or None)
    db_url = os.environ.get("COMPTROLLER_DB") or DEFAULT_DB
    if "ledger_threads" not in config.model_fields_set and db_url.startswith(("postgresql://", "postgres://")):
        config = config.model_copy(update={"ledger_threads": True})  # a network round trip per ledger call
    engine = build_engine(db_url=db_url, policy=policy)
    routing = policy.routing_config(engine.prices)  # both checked by load_gateway_config
    groups = policy.group_definitions()
    keys = keys_from_url(db_url)
    transfers = transfers_from_url(db_url)
    fees = policy.fees.schedule() if policy.fees else None

    def close() -> None:
        engine.close()
        keys.close()
        transfers.close()
        engine.store.close()

    return create_app(engine=engine, keys=keys, config=config, namespace=policy.namespace, routing=routing,
                      groups=groups.values(), on_shutdown=close, batch=policy.batch, transfers=transfers,
                      margin_floor=None if fees is None else fees.margin_floor)
