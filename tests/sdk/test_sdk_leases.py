"""Leases of SDK calls in flight are renewed while the call runs, and no longer once it is settled."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import anthropic
from sdk_kit import MODEL, comptroller_with, sdk_policy
from sdk_stub import ApiStub

from comptroller.domain.ledger import Reservation, ReservationState
from comptroller.domain.scopes import Attribution
from comptroller.sdk.leases import RENEWALS_PER_LEASE, LeaseKeeper

CHAT = [{"role": "user", "content": "Tell a long story."}]


def lease(name: str, length_s: float) -> Reservation:
    """A reservation whose lease lasts ``length_s``."""
    start = datetime(2026, 12, 7, tzinfo=UTC)
    return Reservation(id=name, idempotency_key=name, attribution=Attribution(namespace="n", tenant="t", agent="a"),
                       model=MODEL, ceiling_mc=1, input_tokens_max=1, output_tokens_max=1, created_at=start,
                       expires_at=start + timedelta(seconds=length_s), state=ReservationState.PENDING)


class Ticks:
    """A monotonic clock the test moves, and a renew function that records its calls."""

    def __init__(self) -> None:
        self.now_s = 100.0
        self.renewed: list[str] = []
        self.answer: bool | Exception = True

    def monotonic(self) -> float:
        return self.now_s

    def renew(self, reservation: Reservation) -> bool:
        if isinstance(self.answer, Exception):
            raise self.answer
        self.renewed.append(reservation.id)
        return self.answer


def test_a_held_lease_is_renewed_each_third_of_its_length_until_dropped() -> None:
    """A 30 s lease is renewed when 10 s have passed since the last renewal, and never after drop()."""
    ticks = Ticks()
    keeper = LeaseKeeper(ticks.renew, monotonic=ticks.monotonic, background=False)
    keeper.hold(lease("r1", 30))
    third_s = 30 / RENEWALS_PER_LEASE
    assert keeper.tick() == third_s and ticks.renewed == []
    ticks.now_s += third_s
    assert keeper.tick() == third_s and ticks.renewed == ["r1"]
    keeper.drop(lease("r1", 30))
    ticks.now_s += 10 * third_s
    assert keeper.tick() is None and ticks.renewed == ["r1"] and keeper.held == 0


def test_a_failed_renewal_is_retried_and_a_gone_lease_is_dropped() -> None:
    """A ledger error keeps the lease for the next tick; a renewal answered False stops renewing it."""
    ticks = Ticks()
    keeper = LeaseKeeper(ticks.renew, monotonic=ticks.monotonic, background=False)
    keeper.hold(lease("r1", 3))
    ticks.now_s += 1
    ticks.answer = ConnectionError("ledger down")
    keeper.tick()
    assert keeper.held == 1
    ticks.answer = False
    assert keeper.tick() is None and keeper.held == 0 and ticks.renewed == ["r1"]


def test_a_stream_longer_than_its_lease_is_renewed_and_settles_normally(apis: ApiStub, tmp_path: Path) -> None:
    """With a 0.6 s lease, a stream lasting three leases is renewed in flight and settled at its real cost."""
    comptroller = comptroller_with(tmp_path, sdk_policy(ttl_s=0.6))
    apis.control.words, apis.control.chunk_delay_s = 12, 0.15
    client = comptroller.wrap(anthropic.Anthropic(base_url=apis.url, api_key="k", max_retries=0))
    with client.messages.stream(model=MODEL, max_tokens=64, messages=CHAT) as stream:
        text = "".join(stream.text_stream)
    assert len(text.split()) == 12
    assert comptroller.leases.renewals >= 1 and comptroller.leases.held == 0
    (record,) = comptroller.engine.store.usage_records()
    assert (record.usage.input_tokens, record.usage.output_tokens) == (apis.control.input_tokens, 12)
