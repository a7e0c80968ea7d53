"""Token and message quotas through the engine, on every ledger backend: reserve, settle, release, refuse exactly."""

from __future__ import annotations

import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import pytest

from comptroller.clock import VirtualClock
from comptroller.domain.budgets import ANY_SCOPE, Period
from comptroller.domain.caps import OutputCaps
from comptroller.domain.codes import Code
from comptroller.domain.held_counts import HeldCount
from comptroller.domain.limits import Limits
from comptroller.domain.quotas import Quota, QuotaUnit, quota_key
from comptroller.domain.scopes import Level
from comptroller.domain.usage import Usage
from comptroller.engine import CallRequest, Engine
from comptroller.ports import LedgerStore
from comptroller.prices import PriceBook
from ledger_kit import attribution

START = datetime(2025, 6, 1, 9, tzinfo=UTC)
MODEL = "gpt-4o-mini"
IN, OUT = 300, 100
CALLERS, K = 64, 5
RACE_TIMEOUT_S = 60.0
WHO = attribution("writer", tenant="acme")
AGENT_SCOPE = dict(WHO.scopes())[Level.AGENT]


def _engine(store: LedgerStore, *quotas: Quota, clock: VirtualClock | None = None) -> Engine:
    return Engine(store=store, prices=PriceBook(), clock=clock or VirtualClock(START),
                  caps=OutputCaps(default_tokens=OUT), limits=Limits(quotas=quotas))


def _call(key: str, max_tokens: int = OUT) -> CallRequest:
    return CallRequest(WHO, MODEL, input_tokens_max=IN, max_tokens=max_tokens, idempotency_key=key, sends=True)


def _row(store: LedgerStore, quota: Quota, at: datetime = START) -> HeldCount:
    stored = store.state(quota_key(quota, AGENT_SCOPE, at))
    return HeldCount() if stored is None else HeldCount.from_record(stored.record, stored.version)


def _race(store: LedgerStore, engine: Engine, quota: Quota, usage: Usage) -> Counter[Code]:
    """CALLERS threads admit at once and settle what they got; a monitor checks settled + held <= limit."""
    barrier = threading.Barrier(CALLERS, timeout=RACE_TIMEOUT_S)
    done = threading.Event()
    violations: list[HeldCount] = []

    def watch() -> None:
        while not done.is_set():
            row = _row(store, quota)
            if row.settled + row.held > quota.limit:
                violations.append(row)

    def call(i: int) -> Code:
        barrier.wait()
        admission = engine.admit(_call(f"call-{i}"))
        if admission.reservation is not None:
            assert engine.settle(admission.reservation, usage).code is Code.SETTLED
        return admission.code

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        with ThreadPoolExecutor(max_workers=CALLERS) as pool:
            codes = Counter(pool.map(call, range(CALLERS), timeout=RACE_TIMEOUT_S))
    finally:
        done.set()
        watcher.join(timeout=RACE_TIMEOUT_S)
    assert violations == []
    return codes


@pytest.mark.timeout(180)
def test_a_token_quota_admits_exactly_k_of_64_concurrent_callers(store: LedgerStore) -> None:
    """A quota of K token ceilings admits exactly K of 64 racing calls; the row ends at the settled tokens."""
    quota = Quota(QuotaUnit.TOKENS, Level.AGENT, ANY_SCOPE, K * (IN + OUT), Period.MONTH)
    used = Usage(input_tokens=IN, output_tokens=OUT - 1)  # each frees 1 token: 64 in all, less than a ceiling
    codes = _race(store, _engine(store, quota), quota, used)
    assert codes == Counter({Code.OK: K, Code.QUOTA_EXCEEDED: CALLERS - K})
    row = _row(store, quota)
    assert (row.settled, row.held) == (K * (IN + OUT - 1), 0)


@pytest.mark.timeout(180)
def test_a_message_quota_admits_exactly_k_of_64_concurrent_callers(store: LedgerStore) -> None:
    """A quota of K messages a day admits exactly K of 64 racing calls, and counts K messages."""
    quota = Quota(QuotaUnit.MESSAGES, Level.AGENT, ANY_SCOPE, K, Period.DAY)
    codes = _race(store, _engine(store, quota), quota, Usage(input_tokens=IN, output_tokens=1))
    assert codes == Counter({Code.OK: K, Code.QUOTA_EXCEEDED: CALLERS - K})
    assert (_row(store, quota).settled, _row(store, quota).held) == (K, 0)


