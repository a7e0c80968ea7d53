"""The attribution of a gateway call: the key's scope, narrowed by the ``X-Comptroller-*`` headers.

The key (``Authorization: Bearer ck-...``) fixes the tenant and, if it is bound to
one, the agent. Headers may narrow the attribution within that scope and never widen
it (DESIGN.md, "Interfaces users expect"; rule 13, "Tenants are walls"):

==============================  ===============================================================
header                          rule
==============================  ===============================================================
``X-Comptroller-Tenant``        must equal the key's tenant (else 403): it can never switch tenant
``X-Comptroller-Agent``         names the agent when the key has none; must equal the key's agent
                                when it has one (else 403)
``X-Comptroller-Conversation``  adds a conversation of the key's tenant (scope
                                ``ns|tenant|conversation``), or, when it is the conversation of a
                                registered shared group, that group's conversation (scope
                                ``ns|conversation``, the group budget) if the key's tenant has a
                                member in the group (else 403, ``group_not_member``)
``X-Comptroller-Task``          adds a task of the key's tenant (scope ``ns|tenant|task``)
``X-Comptroller-Phase``         a label for reports (never budgeted)
``X-Comptroller-Run``           the scheduled run (its deadline applies)
``X-Comptroller-Attempt``       the attempt of the task (counts against the re-attempt limit)
``X-Comptroller-Message``       the group message the call answers (a strict group admits only the
                                members dispatched for it; default: its latest dispatched message)
==============================  ===============================================================

Adding a conversation or task only adds budgets that must also admit the call, so it
cannot lift any limit the key's own scope has; and since a conversation or task id is
the key's tenant's own, naming another tenant's id reaches a fresh scope of one's own,
never the other tenant's money, re-attempts, loop history or breakers. The 403 for a
shared group the tenant is not in says nothing of the group's budget or members.
"""

from __future__ import annotations

from collections.abc import Mapping

from comptroller.domain.scopes import Attribution, AttributionError
from comptroller.gateway.errors import GatewayError
from comptroller.gateway.identity import Caller
from comptroller.groups import GroupService, UnknownGroupError

__all__ = ["attribute", "shared_group_tenants"]

_ATTRIBUTIONS_MAX = 10_000
_attributions: dict[tuple[str | bool | None, ...], Attribution] = {}
"""Attributions built, by their fields (immutable, their checks pure): an agent's calls share one."""


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    return None if value is None else value.strip()


def _forbidden(message: str, param: str, code: str = "scope_not_allowed") -> GatewayError:
    return GatewayError(403, message, type_="permission_error", code=code, param=param)


def shared_group_tenants(groups: GroupService, conversation: str) -> frozenset[str] | None:
    """The tenants with a member in the registered group whose conversation is ``conversation``.

    Args:
        groups: the gateway's group registry (read through its public API).
        conversation: a conversation id as a caller named it.

    Returns:
        The member tenants (a group may span several), or None when no registered group
        uses this conversation (it is then an ordinary conversation of the caller's tenant).
    """
    for group_id in groups.group_ids():
        try:
            definition = groups.group(group_id)
        except UnknownGroupError:  # removed since group_ids() answered
            continue
        if definition.group.conversation == conversation:
            return frozenset(definition.tenants.values())
    return None


def attribute(caller: Caller, headers: Mapping[str, str], *, namespace: str,
              groups: GroupService) -> Attribution:
    """The attribution of a call: the key's scope, narrowed by the ``X-Comptroller-*`` headers.

    Args:
        caller: the authenticated caller.
        headers: the request headers (lower-case names, as Starlette gives them).
        namespace: the gateway's namespace.
        groups: the registered groups; a conversation that is a group's is shared with the
            group's member tenants (``Attribution.conversation_shared``).

    Raises:
        GatewayError: 403 when a header would widen or leave the key's scope (another tenant,
            another agent than the key's, a shared group without a member of the key's tenant),
            or when an admin key makes a call; 400 for an empty or over-long id.
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
    conversation = _header(headers, "x-comptroller-conversation")
    shared = False
    if conversation:
        members = shared_group_tenants(groups, conversation)
        if members is not None and key.tenant not in members:
            raise _forbidden(f"conversation {conversation!r} is a shared group's, and tenant {key.tenant!r} has "
                             "no member in it; name a conversation of your own, or ask an admin to add your "
                             "agent to the group", "x-comptroller-conversation", code="group_not_member")
        shared = members is not None
    agent = key.agent or agent or "default"
    task, phase = _header(headers, "x-comptroller-task"), _header(headers, "x-comptroller-phase")
    fields = (namespace, key.tenant, agent, conversation, task, phase, shared, key.id)
    found = _attributions.get(fields)
    if found is not None:
        return found
    try:
        attribution = Attribution(namespace=namespace, tenant=key.tenant, agent=agent, conversation=conversation,
                                  task=task, phase=phase, conversation_shared=shared, key_id=key.id)
    except AttributionError as exc:
        field = str(exc).split(" ", 1)[0].removeprefix("attribution.")
        raise GatewayError(400, f"{exc}; fix the X-Comptroller-{field.capitalize()} header",
                           code="invalid_header", param=f"x-comptroller-{field}") from None
    if len(_attributions) >= _ATTRIBUTIONS_MAX:
        _attributions.clear()
    _attributions[fields] = attribution
    return attribution
