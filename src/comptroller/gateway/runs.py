"""``POST /v1/runs``: open a scheduled run (heartbeat, cron job) with a deadline and an optional spend cap.

The body::

    {"id": "nightly-2026-11-21", "duration_s_max": 1800, "spend_cap_usd": "2.50", "kind": "cron"}

The run belongs to the key's tenant and agent (the ``X-Comptroller-Agent`` header narrows
an unbound key, as for calls). Calls then name it with ``X-Comptroller-Run: <id>``; at
admit, in the reservation's transaction and so across every worker and replica sharing the
ledger, a call after the deadline is refused with ``deadline_exceeded``, a call whose
ceiling would take the run's admitted ceilings past the cap with ``deadline_exceeded``
(detector ``run_spend_cap``), and a call naming a run never opened for its tenant with
``unknown_run``. Opening an id that exists answers the stored run (200) unchanged;
a new run answers 201. Run ids live per tenant: another tenant's run of the same id is a
different run.

=========================================  ======  ================================
error                                      status  ``code``
=========================================  ======  ================================
body not JSON, field missing or mistyped   400     ``invalid_request``
an admin key, another tenant or agent      403     ``scope_not_allowed``
the ledger cannot be reached               503     ``ledger_unavailable``
=========================================  ======  ================================
"""

from __future__ import annotations

import logging
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from comptroller.domain.defenses.deadline import RunKind, run_key
from comptroller.domain.defenses.errors import DefenseConfigError
from comptroller.domain.money import parse_usd, usd_to_mc_half_up
from comptroller.domain.scopes import Attribution
from comptroller.gateway.apis.request_body import read_body
from comptroller.gateway.attribution import attribute
from comptroller.gateway.errors import GatewayError
from comptroller.gateway.runtime import Gateway

__all__ = ["RunIn", "open_run", "runs_endpoint"]

log = logging.getLogger("comptroller.gateway")


class RunIn(BaseModel):
    """A run to open."""

    model_config = ConfigDict(extra="forbid")
    id: str = Field(min_length=1, max_length=256)
    duration_s_max: float = Field(gt=0, le=7 * 86_400)
    spend_cap_usd: str | None = None
    kind: RunKind = RunKind.SCHEDULED


def _parse(raw: bytes) -> RunIn:
    try:
        return RunIn.model_validate_json(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(p) for p in first["loc"]) or None
        raise GatewayError(400, f"{param or 'body'}: {first['msg']}; send {{\"id\", \"duration_s_max\" (s, at "
                           "most 604800), \"spend_cap_usd\" (optional decimal string), \"kind\"}",
                           code="invalid_request", param=param) from None


def _cap_mc(body: RunIn) -> int | None:
    if body.spend_cap_usd is None:
        return None
    try:
        return usd_to_mc_half_up(parse_usd(body.spend_cap_usd, "spend_cap_usd"))
    except ValueError as exc:
        raise GatewayError(400, str(exc), code="invalid_request", param="spend_cap_usd") from None


async def open_run(gw: Gateway, request: Request) -> Response:
    """Open a run for the key's tenant and agent (see the module docstring).

    Raises:
        GatewayError: 400, 401, 403 or 503 as the module's table says.
    """
    caller = gw.identity.authenticate(request.headers)
    who = attribute(caller, request.headers, namespace=gw.namespace, groups=gw.groups)
    body = _parse(await read_body(request, gw.config.body_bytes_max))
    cap = _cap_mc(body)
    owner = Attribution(namespace=who.namespace, tenant=who.tenant, agent=who.agent)
    try:
        run = await gw.run(_open, gw, body, owner, cap)
    except DefenseConfigError as exc:
        raise GatewayError(400, str(exc), code="invalid_request") from None
    except Exception:
        log.exception("opening run %s failed: the ledger did not answer", body.id)
        gw.metrics.ledger_errors.labels("runs").inc()
        raise GatewayError(503, "the ledger cannot be reached, so the run was not opened; retry shortly",
                           type_="api_error", code="ledger_unavailable", headers={"Retry-After": "1"}) from None
    created, record = run
    return JSONResponse(record, status_code=201 if created else 200)


def _open(gw: Gateway, body: RunIn, owner: Attribution, cap: int | None) -> tuple[bool, dict[str, Any]]:
    existed = gw.engine.store.state(run_key(owner, body.id)) is not None
    run = gw.engine.open_run(body.id, body.duration_s_max, attribution=owner, kind=body.kind, spend_cap_mc=cap)
    created = not existed
    record: dict[str, Any] = {**run.to_record(), "deadline_at": run.deadline_at.isoformat(),
                              "tenant": owner.tenant}
    return created, record


async def runs_endpoint(request: Request) -> Response:
    """The ``POST /v1/runs`` route: :func:`open_run` with its errors rendered and counted."""
    gw: Gateway = request.app.state.gateway
    try:
        response = await open_run(gw, request)
    except GatewayError as exc:
        response = exc.response()
    gw.metrics.requests.labels("runs", str(response.status_code)).inc()
    return response
