"""The composition root: the one place concrete adapters are wired into an :class:`Engine`."""

from __future__ import annotations

from collections.abc import Sequence

from comptroller.clock import SystemClock
from comptroller.config import Policy
from comptroller.engine import Engine
from comptroller.notify import sinks_from_config
from comptroller.ports import Clock, EventSink, LedgerStore
from comptroller.prices import PriceBook
from comptroller.storage import store_from_url
from comptroller.wallet_posting import wallet_hooks

__all__ = ["build_engine", "price_book"]


def price_book(policy: Policy) -> PriceBook:
    """genai-prices with the policy's overrides and aliases on top."""
    return PriceBook(overrides=policy.price_overrides(), aliases=policy.aliases)


def build_engine(*, db_url: str, policy: Policy, clock: Clock | None = None,
                 store: LedgerStore | None = None, sinks: Sequence[EventSink] | None = None,
                 prices: PriceBook | None = None) -> Engine:
    """An engine on the ledger at ``db_url`` with the policy's budgets installed.

    Args:
        db_url: ``memory://`` or ``sqlite:///path`` (see :func:`store_from_url`).
        policy: the validated policy; its budgets are created or replaced in the ledger.
        clock: the time source (default: the system clock).
        store: an already open store (then ``db_url`` is ignored).
        sinks: event subscribers (default: those of the policy's ``[notify]`` section).
        prices: the price book (default: :func:`price_book` of the policy; replay ``--prices-data``).

    Raises:
        StoreURLError: for an unknown URL scheme.
        ValueError: a webhook secret variable is unset (nothing started).
    """
    ledger = store or store_from_url(db_url)
    for budget in policy.budget_list():
        ledger.put_budget(budget)
    subscribers = sinks_from_config(policy.notify, clock=clock) if sinks is None else sinks
    return Engine(store=ledger, prices=prices or price_book(policy), clock=clock or SystemClock(), caps=policy.caps(),
                  ttl_s=policy.ttl_s, defenses=policy.defenses(), sinks=subscribers,
                  on_settled=wallet_hooks(db_url, policy.fees.schedule() if policy.fees else None),
                  limits=policy.limits())
