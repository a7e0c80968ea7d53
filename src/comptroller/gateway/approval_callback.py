"""``POST /v1/actions/{id}/approval``: approve or reject a held action from a signed webhook callback (issue 17).

A human approves in a chat (Telegram, Slack...); the bot relays the decision to this endpoint. The
request carries no API key: it is authenticated by an HMAC-SHA256 signature in the same scheme the
gateway signs its outgoing webhooks with (Standard Webhooks, :mod:`comptroller.notify.signing`), with
a shared secret in the same ``whsec_<base64>`` format, read from ``COMPTROLLER_APPROVAL_SECRET``::

    webhook-id: msg_2f9...                  (any unique id)
    webhook-timestamp: 1793577600           (Unix seconds, UTC; within 300 s of the gateway's clock)
    webhook-signature: v1,<base64(HMAC-SHA256(key, f"{id}.{timestamp}.{raw body}"))>

    {"action": "p1", "tenant": "acme", "decision": "approve", "by": "telegram:@ops"}

The secret is one for the gateway, not one per tenant: whoever holds it may decide any tenant's held
actions, as the admin key may, so keep it to the approval bot. ``action`` must repeat the path's id,
so a signed decision for one action cannot be replayed against another; a replay of the same
decision within the window finds the action decided (409). The decision is recorded as made by
``callback:<by>``. Answers: 200 with the action (``approved`` or ``rejected``;
429 ``action_refused`` when an approval finds the rate rules now refuse it, as the admin route), or an
error in the gateway's shape:

==============================================  ======  ================================
cause                                           status  ``code``
==============================================  ======  ================================
no ``COMPTROLLER_APPROVAL_SECRET`` configured   403     ``approval_callback_disabled``
a signature header missing, or no match         401     ``invalid_signature``
timestamp outside the 300 s window              401     ``stale_timestamp``
body not JSON, a field missing, ids differ      400     ``invalid_request``
no such action for that tenant                  404     ``action_not_found``
decided already (approved, rejected), or never  409     ``action_already_decided``
held
the hold expired before the decision            409     ``action_expired``
==============================================  ======  ================================
"""

from __future__ import annotations

import os
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import Response

from comptroller.gateway.apis.request_body import read_body
from comptroller.gateway.errors import GatewayError
from comptroller.gateway.guard_http import GuardServices, answer_action, on_ledger, parse_body
from comptroller.gateway.runtime import Gateway
from comptroller.notify.signing import SignatureError, decode_secret, verify_signature

__all__ = ["APPROVAL_SECRET_ENV", "APPROVAL_TOLERANCE_S", "ApprovalIn", "approval_secret", "signed_approval"]

APPROVAL_SECRET_ENV = "COMPTROLLER_APPROVAL_SECRET"
"""The environment variable holding the callback's shared secret (``whsec_<base64>``)."""
APPROVAL_TOLERANCE_S = 300.0
"""The replay window: how far ``webhook-timestamp`` may be from the gateway's clock, seconds."""


class ApprovalIn(BaseModel):
    """A signed decision on a held action."""

    model_config = ConfigDict(extra="forbid")
    action: str = Field(min_length=1, max_length=256)
    tenant: str = Field(min_length=1, max_length=256)
    decision: Literal["approve", "reject"]
    by: str = Field(min_length=1, max_length=256)


def approval_secret(environ: dict[str, str] | None = None) -> str | None:
    """The callback secret from ``COMPTROLLER_APPROVAL_SECRET`` (None when unset: the callback answers 403).

    Raises:
        ValueError: the variable is set but is not a valid ``whsec_`` secret (start-up stops: a typo
            must not leave approvals open or silently closed).
    """
    value = (os.environ if environ is None else environ).get(APPROVAL_SECRET_ENV, "").strip()
    if not value:
        return None
    try:
        decode_secret(value)
    except ValueError as exc:
        raise ValueError(f"{APPROVAL_SECRET_ENV}: {exc}") from None
    return value


def _check_signature(gw: Gateway, secret: str | None, request: Request, raw: bytes) -> None:
    if secret is None:
        raise GatewayError(403, f"signed approval callbacks are off: set {APPROVAL_SECRET_ENV} to a shared "
                           "whsec_ secret (or approve with the admin key or `comptroller action approve`)",
                           type_="permission_error", code="approval_callback_disabled")
    now = gw.engine.clock.now()
    stamp = request.headers.get("webhook-timestamp", "")
    try:
        skew_s = now.timestamp() - int(stamp)
    except ValueError:
        raise GatewayError(401, f"webhook-timestamp must be integer Unix seconds, got {stamp!r}",
                           type_="authentication_error", code="invalid_signature",
                           param="webhook-timestamp") from None
    if abs(skew_s) > APPROVAL_TOLERANCE_S:
        raise GatewayError(401, f"webhook-timestamp {stamp} is {skew_s:+.0f} s from the gateway's clock, outside "
                           f"the {APPROVAL_TOLERANCE_S:.0f} s window: a replayed or delayed callback; sign it "
                           "again with the current time", type_="authentication_error", code="stale_timestamp",
                           param="webhook-timestamp")
    try:
        verify_signature(secret, dict(request.headers), raw, tolerance_s=APPROVAL_TOLERANCE_S, now=now)
    except SignatureError as exc:
        raise GatewayError(401, f"the approval callback's signature does not verify: {exc}; sign the raw body "
                           "with the shared secret (Standard Webhooks v1)", type_="authentication_error",
                           code="invalid_signature", param="webhook-signature") from None


async def signed_approval(gw: Gateway, services: GuardServices, request: Request, secret: str | None) -> Response:
    """Verify the callback's signature and timestamp, then approve or reject the action (see the module)."""
    raw = await read_body(request, gw.config.body_bytes_max)
    _check_signature(gw, secret, request, raw)
    body: ApprovalIn = parse_body(ApprovalIn, raw)
    action_id = request.path_params["action_id"]
    if body.action != action_id:
        raise GatewayError(400, f"the signed body names action {body.action!r} but the path names {action_id!r}; "
                           "sign a body for the action you decide", code="invalid_request", param="action")
    service = services.actions(gw)
    record = await on_ledger(gw, service.decide, body.tenant, action_id, approve=body.decision == "approve",
                             by=f"callback:{body.by}")
    return answer_action(service, record)
