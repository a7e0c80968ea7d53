"""``/v1/tasks``: the task lifecycle over HTTP, tenant-scoped (issue 17).

=========================================  ============================================================
``POST /v1/tasks``                         ``{"id", "title", "actions_min"?, "status"?}``: create (201; an
                                           existing id answers the stored task, 200)
``GET  /v1/tasks``                         the tenant's tasks, each with ``stale``
``GET  /v1/tasks/{id}``                    the task, ``stale``, its calls, ``cost_mc``, its task-level
                                           ``budgets`` (limit, settled, reserved, remaining) and actions
``POST /v1/tasks/{id}/assign``             ``{"assignee"}``: the caller's agent assigns (chain of command)
``POST /v1/tasks/{id}/move``               ``{"status"}``: ``done`` only with its verified actions
``POST /v1/tasks/{id}/heartbeat``          the assignee's heartbeat
=========================================  ============================================================

The tenant and the acting agent come from the key, as for ``/v1/actions``. A move the table,
the chain of command or the actions do not allow answers 409 ``action_conflict`` with the reason;
no such task 404 ``action_not_found``. A move into ``in_progress`` past the day's attempts (defense
layer 2, ``[retries] retries_max_per_day``) answers 429 ``retry_limit`` in the shape a refused call
gets (``Retry-After`` to 00:00 UTC, ``x-should-retry: false``, the verdict's evidence).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from comptroller.domain.tasks import Task, TaskStatus
from comptroller.gateway.apis.request_body import read_body
from comptroller.gateway.guard_http import GuardServices, endpoint, on_ledger, parse_body, tenant_agent
from comptroller.gateway.runtime import Gateway

__all__ = ["TaskIn", "task_routes"]


class TaskIn(BaseModel):
    """A task to create."""

    model_config = ConfigDict(extra="forbid")
    id: str = Field(min_length=1, max_length=256)
    title: str = Field(min_length=1, max_length=1000)
    actions_min: int = Field(default=1, ge=0, le=1000)
    status: TaskStatus = TaskStatus.BACKLOG


class AssignIn(BaseModel):
    """Whom to assign."""

    model_config = ConfigDict(extra="forbid")
    assignee: str = Field(min_length=1, max_length=256)


class MoveIn(BaseModel):
    """Where to move."""

    model_config = ConfigDict(extra="forbid")
    status: TaskStatus


def task_routes(services: GuardServices) -> list[Route]:
    """The ``/v1/tasks`` routes on the shared services."""
    return [
        Route("/v1/tasks", endpoint(services, _create), methods=["POST"]),
        Route("/v1/tasks", endpoint(services, _list), methods=["GET"]),
        Route("/v1/tasks/{task_id}", endpoint(services, _show), methods=["GET"]),
        Route("/v1/tasks/{task_id}/assign", endpoint(services, _assign), methods=["POST"]),
        Route("/v1/tasks/{task_id}/move", endpoint(services, _move), methods=["POST"]),
        Route("/v1/tasks/{task_id}/heartbeat", endpoint(services, _heartbeat), methods=["POST"]),
    ]


def _json(services: GuardServices, gw: Gateway, task: Task) -> dict[str, Any]:
    return {**task.to_record(), "stale": task.stale(gw.engine.clock.now(), services.settings.stale_s)}


async def _create(gw: Gateway, services: GuardServices, request: Request) -> Response:
    tenant, agent = tenant_agent(gw, request)
    body: TaskIn = parse_body(TaskIn, await read_body(request, gw.config.body_bytes_max))
    tasks = services.tasks(gw)
    existed = await on_ledger(gw, tasks.get, tenant, body.id)
    task = existed or await on_ledger(gw, tasks.create, tenant, body.id, body.title, by=agent,
                                      actions_min=body.actions_min, status=body.status)
    return JSONResponse({"task": _json(services, gw, task)}, status_code=200 if existed else 201)


async def _list(gw: Gateway, services: GuardServices, request: Request) -> Response:
    tenant, _ = tenant_agent(gw, request)
    found = await on_ledger(gw, services.tasks(gw).tasks, tenant)
    return JSONResponse({"tasks": [_json(services, gw, t) for t in found]})


async def _show(gw: Gateway, services: GuardServices, request: Request) -> Response:
    tenant, _ = tenant_agent(gw, request)
    task_id = request.path_params["task_id"]
    task = await on_ledger(gw, services.tasks(gw).must, tenant, task_id)
    actions = await on_ledger(gw, services.actions(gw).list, tenant)
    calls, cost_mc = await on_ledger(gw, services.tasks(gw).spend, tenant, task_id)
    budgets = await on_ledger(gw, services.tasks(gw).budgets, gw.namespace, tenant, task_id)
    now = gw.engine.clock.now()
    return JSONResponse({"task": _json(services, gw, task), "calls": calls, "cost_mc": cost_mc, "budgets": budgets,
                         "actions": [a.to_json(now) for a in actions if a.action.task == task_id]})


async def _assign(gw: Gateway, services: GuardServices, request: Request) -> Response:
    tenant, agent = tenant_agent(gw, request)
    body: AssignIn = parse_body(AssignIn, await read_body(request, gw.config.body_bytes_max))
    task = await on_ledger(gw, services.tasks(gw).assign, tenant, request.path_params["task_id"], body.assignee,
                           by=agent)
    return JSONResponse({"task": _json(services, gw, task)})


async def _move(gw: Gateway, services: GuardServices, request: Request) -> Response:
    tenant, agent = tenant_agent(gw, request)
    body: MoveIn = parse_body(MoveIn, await read_body(request, gw.config.body_bytes_max))
    task = await on_ledger(gw, services.tasks(gw).move, tenant, request.path_params["task_id"], body.status, by=agent)
    return JSONResponse({"task": _json(services, gw, task)})


async def _heartbeat(gw: Gateway, services: GuardServices, request: Request) -> Response:
    tenant, agent = tenant_agent(gw, request)
    task = await on_ledger(gw, services.tasks(gw).heartbeat, tenant, request.path_params["task_id"], by=agent)
    return JSONResponse({"task": _json(services, gw, task)})
