"""Quotas and rate limits changed at run time (the namespace's limit book) apply from the next admission of
every engine on the ledger, exactly, on every backend."""

from __future__ import annotations

from datetime import UTC, datetime

from comptroller.clock import VirtualClock
from comptroller.domain.budgets import ANY_SCOPE, Period
from comptroller.domain.caps import OutputCaps
from comptroller.domain.codes import Code
from comptroller.domain.limit_book import LimitBook, book_key
from comptroller.domain.limits import Limits
from comptroller.domain.quotas import Quota, QuotaUnit
from comptroller.domain.rate_limits import ANY, LimitLevel, RateLimit, RateUnit
from comptroller.domain.scopes import Level
from comptroller.domain.state import StoredState
from comptroller.engine import CallRequest, Engine
from comptroller.ports import LedgerStore
from comptroller.prices import PriceBook
from ledger_kit import attribution

START = datetime(2025, 6, 1, 9, tzinfo=UTC)
WHO = attribution("writer", tenant="acme")


def _engine(store: LedgerStore, limits: Limits | None = None) -> Engine:
    return Engine(store=store, prices=PriceBook(), clock=VirtualClock(START), caps=OutputCaps(default_tokens=100),
                  limits=limits)


def _call(key: str) -> CallRequest:
    return CallRequest(WHO, "gpt-4o-mini", input_tokens_max=100, idempotency_key=key)


def _put(store: LedgerStore, book: LimitBook, before: int) -> None:
    assert store.put_state(StoredState(book_key(WHO.namespace), book.version, book.to_record()),
                           expected_version=before)


def test_a_quota_set_while_engines_run_applies_to_their_next_admission(store: LedgerStore) -> None:
    """Two engines with warm copies: a 2-message quota set in the ledger admits exactly 2 more calls across them."""
    one, two = _engine(store), _engine(store)
    assert one.admit(_call("warm-1")).code is Code.OK and two.admit(_call("warm-2")).code is Code.OK
    book = LimitBook().with_quota(Quota(QuotaUnit.MESSAGES, Level.AGENT, ANY_SCOPE, 2, Period.DAY))
    _put(store, book, 0)
    codes = [engine.admit(_call(f"c{i}")).code for i, engine in enumerate((one, two, one, two))]
    assert codes == [Code.OK, Code.OK, Code.QUOTA_EXCEEDED, Code.QUOTA_EXCEEDED]


def test_a_book_entry_replaces_the_policy_entry_and_its_deletion_restores_it(store: LedgerStore) -> None:
    """A policy RPM of 1 per agent is raised to 3 by the book; deleting the book's entry brings 1 back."""
    policy_rpm = RateLimit(RateUnit.RPM, LimitLevel.AGENT, ANY, 1)
    engine = _engine(store, Limits(rate_limits=(policy_rpm,)))
    book = LimitBook().with_rate_limit(RateLimit(RateUnit.RPM, LimitLevel.AGENT, ANY, 3))
    _put(store, book, 0)
    assert [engine.admit(_call(f"a{i}")).code for i in range(4)] == [Code.OK] * 3 + [Code.RATE_LIMITED]
    emptied = book.without_rate_limit(policy_rpm)
    assert emptied is not None
    _put(store, emptied, book.version)
    refused = engine.admit(_call("b"))
    assert refused.code is Code.RATE_LIMITED and refused.verdict is not None
    assert refused.verdict.evidence["limit_per_minute"] == 1
