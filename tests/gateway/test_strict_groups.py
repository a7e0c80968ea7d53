"""Strict groups through the gateway: `comptroller serve --workers 2` as a real process, and two in-process workers.

Issue 13's must-show: a strict group through the gateway with 2 workers refuses a member who
was not dispatched (``not_dispatched``) and serves the dispatched ones; a dispatch on one worker
is enforced on the other; a group created through the admin API survives a restart.
"""

from __future__ import annotations

from pathlib import Path

import httpx
from gateway_kit import MODEL, OUTPUT_CAP
from loopback import LoopbackServer
from stub_upstream import StubUpstream

from comptroller.bootstrap import build_engine
from comptroller.gateway.app import create_app
from comptroller.gateway.config import load_gateway_config
from comptroller.storage.keys import SQLiteKeyStore, new_key
from serve_kit import serve_process

CONVERSATION = "review-1"
GROUP = f"""
[groups.review]
conversation = "{CONVERSATION}"
mode = "strict"
k = 1
wrap_up = false
escalate_loops = false
[[groups.review.members]]
agent = "alice"
role = "writer"
description = "python http api databases index queries"
tenant = "acme"
[[groups.review.members]]
agent = "bob"
role = "writer"
description = "css frontend design colours"
tenant = "acme"
"""
TABLE = {"conversation": CONVERSATION, "mode": "strict", "k": 1, "wrap_up": False, "escalate_loops": False,
         "members": [{"agent": "alice", "role": "writer", "description": "python http api", "tenant": "acme"},
                     {"agent": "bob", "role": "writer", "description": "css frontend design", "tenant": "acme"}]}


def _config(tmp_path: Path, stub: StubUpstream, groups: str) -> Path:
    config = tmp_path / "gateway.toml"
    config.write_text(f"""
namespace = "test"
output_cap_tokens = {OUTPUT_CAP}
[prices."{MODEL}"]
input_mtok = "1000"
output_mtok = "2000"
[gateway.providers.stub]
base_url = "{stub.base_url}"
[gateway.models]
"{MODEL}" = "stub"
{groups}""", encoding="utf-8")
    return config


def _keys(db: Path) -> dict[str, str]:
    """Keys of alice, bob (tenant acme) and an admin, added to the ledger's key store."""
    keys = SQLiteKeyStore(db)
    out = {}
    for name, record_and_key in {"alice": new_key(tenant="acme", agent="alice"),
                                 "bob": new_key(tenant="acme", agent="bob"),
                                 "carol": new_key(tenant="acme"),
                                 "admin": new_key(tenant="ops", admin=True)}.items():
        keys.add(record_and_key[0])
        out[name] = record_and_key[1]
    keys.close()
    return out


TOPICS = ("the index on orders", "schema migrations for billing", "the cache eviction policy",
          "error handling in the importer", "structured logging of retries", "TLS settings of the proxy")


def _call(url: str, key: str, message_id: str | None = None, topic: str = TOPICS[0]) -> httpx.Response:
    """One chat call in the group's conversation, on a fresh connection (so either worker may take it)."""
    headers = {"authorization": f"Bearer {key}", "x-comptroller-conversation": CONVERSATION}
    if message_id is not None:
        headers["x-comptroller-message"] = message_id
    return httpx.post(f"{url}/v1/chat/completions", headers=headers, timeout=30,
                      json={"model": MODEL, "messages": [{"role": "user", "content": f"Please review {topic}."}]})


def _dispatch(url: str, key: str, message_id: str, text: str) -> httpx.Response:
    return httpx.post(f"{url}/v1/groups/review/dispatch", headers={"authorization": f"Bearer {key}"}, timeout=30,
                      json={"id": message_id, "author": "carol", "text": text})


