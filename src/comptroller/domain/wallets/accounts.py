"""The names of wallet accounts: one string per account, its kind before the first ``:``.

* ``agent:<ns|tenant|agent>``: an agent's wallet (the agent's budget scope key);
* ``tenant:<ns|tenant>``: a customer tenant's wallet;
* ``platform:revenue``: what the platform earns;
* ``provider:<model>``: what the LLM providers were paid, one account per priced model;
* ``infra:<item>``: a shared infrastructure item (a GPU node, a VPS) that agents pay for;
* ``conversation:<scope>``: a conversation charged its share of infrastructure;
* ``external:<name>``: money entering or leaving the system (deposits, top-ups).

Scope keys are :meth:`comptroller.domain.scopes.Attribution.scopes` keys, so a wallet and
the agent's budget name the same agent. These are names only: the ledger's budget
accounts stay as they are.
"""

from __future__ import annotations

from enum import StrEnum

from comptroller.domain.scopes import Attribution, Level

__all__ = ["PLATFORM_REVENUE", "AccountKind", "account_kind", "agent_wallet", "conversation_account",
           "external_account", "infra_account", "provider_account", "tenant_wallet"]


class AccountKind(StrEnum):
    """What an account is, from the prefix of its name."""

    AGENT = "agent"
    TENANT = "tenant"
    PLATFORM = "platform"
    PROVIDER = "provider"
    INFRA = "infra"
    CONVERSATION = "conversation"
    EXTERNAL = "external"


PLATFORM_REVENUE = "platform:revenue"
"""The platform's revenue account."""


def agent_wallet(attribution: Attribution) -> str:
    """The wallet of the call's agent (``agent:<ns|tenant|agent>``)."""
    return f"{AccountKind.AGENT}:{dict(attribution.scopes())[Level.AGENT]}"


def tenant_wallet(attribution: Attribution) -> str:
    """The wallet of the call's tenant (``tenant:<ns|tenant>``)."""
    return f"{AccountKind.TENANT}:{dict(attribution.scopes())[Level.TENANT]}"


def conversation_account(attribution: Attribution) -> str | None:
    """The account of the call's conversation, or None when it has none."""
    scope = dict(attribution.scopes()).get(Level.CONVERSATION)
    return None if scope is None else f"{AccountKind.CONVERSATION}:{scope}"


def provider_account(model: str) -> str:
    """The cost account of the provider serving ``model`` (one per priced model id)."""
    return f"{AccountKind.PROVIDER}:{model}"


def infra_account(item: str) -> str:
    """The account of an ``[[infra]]`` item."""
    return f"{AccountKind.INFRA}:{item}"


def external_account(name: str) -> str:
    """An account outside the system (``external:bank``): deposits come from it."""
    return f"{AccountKind.EXTERNAL}:{name}"


def account_kind(account: str) -> AccountKind:
    """The kind of an account name.

    Raises:
        ValueError: naming the account and the known prefixes when it has none of them.
    """
    prefix = account.split(":", 1)[0]
    try:
        return AccountKind(prefix)
    except ValueError:
        raise ValueError(f"account {account!r} has no known kind; names start with one of "
                         f"{', '.join(k.value + ':' for k in AccountKind)}") from None
