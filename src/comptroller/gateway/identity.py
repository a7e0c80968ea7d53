"""Who is calling: the API key, and the attribution it allows.

The key (``Authorization: Bearer ck-...``) fixes the tenant and, if it is bound to
one, the agent. Headers may narrow the attribution within that scope and never widen
it (DESIGN.md, "Interfaces users expect"):

==============================  ===============================================================
header                          rule
==============================  ===============================================================
``X-Comptroller-Tenant``        must equal the key's tenant (else 403): it can never switch tenant
``X-Comptroller-Agent``         names the agent when the key has none; must equal the key's agent
                                when it has one (else 403)
``X-Comptroller-Conversation``  adds a conversation (its budgets apply too: narrower, never wider)
``X-Comptroller-Task``          adds a task (likewise)
``X-Comptroller-Phase``         a label for reports (never budgeted)
``X-Comptroller-Run``           the scheduled run (its deadline applies)
``X-Comptroller-Attempt``       the attempt of the task (counts against the re-attempt limit)
==============================  ===============================================================

Adding a conversation or task only adds budgets that must also admit the call, so it
cannot lift any limit the key's own scope has.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from comptroller.domain.scopes import Attribution, AttributionError
from comptroller.gateway.errors import GatewayError
from comptroller.storage.keys import ApiKey, KeyStore, hash_key

__all__ = ["Caller", "Identity", "attribute"]

_ENV_ADMIN_ID = "env-admin"


@dataclass(frozen=True, slots=True)
class Caller:
    """An authenticated caller (a stored key or the environment's admin key)."""

    key: ApiKey

    @property
    def admin(self) -> bool:
        """True for an admin key."""
        return self.key.admin


def _unauthorized(message: str) -> GatewayError:
    return GatewayError(401, message, type_="authentication_error", code="invalid_api_key",
                        headers={"WWW-Authenticate": "Bearer"})


class Identity:
    """Authenticates bearer keys against a :class:`KeyStore` and an optional admin key.

    Args:
        keys: the key store.
        admin_key: a plaintext admin key from the environment, or None.
    """

    def __init__(self, keys: KeyStore, admin_key: str | None = None) -> None:
        self.keys = keys
        self._admin_digest = None if admin_key is None else hash_key(admin_key)

    def authenticate(self, headers: Mapping[str, str]) -> Caller:
        """The caller of a request.

        Raises:
            GatewayError: 401 when the key is missing, malformed, unknown or revoked.
        """
        header = headers.get("authorization")
        if not header:
            raise _unauthorized("no API key: send the header 'Authorization: Bearer ck-...'")
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise _unauthorized("the Authorization header must be 'Bearer <API key>'")
        if self._admin_digest is not None and hmac.compare_digest(self._admin_digest, hash_key(token)):
            return Caller(ApiKey(id=_ENV_ADMIN_ID, tenant="*", agent=None, name="admin key from the environment",
                                 admin=True, models=None, created_at=datetime.fromtimestamp(0, UTC),
                                 revoked_at=None, digest=self._admin_digest))
        key = self.keys.verify(token)
        if key is None:
            raise _unauthorized("invalid or revoked API key; create one with `comptroller key create`")
        return Caller(key)


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    return None if value is None else value.strip()


def _forbidden(message: str, param: str) -> GatewayError:
    return GatewayError(403, message, type_="permission_error", code="scope_not_allowed", param=param)


def attribute(caller: Caller, headers: Mapping[str, str], *, namespace: str) -> Attribution:
    """The attribution of a call: the key's scope, narrowed by the ``X-Comptroller-*`` headers.

    Raises:
        GatewayError: 403 when a header would widen or leave the key's scope (another tenant,
            another agent than the key's), or when an admin key makes a call; 400 for an
            empty or over-long id.
    """
    key = caller.key
    if key.admin:
        raise _forbidden("an admin key is for the admin API; call models with a tenant key", "authorization")
    tenant = _header(headers, "x-comptroller-tenant")
    if tenant is not None and tenant != key.tenant:
        raise _forbidden(f"this key belongs to tenant {key.tenant!r}; it cannot call for {tenant!r}",
                         "x-comptroller-tenant")
    agent = _header(headers, "x-comptroller-agent")
    if key.agent is not None and agent is not None and agent != key.agent:
        raise _forbidden(f"this key is bound to agent {key.agent!r}; it cannot call as {agent!r}",
                         "x-comptroller-agent")
    try:
        return Attribution(namespace=namespace, tenant=key.tenant, agent=key.agent or agent or "default",
                           conversation=_header(headers, "x-comptroller-conversation"),
                           task=_header(headers, "x-comptroller-task"), phase=_header(headers, "x-comptroller-phase"))
    except AttributionError as exc:
        field = str(exc).split(" ", 1)[0].removeprefix("attribution.")
        raise GatewayError(400, f"{exc}; fix the X-Comptroller-{field.capitalize()} header",
                           code="invalid_header", param=f"x-comptroller-{field}") from None
