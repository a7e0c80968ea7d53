"""Which transfers the usage log calls for, and the adjustments that bring the wallets to them (pure).

Each settled call (a :class:`~comptroller.domain.ledger.UsageRecord`) calls for:

* ``llm:<reservation id>``: its cost, from the agent's wallet to the provider's cost account;
* ``fee:<reservation id>`` (with a ``[fees]`` schedule): the service fee, from the customer
  tenant's wallet to the agent's (:func:`~comptroller.domain.wallets.fees.service_fee_mc`);
  none for a call released late (the provider billed nothing);
* ``task_fee:<agent wallet>:<task scope>``: the task fee, once per agent and task, at the
  agent's first call on the task (the task's first settled call stands for its completion:
  the ledger has no task-completed signal yet);
* ``platform:<fee id>`` (with ``platform_share``): the platform's take of each fee, from the
  agent to ``platform:revenue``;
* ``infra:<item>:<period>:<account>``: each ``[[infra]]`` item's share per period.

These are *targets*: the amount each id should carry now. :func:`adjustments` compares a
target with what is stored under its id and its adjustments (``<id>:adj1``, ``<id>:adj2``...)
and returns the one transfer that closes the gap (the same direction for more, the reverse
for less), so posting is idempotent (a second pass finds nothing to do) and follows a
corrected cost (an ``unknown_outcome`` charge corrected by a late settle; an infra period
that gained more use) without rewriting any transfer.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from comptroller.domain.ledger import UsageRecord
from comptroller.domain.scopes import Level
from comptroller.domain.wallets.accounts import (
    PLATFORM_REVENUE,
    agent_wallet,
    conversation_account,
    infra_account,
    provider_account,
    tenant_wallet,
)
from comptroller.domain.wallets.allocation import AllocationBasis, AllocationTarget, InfraItem, Use, allocate_item
from comptroller.domain.wallets.fees import FeeSchedule, platform_take_mc, service_fee_mc
from comptroller.domain.wallets.transfers import Transfer

__all__ = ["ADJ_MAX", "KIND_FEE", "KIND_INFRA", "KIND_LLM", "KIND_PLATFORM", "KIND_TASK_FEE", "adjustments", "targets"]

KIND_LLM = "llm_cost"
KIND_FEE = "service_fee"
KIND_TASK_FEE = "task_fee"
KIND_INFRA = "infra"
KIND_PLATFORM = "platform_fee"
ADJ_MAX = 1_000
"""Adjustments per id at most (a bound on the chain read; far beyond any real correction count)."""


def targets(records: Iterable[UsageRecord], *, fees: FeeSchedule | None = None,
            infra: Sequence[InfraItem] = ()) -> list[Transfer]:
    """The transfers the usage log calls for, with the amount each should carry (0: none).

    Args:
        records: the usage log.
        fees: the service-fee schedule, or None for no fees.
        infra: the shared-cost items.

    Returns:
        Target transfers, amounts >= 0 millicents, ids as in the module docstring.
    """
    records = list(records)
    out: list[Transfer] = []
    tasks: dict[str, Transfer] = {}
    for r in records:
        agent, provider = agent_wallet(r.attribution), provider_account(r.model)
        out.append(Transfer(f"llm:{r.reservation_id}", agent, provider, r.cost_mc, KIND_LLM, r.resolved_at,
                            r.reservation_id))
        if fees is None:
            continue
        fee = 0 if r.outcome == "released_late" else service_fee_mc(r.cost_mc, fees)
        out.append(Transfer(f"fee:{r.reservation_id}", tenant_wallet(r.attribution), agent, fee, KIND_FEE,
                            r.resolved_at, r.reservation_id))
        if fees.platform_share:
            out.append(_platform(out[-1], fees))
        task = dict(r.attribution.scopes()).get(Level.TASK)
        if fees.task_fee_mc and task is not None and f"{agent}:{task}" not in tasks:
            tasks[f"{agent}:{task}"] = Transfer(f"task_fee:{agent}:{task}", tenant_wallet(r.attribution), agent,
                                                fees.task_fee_mc, KIND_TASK_FEE, r.resolved_at, task)
    out += tasks.values()
    if fees is not None and fees.platform_share:
        out += [_platform(t, fees) for t in tasks.values()]
    for item in infra:
        out += _infra_targets(item, records)
    return out


def _platform(fee: Transfer, fees: FeeSchedule) -> Transfer:
    """The platform's take of a fee: from the agent paid to ``platform:revenue``."""
    return Transfer(f"platform:{fee.id}", fee.credit_account, PLATFORM_REVENUE, platform_take_mc(fee.amount_mc, fees),
                    KIND_PLATFORM, fee.ts, fee.id)


def _infra_targets(item: InfraItem, records: Sequence[UsageRecord]) -> list[Transfer]:
    uses = []
    for r in records:
        account = {AllocationTarget.AGENT: agent_wallet, AllocationTarget.TENANT: tenant_wallet,
                   AllocationTarget.CONVERSATION: conversation_account}[item.target](r.attribution)
        tokens = r.usage.input_tokens + r.usage.output_tokens
        if account is not None and (tokens or item.basis is AllocationBasis.CALLS):
            uses.append(Use(r.reserved_at, account, tokens))
    credit = infra_account(item.name)
    out = []
    for period, shares in allocate_item(item, uses).items():
        start = datetime.fromisoformat(period).replace(tzinfo=ZoneInfo(item.timezone)).astimezone(UTC)
        out += [Transfer(f"infra:{item.name}:{period}:{account}", account, credit, share, KIND_INFRA, start,
                         period) for account, share in shares.items()]
    return out


def adjustments(wanted: Iterable[Transfer], stored: Mapping[str, Transfer]) -> list[Transfer]:
    """The transfers that bring each target's id to its amount, given the stored transfers.

    Args:
        wanted: target transfers (amount >= 0: what the id should carry in total).
        stored: stored transfers by id (at least every target id and its ``:adjN`` ids).

    Returns:
        New transfers: the target itself when its id is new (and its amount > 0), else at most one
        ``<id>:adj<n+1>`` per target for the difference (reversed accounts for a decrease).

    Raises:
        ValueError: if an id has :data:`ADJ_MAX` adjustments already, or a stored id names other accounts.
    """
    out = []
    for t in wanted:
        base = stored.get(t.id)
        if base is None:
            if t.amount_mc > 0:
                out.append(t)
            continue
        if (base.debit_account, base.credit_account) != (t.debit_account, t.credit_account):
            raise ValueError(f"transfer {t.id!r} is stored between {base.debit_account} and {base.credit_account}, "
                             f"not {t.debit_account} and {t.credit_account}: the usage log and the wallets disagree")
        net, n = base.amount_mc, 1
        while (adj := stored.get(f"{t.id}:adj{n}")) is not None:
            net += adj.amount_mc if adj.debit_account == base.debit_account else -adj.amount_mc
            n += 1
            if n > ADJ_MAX:
                raise ValueError(f"transfer {t.id!r} has {ADJ_MAX} adjustments; look at what keeps changing it")
        gap = t.amount_mc - net
        if gap:
            debit, credit = (t.debit_account, t.credit_account) if gap > 0 else (t.credit_account, t.debit_account)
            out.append(Transfer(f"{t.id}:adj{n}", debit, credit, abs(gap), t.kind, t.ts, t.ref))
    return out
