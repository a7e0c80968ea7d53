"""A worker stopping with calls in flight (issue 12 item 3; DESIGN.md rule 12).

A call cut off while the upstream works on it may have been billed, so it is charged its
reserved bound, never released to zero (as ``WorkerLife.cut_off`` does at the grace
deadline). What is still tracked when the lifespan ends (``Gateway.resolve_all``) may still
be finishing in a thread: a sent hold is left to its owner or its lease (``unknown_outcome``
at its ceiling), and a hold never sent is released.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import httpx
from gateway_kit import MODEL, engine_namespace, stub_policy, wait_for
from loopback import LoopbackServer
from stub_upstream import StubUpstream

from comptroller.bootstrap import build_engine
from comptroller.domain.ledger import ReservationState
from comptroller.domain.scopes import Attribution
from comptroller.engine import CallRequest
from comptroller.gateway.app import create_app
from comptroller.gateway.config import GatewayConfig, ProviderConfig
from comptroller.gateway.runtime import Gateway
from comptroller.storage.keys import SQLiteKeyStore, new_key


def _pending(db: Path) -> list[str]:
    with sqlite3.connect(db) as conn:
        return [r[0] for r in conn.execute("SELECT id FROM reservations WHERE state = 'pending'")]


class _Running:
    """A gateway on its own SQLite ledger, served in a thread with a short uvicorn grace (it cancels requests)."""

    def __init__(self, stub: StubUpstream, tmp_path: Path) -> None:
        self.db = tmp_path / "ledger.db"
        policy = stub_policy()
        self.engine = build_engine(db_url=f"sqlite:///{self.db}", policy=policy)
        self.keys = SQLiteKeyStore(self.db)
        record, self.key = new_key(tenant="acme")
        self.keys.add(record)
        config = GatewayConfig(providers={"stub": ProviderConfig(base_url=stub.base_url)}, models={MODEL: "stub"},
                               admin_key_env=None)
        self.app = create_app(engine=self.engine, keys=self.keys, config=config, namespace=engine_namespace(policy))
        self.server = LoopbackServer(self.app, grace_s=0.2).__enter__()

    def stop(self) -> None:
        self.server.__exit__(None, None, None)
        self.keys.close()


def test_a_call_upstream_when_the_worker_stops_is_charged_its_bound(stub: StubUpstream, tmp_path: Path) -> None:
    """A unary call cancelled by shutdown while the upstream works on it is charged its reserved bound, not 0."""
    stub.control.reset()
    gw = _Running(stub, tmp_path)
    answers: list[object] = []

    def call() -> None:
        try:
            answers.append(httpx.post(f"{gw.server.url}/v1/chat/completions", timeout=15,
                                      headers={"authorization": f"Bearer {gw.key}"},
                                      json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
                                      ).status_code)
        except httpx.HTTPError as exc:
            answers.append(exc)

    caller = threading.Thread(target=call, daemon=True)
    try:
        stub.control.latency_s = 5.0
        caller.start()
        wait_for(lambda: len(stub.control.requests) == 1, "the call to reach the upstream")
        [sent_id] = _pending(gw.db)
    finally:
        gw.stop()
        stub.control.reset()
    caller.join(timeout=15)
    sent = gw.engine.store.reservation(sent_id)
    assert sent is not None and sent.sent
    [charged] = list(gw.engine.store.usage_records())
    assert charged.reservation_id == sent_id and charged.outcome == "settled"
    assert charged.cost_mc == charged.ceiling_mc == sent.ceiling_mc  # the whole bound: it may have been billed
    assert (charged.usage.input_tokens, charged.usage.output_tokens) == (sent.input_tokens_max, sent.output_tokens_max)
    assert _pending(gw.db) == [] and sum(a.reserved_mc for a in gw.engine.store.accounts()) == 0
    assert answers and answers[0] != 200


def test_resolve_all_leaves_sent_holds_to_their_lease_and_releases_holds_never_sent(
        stub: StubUpstream, tmp_path: Path) -> None:
    """At the end of the lifespan a tracked sent hold stays held, then expires as unknown_outcome at its
    ceiling; a tracked unsent hold is released."""
    stub.control.reset()
    gw = _Running(stub, tmp_path)
    try:
        gateway: Gateway = gw.app.state.gateway
        attribution = Attribution(namespace="test", tenant="acme")
        sent = gateway.admit(CallRequest(attribution, MODEL, 10, max_tokens=8)).reservation  # tracked, sent
        unsent = gw.engine.admit(CallRequest(attribution, MODEL, 20, max_tokens=8)).reservation
        assert sent is not None and sent.sent and unsent is not None and not unsent.sent
        gateway.inflight[unsent.id] = unsent  # a hold taken, not yet forwarded
    finally:
        gw.stop()
    released = gw.engine.store.reservation(unsent.id)
    assert released is not None and released.state is ReservationState.RELEASED
    assert _pending(gw.db) == [sent.id]  # never released to zero
    assert gw.engine.store.expire(sent.expires_at) == 1  # its lease runs out unresolved
    [charged] = list(gw.engine.store.usage_records())
    assert charged.reservation_id == sent.id and charged.outcome == "unknown_outcome"
    assert charged.cost_mc == sent.ceiling_mc
    assert _pending(gw.db) == [] and sum(a.reserved_mc for a in gw.engine.store.accounts()) == 0
