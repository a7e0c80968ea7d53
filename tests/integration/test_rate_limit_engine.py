"""RPM and TPM limits through the engine on every backend: TPM counts the ceiling at admit and the actual tokens
after settle; a refusal takes no slot; key limits need a key."""

from __future__ import annotations

import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime

import pytest

from comptroller.clock import VirtualClock
from comptroller.domain.caps import OutputCaps
from comptroller.domain.codes import Code
from comptroller.domain.limits import Limits
from comptroller.domain.rate_limits import ANY, LimitLevel, RateLimit, RateUnit
from comptroller.domain.scopes import Level
from comptroller.domain.usage import Usage
from comptroller.engine import CallRequest, Engine
from comptroller.ports import LedgerStore
from comptroller.prices import PriceBook
from ledger_kit import attribution

START = datetime(2025, 6, 1, 9, tzinfo=UTC)
MODEL = "gpt-4o-mini"
IN, OUT = 600, 400
CEILING_TOKENS = IN + OUT
WHO = attribution("writer", tenant="acme")


def _engine(store: LedgerStore, *limits: RateLimit, clock: VirtualClock) -> Engine:
    return Engine(store=store, prices=PriceBook(), clock=clock, caps=OutputCaps(default_tokens=OUT),
                  limits=Limits(rate_limits=limits))


def _call(key: str) -> CallRequest:
    return CallRequest(WHO, MODEL, input_tokens_max=IN, max_tokens=OUT, idempotency_key=key, sends=True)


def test_tpm_counts_the_ceiling_at_admit_and_the_actual_tokens_after_settle(store: LedgerStore) -> None:
    """A TPM of two ceilings admits two calls; settling one at a quarter of its ceiling frees the rest at once."""
    clock = VirtualClock(START)
    engine = _engine(store, RateLimit(RateUnit.TPM, LimitLevel.AGENT, ANY, 2 * CEILING_TOKENS), clock=clock)
    first, second = engine.admit(_call("a")), engine.admit(_call("b"))
    assert first.reservation is not None and second.code is Code.OK
    refused = engine.admit(_call("c"))
    assert refused.code is Code.RATE_LIMITED and refused.verdict is not None
    assert refused.verdict.level is Level.AGENT and refused.verdict.evidence["requested"] == CEILING_TOKENS
    assert refused.verdict.retry_after_s is not None and 0 < refused.verdict.retry_after_s <= 30
    engine.settle(first.reservation, Usage(input_tokens=IN // 4, output_tokens=OUT // 4))
    assert engine.admit(_call("c")).code is Code.RATE_LIMITED  # 750 tokens back, a ceiling is 1000
    clock.advance(60 * (CEILING_TOKENS // 4) / (2 * CEILING_TOKENS))  # the other quarter refills in time
    assert engine.admit(_call("c")).code is Code.OK


def test_a_release_hands_back_every_token_of_the_ceiling(store: LedgerStore) -> None:
    """A released call's whole ceiling returns to the TPM limit."""
    engine = _engine(store, RateLimit(RateUnit.TPM, LimitLevel.TENANT, ANY, CEILING_TOKENS), clock=VirtualClock(START))
    held = engine.admit(_call("a"))
    assert held.reservation is not None and engine.admit(_call("b")).code is Code.RATE_LIMITED
    engine.release(held.reservation)
    assert engine.admit(_call("b")).code is Code.OK


def test_rpm_refusals_take_no_slot_and_key_limits_need_a_key(store: LedgerStore) -> None:
    """RPM 2 per key: refused calls do not push the next slot back; a call without a key id is not key-limited."""
    clock = VirtualClock(START)
    engine = _engine(store, RateLimit(RateUnit.RPM, LimitLevel.KEY, ANY, 2), clock=clock)
    keyed = replace(WHO, key_id="key-1")
    codes = [engine.admit(replace(_call(f"k{i}"), attribution=keyed)).code for i in range(5)]
    assert codes == [Code.OK, Code.OK] + [Code.RATE_LIMITED] * 3
    clock.advance(30)  # one interval: exactly one slot, however many were refused
    codes = [engine.admit(replace(_call(f"l{i}"), attribution=keyed)).code for i in range(2)]
    assert codes == [Code.OK, Code.RATE_LIMITED]
    assert engine.admit(_call("no-key")).code is Code.OK


@pytest.mark.timeout(180)
def test_an_rpm_limit_admits_exactly_n_of_64_concurrent_callers(store: LedgerStore) -> None:
    """64 threads racing on one frozen instant: an RPM of 5 per tenant admits exactly 5, on every backend."""
    engine = _engine(store, RateLimit(RateUnit.RPM, LimitLevel.TENANT, ANY, 5), clock=VirtualClock(START))
    barrier = threading.Barrier(64, timeout=60)

    def call(i: int) -> Code:
        barrier.wait()
        return engine.admit(_call(f"race-{i}")).code

    with ThreadPoolExecutor(max_workers=64) as pool:
        codes = Counter(pool.map(call, range(64), timeout=120))
    assert codes == Counter({Code.OK: 5, Code.RATE_LIMITED: 59})