def test_the_refusal_names_unit_level_scope_limit_used_and_held(store: LedgerStore) -> None:
    """A call that does not fit is refused quota_exceeded with the numbers seen, and takes nothing."""
    quota = Quota(QuotaUnit.OUTPUT_TOKENS, Level.AGENT, ANY_SCOPE, 230, Period.DAY)
    engine = _engine(store, quota)
    held = engine.admit(_call("a"))
    assert held.code is Code.OK and held.reservation is not None
    settled = engine.admit(_call("b"))
    assert settled.reservation is not None
    engine.settle(settled.reservation, Usage(input_tokens=IN, output_tokens=40))
    refused = engine.admit(_call("c"))
    assert refused.code is Code.QUOTA_EXCEEDED and refused.verdict is not None
    verdict = refused.verdict
    assert (verdict.level, verdict.scope) == (Level.AGENT, AGENT_SCOPE)
    assert dict(verdict.evidence) == {"unit": "output_tokens", "period": "day", "limit": 230, "used": 40,
                                      "held": OUT, "requested": OUT, "remaining": 230 - 40 - OUT}
    assert "230 output tokens per day" in verdict.message
    assert verdict.retry_after_s == (datetime(2025, 6, 2, tzinfo=UTC) - START).total_seconds()
    assert (_row(store, quota).settled, _row(store, quota).held) == (40, OUT)
    smaller = engine.admit(_call("d", max_tokens=230 - 40 - OUT))
    assert smaller.code is Code.OK  # exactly the remaining room fits


def test_release_returns_the_hold_and_settle_counts_the_actual_tokens(store: LedgerStore) -> None:
    """A released call's ceiling returns in full; a settled one counts input + output as used."""
    quota = Quota(QuotaUnit.TOKENS, Level.TENANT, ANY_SCOPE, 10_000)
    engine = _engine(store, quota)
    first, second = engine.admit(_call("r")), engine.admit(_call("s"))
    assert first.reservation is not None and second.reservation is not None
    row_key = quota_key(quota, dict(WHO.scopes())[Level.TENANT], START)
    stored = store.state(row_key)
    assert stored is not None and HeldCount.from_record(stored.record, stored.version).held == 2 * (IN + OUT)
    engine.release(first.reservation)
    engine.settle(second.reservation, Usage(input_tokens=IN - 50, output_tokens=7))
    stored = store.state(row_key)
    assert stored is not None
    row = HeldCount.from_record(stored.record, stored.version)
    assert (row.settled, row.held) == (IN - 50 + 7, 0)


def test_an_expired_hold_counts_its_ceiling_until_a_late_settle_corrects_it(store: LedgerStore) -> None:
    """A lease that runs out is charged its ceiling in the quota (it may have been served); its settle corrects it."""
    clock = VirtualClock(START)
    quota = Quota(QuotaUnit.TOKENS, Level.AGENT, ANY_SCOPE, 2 * (IN + OUT))
    engine = _engine(store, quota, clock=clock)
    call = engine.admit(CallRequest(WHO, MODEL, input_tokens_max=IN, max_tokens=OUT, idempotency_key="x",
                                    ttl_s=30, sends=True))
    assert call.reservation is not None
    clock.advance(31)
    assert engine.admit(_call("y")).code is Code.OK  # the expired hold is charged, one ceiling of room is left
    assert (_row(store, quota).settled, _row(store, quota).held) == (IN + OUT, IN + OUT)
    assert engine.admit(_call("z")).code is Code.QUOTA_EXCEEDED
    engine.settle(call.reservation, Usage(input_tokens=10, output_tokens=5))
    assert _row(store, quota).settled == 15


def test_a_day_quota_admits_again_the_next_day(store: LedgerStore) -> None:
    """A message quota per day that is used up admits again after 00:00 UTC (a new row, a new period)."""
    clock = VirtualClock(START)
    quota = Quota(QuotaUnit.MESSAGES, Level.AGENT, ANY_SCOPE, 1, Period.DAY)
    engine = _engine(store, quota, clock=clock)
    first = engine.admit(_call("d1"))
    assert first.reservation is not None
    engine.settle(first.reservation, Usage(input_tokens=1, output_tokens=1))
    assert engine.admit(_call("d2")).code is Code.QUOTA_EXCEEDED
    clock.advance(15 * 3600)
    assert engine.admit(_call("d3")).code is Code.OK
