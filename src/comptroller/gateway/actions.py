"""``/v1/actions``: the action guard over HTTP, tenant-scoped (issue 17; DESIGN.md rule 9).

============================================  ====================================================
``POST /v1/actions/check``                    check an action before its side effect; body
                                              ``{"id", "platform", "kind", "text", "task"?, "fields"?}``
``GET  /v1/actions/{id}``                     the action as it reads now
``POST /v1/actions/{id}/outcome``             ``{"published": true, "url": "..."}`` after the side
                                              effect; the first check runs in the background, later
                                              ones on the durable schedule (:mod:`.reverify`)
``POST /v1/actions/{id}/approve`` | ``reject``  an admin key only: ``{"tenant", "by"}``
``POST /v1/actions/{id}/approval``            a signed webhook callback: ``{"action", "tenant",
                                              "decision": "approve" | "reject", "by"}`` (no key; HMAC
                                              signature, :mod:`.approval_callback`)
============================================  ====================================================

The tenant and agent come from the key (``X-Comptroller-Agent`` narrows an unbound key, as for
calls); an action id lives per tenant. A check answers 200 ``allowed``, 202 ``pending_approval`` or
429 ``action_refused`` (``Retry-After`` when every reason is a rate rule that waiting clears), each
with the action in ``"action"``. The rules are the ``[actions]`` sections of the policy file the
worker was started with (``COMPTROLLER_CONFIG``), read once when the routes are built; the time is
the engine's clock (a :class:`~comptroller.clock.VirtualClock` in tests), never a field of the request,
so an agent cannot move its own time past a gap.

===========================================  ======  ================================
error                                        status  ``code``
===========================================  ======  ================================
body not JSON, field missing or mistyped     400     ``invalid_request``
an id reused with other fields, a transition 409     ``action_conflict``
deciding an action decided already           409     ``action_already_decided``
deciding an action whose hold expired        409     ``action_expired``
no such action for this tenant               404     ``action_not_found``
approving with a tenant key                  403     ``scope_not_allowed``
the ledger cannot be reached                 503     ``ledger_unavailable``
===========================================  ======  ================================
"""

from __future__ import annotations

import logging
import os

from pydantic import BaseModel, ConfigDict, Field
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from comptroller.actions_config import ActionPolicy, TaskSettings
from comptroller.config import load_policy
from comptroller.domain.actions import Action, ActionStatus
from comptroller.engine.actions import ActionService
from comptroller.gateway.apis.request_body import read_body
from comptroller.gateway.approval_callback import approval_secret, signed_approval
from comptroller.gateway.errors import GatewayError
from comptroller.gateway.guard_http import (
    GuardServices,
    answer_action,
    endpoint,
    on_ledger,
    parse_body,
    tenant_agent,
)
from comptroller.gateway.runtime import Gateway
from comptroller.gateway.tasks import task_routes

__all__ = ["ActionIn", "action_routes", "guard_services"]

log = logging.getLogger("comptroller.gateway")

JsonScalar = str | int | float | bool | None


class ActionIn(BaseModel):
    """An action to check."""

    model_config = ConfigDict(extra="forbid")
    id: str = Field(min_length=1, max_length=256)
    platform: str = Field(min_length=1, max_length=128)
    kind: str = Field(min_length=1, max_length=128)
    text: str = Field(max_length=100_000)
    task: str | None = Field(default=None, max_length=256)
    fields: dict[str, JsonScalar] = Field(default_factory=dict)


class OutcomeIn(BaseModel):
    """What happened after an allowed action."""

    model_config = ConfigDict(extra="forbid")
    published: bool
    url: str | None = Field(default=None, max_length=4096)


class DecisionIn(BaseModel):
    """An approval or a rejection, by an admin."""

    model_config = ConfigDict(extra="forbid")
    tenant: str = Field(min_length=1)
    by: str = Field(min_length=1)


def guard_services(policy: ActionPolicy | None = None, tasks: TaskSettings | None = None) -> GuardServices:
    """The services the routes and the re-verifier share: ``policy``, ``tasks`` and the re-attempt limit
    default to the ``[actions]``, ``[tasks]`` and ``[retries]`` of ``COMPTROLLER_CONFIG``.

    Raises:
        ConfigError: the policy file is invalid (``comptroller serve`` has checked it already).
    """
    file = load_policy(os.environ.get("COMPTROLLER_CONFIG") or None)
    return GuardServices(policy or file.action_policy(), tasks or file.task_settings(), file.defenses().retries)