def test_a_strict_group_on_two_serve_workers_refuses_the_undispatched(stub: StubUpstream, tmp_path: Path) -> None:
    """Through `serve --workers 2`: before a dispatch both members are refused; after @alice, every call of
    alice (six topics) is served and every call of bob is refused with not_dispatched, whichever worker takes it."""
    db = tmp_path / "ledger.db"
    config = _config(tmp_path, stub, GROUP)
    keys = _keys(db)
    with serve_process(config, f"sqlite:///{db}", workers=2) as (_, url):
        early = _call(url, keys["alice"])
        assert early.status_code == 429 and early.json()["error"]["code"] == "not_dispatched"
        decision = _dispatch(url, keys["carol"], "m1", "@alice the index queries are slow")
        assert [r["agent"] for r in decision.json()["responders"]] == ["alice"]
        alice = [_call(url, keys["alice"], topic=topic) for topic in TOPICS]
        bob = [_call(url, keys["bob"], topic=topic) for topic in TOPICS]
    assert [r.status_code for r in alice] == [200] * 6
    assert [r.status_code for r in bob] == [429] * 6
    assert {r.json()["error"]["code"] for r in bob} == {"not_dispatched"}
    assert all(r.headers.get("x-should-retry") == "false" for r in bob)


def test_an_admin_group_survives_a_restart_of_the_gateway(stub: StubUpstream, tmp_path: Path) -> None:
    """A strict group PUT through the admin API, and its dispatch, are still there after serve restarts."""
    db = tmp_path / "ledger.db"
    config = _config(tmp_path, stub, "")
    keys = _keys(db)
    admin = {"authorization": f"Bearer {keys['admin']}"}
    with serve_process(config, f"sqlite:///{db}") as (_, url):
        assert httpx.put(f"{url}/admin/groups/review", json=TABLE, headers=admin, timeout=30).status_code == 200
        assert _dispatch(url, keys["carol"], "m1", "@alice the http api is down").status_code == 200
    with serve_process(config, f"sqlite:///{db}") as (_, url):
        group = httpx.get(f"{url}/admin/groups/review", headers=admin, timeout=30)
        assert group.status_code == 200 and group.json()["mode"] == "strict"
        assert _call(url, keys["alice"]).status_code == 200
        refused = _call(url, keys["bob"])
        assert refused.status_code == 429 and refused.json()["error"]["code"] == "not_dispatched"
        assert httpx.delete(f"{url}/admin/groups/review", headers=admin, timeout=30).status_code == 204
    with serve_process(config, f"sqlite:///{db}") as (_, url):
        assert httpx.get(f"{url}/admin/groups/review", headers=admin, timeout=30).status_code == 404
        assert _call(url, keys["bob"]).status_code == 200  # not a group any more: an ordinary conversation


def test_a_dispatch_on_one_worker_is_enforced_on_the_other(stub: StubUpstream, tmp_path: Path) -> None:
    """Two gateway workers on one ledger: a group PUT and a message dispatched on worker 1 decide on worker 2
    (bob, dispatched for m1, is served naming m1 and refused for m2, which went to alice)."""
    db = tmp_path / "ledger.db"
    config = _config(tmp_path, stub, "")
    keys = _keys(db)
    policy, gateway = load_gateway_config(config)
    apps = [create_app(engine=build_engine(db_url=f"sqlite:///{db}", policy=policy, sinks=[]),
                       keys=SQLiteKeyStore(db), config=gateway.model_copy(update={"admin_key_env": None}),
                       namespace="test") for _ in range(2)]
    with LoopbackServer(apps[0]) as one, LoopbackServer(apps[1]) as two:
        admin = {"authorization": f"Bearer {keys['admin']}"}
        assert httpx.put(f"{one.url}/admin/groups/review", json=TABLE, headers=admin, timeout=30).status_code == 200
        assert _dispatch(two.url, keys["carol"], "m1", "@bob the css design").status_code == 200
        assert _dispatch(one.url, keys["carol"], "m2", "@alice the http api").status_code == 200
        assert _call(two.url, keys["bob"], "m1").status_code == 200
        refused = _call(two.url, keys["bob"])
        assert refused.status_code == 429 and "'m2'" in refused.json()["error"]["message"]
        assert _call(one.url, keys["alice"]).status_code == 200

