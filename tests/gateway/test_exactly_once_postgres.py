"""Exactly-once money through the gateway while PostgreSQL fails mid-call (issue 12; DESIGN.md rule 12).

The gateway's ledger and key store reach PostgreSQL through a TCP proxy on loopback that
the test owns (:class:`test_resilience_postgres.Proxy`). With 32 calls upstream at the stub,
the test terminates every server backend of the gateway (by its ``application_name``) (``pg_terminate_backend``: the
pooled connections die mid-session), then stops the proxy (new connections are refused).
The calls end during the outage, so their settles go to the durable outbox; once the proxy
is back the outbox is delivered, and the usage rows are exactly the calls the stub served,
each once at its real cost. ``db check`` is clean and names no ``unknown_outcome``. The
shared server keeps running for everyone else throughout.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import openai
import pytest
from gateway_kit import INPUT_MC_PER_TOKEN, MODEL, OUTPUT_MC_PER_TOKEN, stub_policy, wait_for
from loopback import LoopbackServer
from stub_upstream import StubUpstream
from test_resilience_postgres import Proxy
from typer.testing import CliRunner

from comptroller.bootstrap import build_engine
from comptroller.cli.main import app as cli
from comptroller.domain.budgets import ANY_SCOPE, Budget
from comptroller.domain.scopes import Level
from comptroller.gateway.app import create_app
from comptroller.gateway.config import GatewayConfig, ProviderConfig
from comptroller.storage.keys import new_key
from comptroller.storage.outbox import Outbox
from comptroller.storage.postgres import PostgresKeyStore, PostgresStore
from postgres.pg_kit import PG_URL, admin, new_schema

pytestmark = pytest.mark.slow

CALLS = 32
LIMIT_MC = 10**8  # room for every ceiling: the check is exactly-once, not a refusal


@dataclass
class Proxied:
    """A gateway on PostgreSQL through a proxy, and what the test inspects."""

    proxy: Proxy
    url: str
    key: str
    store: PostgresStore
    direct_url: str
    schema: str
    outbox_path: Path

    def waiting(self) -> int:
        """Outcomes in the outbox the ledger has not taken yet."""
        outbox = Outbox(self.outbox_path)
        try:
            return outbox.count()
        finally:
            outbox.close()


@pytest.fixture
def proxied(stub: StubUpstream, tmp_path: Path) -> Iterator[Proxied]:
    """A gateway whose ledger and key store go through a proxy the test can stop and start."""
    stub.control.reset()
    host, port = PG_URL.split("@", 1)[1].split("/", 1)[0].split(":")
    proxy = Proxy((host, int(port)))
    proxy.start()
    schema = new_schema()
    url = PG_URL.replace(f"{host}:{port}", f"127.0.0.1:{proxy.port}") + f"?application_name={schema}"
    store = PostgresStore(url, schema=schema, min_size=1, max_size=8, timeout_s=1.0, connect_timeout_s=1,
                          durable=False)
    store.put_budget(Budget(Level.TENANT, ANY_SCOPE, LIMIT_MC))
    keys = PostgresKeyStore(url, schema=schema, timeout_s=1.0)
    record, key = new_key(tenant="acme")
    keys.add(record)
    policy = stub_policy(loops={"enabled": False}, breakers={"enabled": False})
    engine = build_engine(db_url=url, policy=policy, store=store)
    outbox_path = tmp_path / "outbox.db"
    config = GatewayConfig(providers={"stub": ProviderConfig(base_url=stub.base_url)}, models={MODEL: "stub"},
                           admin_key_env=None, ledger_timeout_s=2.0, outbox_path=str(outbox_path))
    app = create_app(engine=engine, keys=keys, config=config, namespace=policy.namespace)
    direct = f"{PG_URL}?options=-csearch_path%3D{schema}"
    try:
        with LoopbackServer(app, grace_s=5.0) as server:
            yield Proxied(proxy, server.url, key, store, direct, schema, outbox_path)
    finally:
        proxy.stop()
        store.close()
        keys.close()
        stub.control.reset()


def _terminate_backends(schema: str) -> int:
    """``pg_terminate_backend`` on every server backend of this test's gateway (its application_name); how many."""
    with admin() as conn:
        rows = conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
                            (schema,)).fetchall()
    return sum(1 for (done,) in rows if done)


def test_settles_survive_terminated_and_refused_postgres_connections_and_are_charged_once(
        proxied: Proxied, stub: StubUpstream) -> None:
    """32 calls end while PostgreSQL connections are terminated and refused; each is charged once after recovery."""
    client = openai.OpenAI(base_url=f"{proxied.url}/v1", api_key=proxied.key, max_retries=0, timeout=60)
    client.chat.completions.create(model=MODEL, max_tokens=16, messages=[{"role": "user", "content": "warm"}])
    before = {r.reservation_id for r in proxied.store.usage_records()}
    stub.control.requests.clear()
    stub.control.latency_s = 3.0  # every call is upstream when the ledger goes (checked below)
    with ThreadPoolExecutor(CALLS) as pool:
        calls = [pool.submit(client.chat.completions.create, model=MODEL, max_tokens=16,
                             messages=[{"role": "user", "content": f"weigh the ingots in vault {i}"}])
                 for i in range(CALLS)]
        wait_for(lambda: len(stub.control.requests) == CALLS, "every call to reach the stub", 30)
        terminated = _terminate_backends(proxied.schema)  # pooled connections die mid-session
        proxied.proxy.stop()  # and new ones are refused
        assert terminated > 0 and not any(c.done() for c in calls), "a call ended before the outage"
        answers = [c.result(timeout=60) for c in calls]
    wait_for(lambda: proxied.waiting() == CALLS, "every settle to be kept in the outbox", 60)
    proxied.proxy.start()
    wait_for(lambda: proxied.waiting() == 0, "the outbox to be delivered after the database came back", 60)
    records = [r for r in proxied.store.usage_records() if r.reservation_id not in before]
    assert len(answers) == CALLS == len(stub.control.requests)
    assert len(records) == CALLS == len({r.reservation_id for r in records})
    for record in records:
        assert record.outcome == "settled", record
        assert record.cost_mc == (record.usage.input_tokens * INPUT_MC_PER_TOKEN
                                  + record.usage.output_tokens * OUTPUT_MC_PER_TOKEN)
    for account in proxied.store.accounts():
        assert account.reserved_mc == 0
        assert account.settled_mc <= account.budget.limit_mc
    checked = CliRunner().invoke(cli, ["db", "check", "--db", proxied.direct_url])
    assert checked.exit_code == 0, checked.output
    assert "ledger consistent" in checked.output and "unknown_outcome:" not in checked.output
