"""Builders and ledger checks shared by the contract, property and integration tests.

Importable from every test module because pytest puts ``tests/`` on ``sys.path``
for the root ``conftest.py`` (rootdir layout without ``__init__.py`` files).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path

from comptroller.domain.budgets import Budget, period_key
from comptroller.domain.ledger import AccountView, ReserveRequest, UsageRecord
from comptroller.domain.scopes import Attribution
from comptroller.domain.usage import Usage
from comptroller.ports import LedgerStore
from comptroller.storage.memory import MemoryStore
from comptroller.storage.sqlite import SQLiteStore
from postgres.pg_kit import postgres_store

__all__ = [
    "BACKENDS",
    "T0",
    "USAGE",
    "account_of",
    "assert_accounts_within_limits",
    "attribution",
    "reserve_request",
    "settled_by_account",
]

BACKENDS: dict[str, Callable[[Path], LedgerStore]] = {
    "memory": lambda directory: MemoryStore(),
    "sqlite": lambda directory: SQLiteStore(directory / "ledger.db"),
    "postgres": postgres_store,  # a fresh schema per store; skips when PostgreSQL is unreachable
}
"""Every ledger backend by name: a factory opening an empty store with ``directory`` for its files.

The contract tests, the stateful test and its differential twin all run once per
entry, so a new backend is tested by adding one line here.
"""

T0 = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)
"""A fixed start instant for tests in virtual time (a Friday, noon UTC)."""

USAGE = Usage(input_tokens=100, output_tokens=20)
"""Token counts for settles whose cost the test sets directly (the store does not price)."""


def attribution(agent: str = "a1", *, tenant: str = "t1", namespace: str = "ns",
                conversation: str | None = None, task: str | None = None, phase: str | None = None
                ) -> Attribution:
    """An attribution with short test defaults."""
    return Attribution(namespace=namespace, tenant=tenant, agent=agent, conversation=conversation, task=task,
                       phase=phase)


def reserve_request(key: str, ceiling_mc: int, *, who: Attribution | None = None, ttl_s: float = 60.0,
                    model: str = "test-model") -> ReserveRequest:
    """A reserve request for ``ceiling_mc`` under idempotency key ``key``."""
    return ReserveRequest(idempotency_key=key, attribution=who or attribution(), model=model,
                          ceiling_mc=ceiling_mc, input_tokens_max=1000, output_tokens_max=100, ttl_s=ttl_s)


def account_of(store: LedgerStore, budget: Budget, scope: str, period_key: str | None = None) -> AccountView:
    """The one account of ``budget`` on ``scope`` (in ``period_key`` when given); fails if absent."""
    found = [a for a in store.accounts() if a.budget.id == budget.id and a.scope == scope
             and (period_key is None or a.period_key == period_key)]
    assert len(found) == 1, f"expected one account of {budget.id} on {scope!r}, found {found}"
    return found[0]


def assert_accounts_within_limits(accounts: Iterable[AccountView]) -> None:
    """Every account keeps settled + reserved <= limit, and no negative money."""
    for a in accounts:
        assert a.reserved_mc >= 0, a
        assert a.settled_mc >= 0, a
        assert a.settled_mc + a.reserved_mc <= a.budget.limit_mc, a


def settled_by_account(records: Iterable[UsageRecord], accounts: Iterable[AccountView]
                       ) -> dict[tuple[str, str, str], int]:
    """Sum of the usage log's cost per account, matching records to accounts by scope and period.

    Valid while budgets do not change: a record touches an account when the account's
    scope is the record's scope at the budget's level and the record was reserved in
    the account's period.
    """
    totals: dict[tuple[str, str, str], int] = defaultdict(int)
    views = list(accounts)
    for record in records:
        scopes = dict(record.attribution.scopes())
        for a in views:
            if scopes.get(a.budget.level) == a.scope and period_key(
                    a.budget.period, a.budget.timezone, record.reserved_at) == a.period_key:
                totals[(a.budget.id, a.scope, a.period_key)] += record.cost_mc
    return totals
