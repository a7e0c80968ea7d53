"""What the ``/v1/actions`` and ``/v1/tasks`` routes share: the services, built once per app on the
engine's store and clock, body parsing, the ledger call with its errors, and the caller's tenant and agent."""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from comptroller.actions_config import ActionPolicy, TaskSettings
from comptroller.domain.actions import ActionRecord, ActionStatus
from comptroller.domain.defenses.retries import RetryPolicy
from comptroller.domain.tasks import TaskError, TaskRefusedError
from comptroller.engine.actions import ActionConflictError, ActionService, UnknownActionError
from comptroller.engine.tasks import TaskService
from comptroller.gateway.attribution import attribute
from comptroller.gateway.errors import GatewayError, verdict_response
from comptroller.gateway.runtime import Gateway

__all__ = ["GuardServices", "Handler", "answer_action", "endpoint", "on_ledger", "parse_body", "tenant_agent"]

log = logging.getLogger("comptroller.gateway")


class GuardServices:
    """The routes' shared state: the policy read once, the services built on the first request.

    Args:
        policy: the ``[actions]`` sections.
        tasks: the ``[tasks]`` section.
        retries: defense layer 2's re-attempt limit (the policy's ``[retries]``), for a task's attempts.
    """

    def __init__(self, policy: ActionPolicy, tasks: TaskSettings, retries: RetryPolicy | None) -> None:
        self.policy = policy
        self.settings = tasks
        self.retries = retries
        self._actions: ActionService | None = None
        self._tasks: TaskService | None = None

    def actions(self, gw: Gateway) -> ActionService:
        """The action guard on the gateway's engine (store, clock, sinks)."""
        if self._actions is None:
            engine = gw.engine
            self._actions = ActionService(engine.store, engine.clock, self.policy, sinks=engine.sinks)
        return self._actions

    def tasks(self, gw: Gateway) -> TaskService:
        """The task service on the gateway's engine."""
        if self._tasks is None:
            self._tasks = TaskService(gw.engine.store, gw.engine.clock, self.actions(gw), self.settings,
                                      retries=self.retries)
        return self._tasks


Handler = Callable[[Gateway, GuardServices, Request], Awaitable[Response]]


def endpoint(services: GuardServices, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    """A route endpoint: ``handler`` with its GatewayError (or a task's ``retry_limit`` refusal, rendered as
    the LLM path renders it: 429, ``Retry-After`` to 00:00 UTC) rendered and the request counted."""
    async def run(request: Request) -> Response:
        gw: Gateway = request.app.state.gateway
        try:
            response = await handler(gw, services, request)
        except GatewayError as exc:
            response = exc.response()
        except TaskRefusedError as refused:
            response = verdict_response(refused.verdict)
        gw.metrics.requests.labels("actions", str(response.status_code)).inc()
        return response
    return run


def parse_body(model: type[BaseModel], raw: bytes) -> Any:
    """``raw`` validated as ``model``. Raises GatewayError 400 ``invalid_request`` naming the field."""
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(p) for p in first["loc"]) or None
        fields = ", ".join(model.model_fields)
        raise GatewayError(400, f"{param or 'body'}: {first['msg']}; send a JSON object with {fields}",
                           code="invalid_request", param=param) from None


async def on_ledger(gw: Gateway, operation: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run a service call in the gateway's ledger thread, its errors as GatewayErrors (404, 409, 503)."""
    try:
        return await gw.run(lambda: operation(*args, **kwargs))
    except UnknownActionError as exc:
        raise GatewayError(404, str(exc), code="action_not_found") from None
    except TaskRefusedError:
        raise
    except ActionConflictError as exc:
        raise GatewayError(409, str(exc), code=exc.code) from None
    except TaskError as exc:
        raise GatewayError(409, str(exc), code="action_conflict") from None
    except Exception:
        log.exception("action or task operation failed: the ledger did not answer")
        gw.metrics.ledger_errors.labels("actions").inc()
        raise GatewayError(503, "the ledger cannot be reached, so nothing was changed; retry shortly",
                           type_="api_error", code="ledger_unavailable", headers={"Retry-After": "1"}) from None


def tenant_agent(gw: Gateway, request: Request) -> tuple[str, str]:
    """The caller's tenant and agent (the key's; ``X-Comptroller-Agent`` narrows an unbound key)."""
    caller = gw.identity.authenticate(request.headers)
    who = attribute(caller, request.headers, namespace=gw.namespace, groups=gw.groups)
    return who.tenant, who.agent


def answer_action(service: ActionService, record: ActionRecord) -> Response:
    """The answer carrying an action: 200 (202 while held), or 429 ``action_refused`` naming every reason, with
    ``Retry-After`` when every reason is a rate rule that waiting clears."""
    body = {"action": record.to_json(service.clock.now())}
    if record.status is ActionStatus.REFUSED:
        waits = [r.retry_after_s for r in record.reasons]
        headers = {}
        if waits and all(w is not None for w in waits):
            headers["Retry-After"] = str(math.ceil(max(w for w in waits if w is not None)))
        codes = ", ".join(r.code for r in record.reasons)
        body["error"] = {"type": "action_refused", "code": "action_refused", "message":
                         f"the action guard refused action {record.action.id!r} ({codes}): "
                         + " ".join(r.message for r in record.reasons), "param": None}
        return JSONResponse(body, status_code=429, headers=headers)
    return JSONResponse(body, status_code=202 if record.status is ActionStatus.PENDING_APPROVAL else 200)
