"""What runtime defenses are on, in one short block, and the tenants no budget bounds.

``comptroller serve`` and ``comptroller replay`` print :func:`defenses_summary` at start,
so a default that is off, or a layer switched off by a typo, is seen before traffic
flows (DESIGN.md rule 14). :func:`unbudgeted_tenants` names the tenants of a ledger's
API keys that no tenant budget bounds (only the defenses stand in front of them).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from rich.console import Console

from comptroller.domain.budgets import ANY_SCOPE, Budget
from comptroller.domain.defenses.chain import Defenses
from comptroller.domain.money import format_usd
from comptroller.domain.scopes import Attribution, Level
from comptroller.exact_input import available as exact_available
from comptroller.storage import store_from_url
from comptroller.storage.key_stores import keys_from_url

__all__ = ["defenses_summary", "print_defenses", "unbudgeted_tenants", "warn_unbudgeted_tenants"]


def defenses_summary(defenses: Defenses) -> list[str]:
    """One line per layer: ``on``/``off`` and its main numbers, in the order of checks."""
    lines = ["kill switch: manual on (`comptroller kill on`); automatic "
             + ("on" if defenses.kill_switches else "off ([kill_switch] window_spend_usd / budget_pct_max)")]
    lines.append("model pinning: " + ("on" if defenses.pinning is not None else "off ([pinning.agents.NAME])"))
    lines.append("run deadlines: on for calls naming a run opened with a deadline")
    retries = defenses.retries
    lines.append("off: retries ([retries])" if retries is None else
                 f"retries: on, {retries.retries_max_per_day} re-attempts per task per UTC day "
                 "(labelled, or the same request seen again)")
    loops = defenses.loops
    lines.append("loops: off ([loops] enabled = false)" if loops is None else
                 f"loops: on, lock after {loops.identical_max} identical / {loops.near_duplicates_max} "
                 f"near-identical requests (ids, numbers, times masked) or a {loops.alternation_turns_max}-turn "
                 f"ping-pong; cooldown {loops.cooldown_s_start:g} s doubling to {loops.cooldown_s_max:g} s")
    lines.append(_breakers_line(defenses))
    fan_out = defenses.fan_out
    lines.append("fan-out cap: off ([fan_out] task = 9)" if fan_out is None else
                 "fan-out cap: on, max in flight " + ", ".join(f"{level} {cap}" for level, cap
                                                              in fan_out.max_in_flight.items()))
    lines.append("pacing: " + ("on" if defenses.pacing is not None else "off ([pacing])"))
    lines.append(_ceilings_line(exact_available()))
    return lines


def _ceilings_line(exact: bool) -> str:
    """How input ceilings are counted: the byte bound, recounted exactly near an edge when bpe-openai is there."""
    if exact:
        return ("input ceilings: UTF-8 byte bound; OpenAI models' input recounted exactly near a budget's edge "
                "(bpe-openai)")
    return ("input ceilings: UTF-8 byte bound only (no exact recount near a budget's edge: "
            "pip install 'comptroller[exact]')")


def _breakers_line(defenses: Defenses) -> str:
    policy = defenses.breakers
    if policy is None or not policy.levels:
        return "spend-rate breakers: off ([breakers] enabled = false)"
    config = next(iter(policy.levels.values()))
    relative = ("relative off" if config.relative_k is None else
                f"or {config.relative_k}x own baseline and > {format_usd(config.relative_floor_mc)} per "
                f"{config.relative_window_s} s")
    levels = ", ".join(str(level) for level in policy.levels)
    return (f"spend-rate breakers: on ({levels}), open after {config.trip_windows} windows over "
            f"{format_usd(config.threshold_mc)} per {config.window_s} s {relative}")


def unbudgeted_tenants(tenants: Iterable[str], budgets: Sequence[Budget], *, namespace: str) -> list[str]:
    """The tenants (sorted, distinct) that no tenant-level budget bounds, neither their own nor ``*``.

    Args:
        tenants: tenant ids (e.g. of the ledger's active API keys).
        budgets: every budget of the ledger and the policy.
        namespace: the namespace calls are attributed to.
    """
    tenant_budgets = {b.scope for b in budgets if b.level is Level.TENANT}
    if ANY_SCOPE in tenant_budgets:
        return []
    missing = set()
    for tenant in set(tenants):
        scope = dict(Attribution(namespace=namespace, tenant=tenant).scopes())[Level.TENANT]
        if scope not in tenant_budgets:
            missing.add(tenant)
    return sorted(missing)


def print_defenses(out: Console, defenses: Defenses) -> None:
    """Print :func:`defenses_summary` as one short block."""
    out.print("defenses: " + "; ".join(defenses_summary(defenses)), markup=False, highlight=False)


def warn_unbudgeted_tenants(out: Console, db: str, *, namespace: str, budgets: Sequence[Budget] = ()) -> list[str]:
    """Warn, for ``comptroller serve``, about the tenants of the ledger's active keys without a tenant budget.

    Args:
        out: where to print the warning.
        db: the ledger (and key store) URL.
        namespace: the gateway's namespace.
        budgets: the policy's budgets (the ledger's are read too).

    Returns:
        The tenants warned about.
    """
    store, key_store = store_from_url(db), keys_from_url(db)
    try:
        listed = key_store.keys()
        tenants = [k.tenant for k in listed if k.active and not k.admin]
        missing = unbudgeted_tenants(tenants, [*store.budgets(), *budgets], namespace=namespace)
    finally:
        key_store.close()
        store.close()
    if missing:
        out.print(f"warning: tenant(s) {', '.join(missing)} of active keys have no tenant budget: only the "
                  "defenses bound their spend. Set one: comptroller budget set --level tenant --tenant NAME ...",
                  markup=False, highlight=False)
    return missing
