"""``POST /v1/groups/{group_id}/dispatch``: who in a group chat may answer a message, and why not.

The body::

    {"id": "m-17", "author": "alice", "text": "@bob can you check the index?", "kind": "chat",
     "at": "2026-11-21T17:00:00Z"}

``kind`` is ``chat`` (default), ``draft`` or ``verdict``; mentions are the ``@agent`` ids in
the text (:func:`comptroller.domain.dispatch.mentions_in`); ``at`` (optional, with a time
zone) is when the message was posted, else the engine's clock at arrival. The answer is the decision of
:meth:`comptroller.groups.GroupService.dispatch` as its ``to_record()``: ``responders``
(ordered, each with its reason and score), ``left_out`` (every other member, with reason and
detail), ``mode`` (the group budget's mode), ``k``, ``remaining`` (the group budget's
remaining fraction) and ``loop`` (a cut-off loop, if any). Posting the same message again
(same id, author, text, kind and ``at``) answers the first decision: a retry is safe when
the client sends ``at``; without it the retry gets a new time and is refused as a reused id.

The dispatched agents then call models with ``X-Comptroller-Conversation: <the group's
conversation>`` so the group budget (the conversation budget) admits or refuses their calls.
In a group whose ``mode`` is ``strict``, only the members dispatched for the message a call
answers are admitted; the others get 429 ``not_dispatched``
(:mod:`comptroller.domain.defenses.dispatch_rule`). A call names the message it answers with
``X-Comptroller-Message: <message id>``; without it, the group's latest dispatched message.

The room, its decisions and the gate live in the ledger (:mod:`comptroller.groups.rows`), so
every gateway worker and replica decides on the same room.

Who may dispatch where (groups carry a tenant per member, :mod:`comptroller.groups.config`):

* an admin key: any group;
* a tenant key: only groups with at least one member of its tenant (any other group is
  404, as if it did not exist); the author, when a member, must be of the key's tenant,
  and must be the key's agent when the key is bound to one (else 403). An author who is
  not a member (a person, a tool) may be named freely.

=========================================  ======  ================================
error                                      status  ``code``
=========================================  ======  ================================
body not JSON, field missing or mistyped   400     ``invalid_request``
unknown mention, reused id, bad message    400     ``invalid_message``
author of another tenant or agent          403     ``scope_not_allowed``
no such group (for this key)               404     ``group_not_found``
the room kept changing under the write     503     ``ledger_contention``
the ledger cannot be read                  503     ``ledger_unavailable``
=========================================  ======  ================================
"""

from __future__ import annotations

import logging

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from comptroller.domain.dispatch import GroupError, Kind, Message, mentions_in
from comptroller.gateway.apis.request_body import read_body
from comptroller.gateway.errors import GatewayError
from comptroller.gateway.identity import Caller
from comptroller.gateway.runtime import Gateway
from comptroller.groups import GroupDefinition, UnknownGroupError
from comptroller.groups.rows import GroupContentionError

__all__ = ["DispatchIn", "dispatch", "visible_to"]

log = logging.getLogger("comptroller.gateway")


class DispatchIn(BaseModel):
    """A message posted to a group."""

    model_config = ConfigDict(extra="forbid")
    id: str = Field(min_length=1, max_length=256)
    author: str = Field(min_length=1, max_length=256)
    text: str = Field(max_length=1_000_000)
    kind: Kind = Kind.CHAT
    at: AwareDatetime | None = None


def visible_to(caller: Caller, definition: GroupDefinition) -> bool:
    """True if ``caller`` may see and use the group: an admin key, or a member of its tenant is in it."""
    return caller.admin or caller.key.tenant in definition.tenants.values()


def _not_found(group_id: str) -> GatewayError:
    return GatewayError(404, f"no group {group_id!r} for this key; GET /admin/groups lists the groups it may use",
                        code="group_not_found", param="group_id")


def _check_author(caller: Caller, definition: GroupDefinition, author: str) -> None:
    tenant = definition.tenants.get(author)
    if caller.admin or tenant is None:
        return
    if tenant != caller.key.tenant:
        raise GatewayError(403, f"author {author!r} is an agent of tenant {tenant!r}; this key belongs to "
                           f"{caller.key.tenant!r}", type_="permission_error", code="scope_not_allowed",
                           param="author")
    if caller.key.agent is not None and author != caller.key.agent:
        raise GatewayError(403, f"this key is bound to agent {caller.key.agent!r}; it cannot post as {author!r}",
                           type_="permission_error", code="scope_not_allowed", param="author")


def _parse(raw: bytes) -> DispatchIn:
    try:
        return DispatchIn.model_validate_json(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(p) for p in first["loc"]) or None
        raise GatewayError(400, f"{param or 'body'}: {first['msg']}; send {{\"id\", \"author\", \"text\", "
                           "\"kind\": \"chat\" | \"draft\" | \"verdict\"}", code="invalid_request",
                           param=param) from None


async def dispatch(gw: Gateway, request: Request) -> Response:
    """Decide who answers a message posted to a group (see the module docstring).

    Raises:
        GatewayError: 400, 401, 403, 404 or 503 as the module's table says.
    """
    caller = gw.identity.authenticate(request.headers)
    group_id = str(request.path_params["group_id"])
    body = _parse(await read_body(request, gw.config.body_bytes_max))
    try:
        definition = gw.groups.group(group_id)
    except UnknownGroupError:
        raise _not_found(group_id) from None
    if not visible_to(caller, definition):
        raise _not_found(group_id)
    _check_author(caller, definition, body.author)
    try:
        message = Message(id=body.id, author=body.author, text=body.text, at=body.at or gw.engine.clock.now(),
                          kind=body.kind, mentions=mentions_in(body.text))
        decision = await gw.run(gw.groups.dispatch, group_id, message)
    except UnknownGroupError:  # removed meanwhile
        raise _not_found(group_id) from None
    except GroupContentionError as exc:
        raise GatewayError(503, str(exc), type_="api_error", code="ledger_contention",
                           headers={"Retry-After": "1"}) from None
    except GroupError as exc:
        raise GatewayError(400, str(exc), code="invalid_message") from None
    except Exception:
        log.exception("dispatch in group %s failed: the ledger did not answer", group_id)
        gw.metrics.ledger_errors.labels("dispatch").inc()
        raise GatewayError(503, "the ledger cannot be reached, so the group budget is unknown and nobody is "
                           "dispatched; retry shortly", type_="api_error", code="ledger_unavailable",
                           headers={"Retry-After": "1"}) from None
    return JSONResponse(decision.to_record())