def action_routes(state: GuardServices | None = None) -> list[Route]:
    """The ``/v1/actions`` and ``/v1/tasks`` routes on ``state`` (default :func:`guard_services`).

    Raises:
        ConfigError: the policy file is invalid (``comptroller serve`` has checked it already).
        ValueError: ``COMPTROLLER_APPROVAL_SECRET`` is set but not a ``whsec_`` secret.
    """
    state = state or guard_services()
    secret = approval_secret()

    async def approval(gw: Gateway, services: GuardServices, request: Request) -> Response:
        return await signed_approval(gw, services, request, secret)
    return [
        Route("/v1/actions/check", endpoint(state, _check), methods=["POST"]),
        Route("/v1/actions/{action_id}", endpoint(state, _get), methods=["GET"]),
        Route("/v1/actions/{action_id}/outcome", endpoint(state, _outcome), methods=["POST"]),
        Route("/v1/actions/{action_id}/approve", endpoint(state, _approve), methods=["POST"]),
        Route("/v1/actions/{action_id}/reject", endpoint(state, _reject), methods=["POST"]),
        Route("/v1/actions/{action_id}/approval", endpoint(state, approval), methods=["POST"]),
        *task_routes(state),
    ]


async def _check(gw: Gateway, services: GuardServices, request: Request) -> Response:
    service = services.actions(gw)
    tenant, agent = tenant_agent(gw, request)
    body: ActionIn = parse_body(ActionIn, await read_body(request, gw.config.body_bytes_max))
    action = Action(id=body.id, tenant=tenant, agent=agent, platform=body.platform, kind=body.kind, text=body.text,
                    task=body.task, fields=body.fields)
    return answer_action(service, await on_ledger(gw, service.check, action))


async def _get(gw: Gateway, services: GuardServices, request: Request) -> Response:
    service = services.actions(gw)
    tenant, _ = tenant_agent(gw, request)
    record = await on_ledger(gw, service.get, tenant, request.path_params["action_id"])
    if record is None:
        raise GatewayError(404, f"no action {request.path_params['action_id']!r} for this tenant",
                           code="action_not_found")
    return answer_action(service, record)


async def _outcome(gw: Gateway, services: GuardServices, request: Request) -> Response:
    service = services.actions(gw)
    tenant, _ = tenant_agent(gw, request)
    body: OutcomeIn = parse_body(OutcomeIn, await read_body(request, gw.config.body_bytes_max))
    action_id = request.path_params["action_id"]
    record = await on_ledger(gw, service.record_outcome, tenant, action_id, published=body.published, url=body.url)
    response = answer_action(service, record)
    if record.status is ActionStatus.UNVERIFIED and record.verify_attempts == 0:
        response.background = BackgroundTask(_check_once, service, tenant, action_id)
    return response


def _check_once(service: ActionService, tenant: str, action_id: str) -> None:
    try:
        service.check_once(tenant, action_id)
    except Exception:
        log.exception("verifying action %s of %s failed; it stays unverified, and its schedule re-checks it",
                      action_id, tenant)


async def _decide(gw: Gateway, services: GuardServices, request: Request, approve: bool) -> Response:
    service = services.actions(gw)
    caller = gw.identity.authenticate(request.headers)
    if not caller.admin:
        raise GatewayError(403, "approving or rejecting an action takes the admin key", code="scope_not_allowed",
                           param="authorization")
    body: DecisionIn = parse_body(DecisionIn, await read_body(request, gw.config.body_bytes_max))
    record = await on_ledger(gw, service.decide, body.tenant, request.path_params["action_id"], approve=approve,
                           by=body.by)
    return answer_action(service, record)


async def _approve(gw: Gateway, services: GuardServices, request: Request) -> Response:
    return await _decide(gw, services, request, True)


async def _reject(gw: Gateway, services: GuardServices, request: Request) -> Response:
    return await _decide(gw, services, request, False)
