"""The verified-key cache: a bounded TTL, revocation honoured within it, store failures as 503, lookups off the loop."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

import anyio
import pytest

from comptroller.gateway.errors import GatewayError
from comptroller.gateway.identity import Identity
from comptroller.storage.keys import ApiKey, MemoryKeyStore, new_key

TTL_S = 10.0


class CountingStore(MemoryKeyStore):
    """A memory key store that counts lookups and can be made to fail."""

    def __init__(self) -> None:
        super().__init__()
        self.lookups = 0
        self.down = False

    def verify(self, plaintext: str) -> ApiKey | None:
        """Count the lookup; raise while down."""
        self.lookups += 1
        if self.down:
            raise OSError("key store unreachable")
        return super().verify(plaintext)


def bearer(key: str) -> dict[str, str]:
    """Request headers carrying ``key``."""
    return {"authorization": f"Bearer {key}"}


def setup() -> tuple[Identity, CountingStore, str, list[float]]:
    """An identity on a counting store with one key, and its virtual clock."""
    store = CountingStore()
    record, key = new_key(tenant="acme")
    store.add(record)
    now = [1000.0]
    return Identity(store, cache_ttl_s=TTL_S, timeout_s=1.0, clock=lambda: now[0]), store, key, now


def test_a_verified_key_is_served_from_memory_until_its_ttl_ends() -> None:
    """Within the TTL the store is read once; after it, once more."""
    identity, store, key, now = setup()
    for _ in range(5):
        assert identity.authenticate(bearer(key)).key.tenant == "acme"
    assert store.lookups == 1
    now[0] += TTL_S + 0.1
    identity.authenticate(bearer(key))
    assert store.lookups == 2


def test_a_key_revoked_elsewhere_stops_within_the_ttl_and_at_once_through_this_identity() -> None:
    """Revoked in the store by another process: refused once the entry expires; revoked here: refused at once."""
    identity, store, key, now = setup()
    identity.authenticate(bearer(key))
    store.revoke(key[3:15], datetime.now(UTC))  # another replica or the CLI
    identity.authenticate(bearer(key))  # still cached
    now[0] += TTL_S + 0.1
    with pytest.raises(GatewayError) as refused:
        identity.authenticate(bearer(key))
    assert refused.value.status == 401
    other, second = new_key(tenant="acme")
    store.add(other)
    identity.authenticate(bearer(second))
    identity.keys.revoke(other.id, datetime.now(UTC))  # the admin API's store
    with pytest.raises(GatewayError) as at_once:
        identity.authenticate(bearer(second))
    assert at_once.value.status == 401


def test_a_store_failure_is_503_ledger_unavailable_and_a_cached_key_still_works() -> None:
    """With the store down, an uncached key is 503 ledger_unavailable (not 401); a cached one is served."""
    identity, store, key, _ = setup()
    identity.authenticate(bearer(key))
    _, uncached = new_key(tenant="acme")
    store.down = True
    with pytest.raises(GatewayError) as failed:
        identity.authenticate(bearer(uncached))
    assert (failed.value.status, failed.value.code) == (503, "ledger_unavailable")
    assert identity.authenticate(bearer(key)).key.tenant == "acme"


def test_prefetch_fills_the_cache_off_the_loop_and_bounds_a_stuck_store() -> None:
    """prefetch looks a key up in a thread; a store slower than the timeout makes the request a 503."""
    identity, store, key, _ = setup()
    anyio.run(identity.prefetch, bearer(key))
    assert store.lookups == 1
    identity.authenticate(bearer(key))
    assert store.lookups == 1  # served from what prefetch found

    gate = threading.Event()

    class StuckStore(MemoryKeyStore):
        def verify(self, plaintext: str) -> ApiKey | None:
            gate.wait(10)
            return super().verify(plaintext)

    stuck_store = StuckStore()
    record, stuck_key = new_key(tenant="acme")
    stuck_store.add(record)
    stuck = Identity(stuck_store, timeout_s=0.2)
    anyio.run(stuck.prefetch, bearer(stuck_key))
    with pytest.raises(GatewayError) as slow:
        stuck.authenticate(bearer(stuck_key))
    assert (slow.value.status, slow.value.code) == (503, "ledger_unavailable")
    gate.set()


def test_a_store_failure_is_not_reused_by_the_next_requests_prefetch() -> None:
    """A lookup that failed answers its own request 503; the next request's prefetch asks the store again
    and is served as soon as the store answers (one blip is not a 503 for every request with that key)."""
    identity, store, key, _ = setup()
    store.down = True
    anyio.run(identity.prefetch, bearer(key))
    with pytest.raises(GatewayError) as failed:
        identity.authenticate(bearer(key))
    assert failed.value.status == 503
    store.down = False
    anyio.run(identity.prefetch, bearer(key))
    assert identity.authenticate(bearer(key)).key.tenant == "acme"
    assert store.lookups == 2
