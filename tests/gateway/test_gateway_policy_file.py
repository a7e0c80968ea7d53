"""One policy file with ``[gateway]``, ``[cascades]`` and ``[groups]``: checked at start-up, served by the
worker factory (``app_from_env``) over real HTTP."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from loopback import LoopbackServer
from stub_upstream import StubUpstream
from typer.testing import CliRunner

from comptroller.cli.main import app
from comptroller.gateway.app import app_from_env
from comptroller.storage.keys import SQLiteKeyStore, new_key

POLICY = """
namespace = "filetest"
output_cap_tokens = 32

[prices.cheap-model]
input_mtok = "100"
output_mtok = "200"

[prices.strong-model]
input_mtok = "1000"
output_mtok = "2000"

[[cascades.qa.tiers]]
name = "cheap"
models = ["cheap-model"]
gates = [{ kind = "json_schema" }]

[[cascades.qa.tiers]]
name = "strong"
models = ["strong-model"]

[groups.desk]
k = 1
[[groups.desk.members]]
agent = "ana"
role = "writer"
description = "invoices billing refunds"
tenant = "acme"
[[groups.desk.members]]
agent = "jo"
role = "judge"
description = "final call"
decides = true
tenant = "acme"

[gateway]
admin_key_env = "COMPTROLLER_TEST_NO_ADMIN_KEY"
[gateway.providers.stub]
base_url = "BASE_URL"
[gateway.models]
"cheap-model" = "stub"
"""


def write(tmp_path: Path, text: str) -> Path:
    """The policy file."""
    path = tmp_path / "gateway.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_policy_file_cascades_and_groups_are_served(tmp_path: Path, stub: StubUpstream,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker factory builds the file's cascade and group once; both answer over HTTP."""
    stub.control.reset()
    stub.control.replies.update({"cheap-model": "not json", "strong-model": '{"ok": true}'})
    text = POLICY.replace("BASE_URL", stub.base_url) + '"strong-model" = "stub"\n'
    db = tmp_path / "ledger.db"
    monkeypatch.setenv("COMPTROLLER_CONFIG", str(write(tmp_path, text)))
    monkeypatch.setenv("COMPTROLLER_DB", f"sqlite:///{db}")
    keys = SQLiteKeyStore(db)
    record, key = new_key(tenant="acme", agent="ana")
    keys.add(record)
    headers = {"authorization": f"Bearer {key}"}
    with LoopbackServer(app_from_env()) as server, httpx.Client(base_url=server.url, headers=headers) as client:
        answer = client.post("/v1/chat/completions", json={"model": "cascade/qa",
                                                           "messages": [{"role": "user", "content": "hi"}]})
        assert answer.status_code == 200
        assert answer.headers["x-comptroller-tier"] == "strong"
        assert answer.json()["choices"][0]["message"]["content"] == '{"ok": true}'
        decision = client.post("/v1/groups/desk/dispatch", json={"id": "1", "author": "customer",
                                                                 "text": "my refunds are missing"}).json()
        assert [(r["agent"], r["reason"]) for r in decision["responders"]] == [("ana", "ranked")]
        models = {m["id"] for m in client.get("/v1/models").json()["data"]}
        assert models == {"cheap-model", "strong-model", "cascade/qa"}
    keys.close()


def test_tier_model_without_a_provider_fails_serve_before_any_worker(tmp_path: Path, stub: StubUpstream) -> None:
    """`serve` loads the file in the parent: a tier model no provider serves is one error line, exit 2."""
    config = write(tmp_path, POLICY.replace("BASE_URL", stub.base_url))
    result = CliRunner().invoke(app, ["serve", "--config", str(config), "--db", f"sqlite:///{tmp_path / 'l.db'}"])
    assert result.exit_code == 2
    assert "tier 'strong': no provider serves model 'strong-model'" in result.output


def test_bad_cascade_or_group_in_the_file_fails_serve(tmp_path: Path, stub: StubUpstream) -> None:
    """A tier model without a price, or a group without members, stops `serve` naming the section."""
    base = POLICY.replace("BASE_URL", stub.base_url) + '"strong-model" = "stub"\n"unpriced-model" = "stub"\n'
    unpriced = base.replace('models = ["strong-model"]', 'models = ["unpriced-model"]')
    result = CliRunner().invoke(app, ["serve", "--config", str(write(tmp_path, unpriced)),
                                      "--db", f"sqlite:///{tmp_path / 'l.db'}"])
    assert result.exit_code == 2
    assert "unpriced-model" in result.output and "no price" in result.output
    empty = base.replace('[groups.desk]\nk = 1\n', '[groups.empty]\nk = 1\nmembers = []\n[groups.desk]\nk = 1\n')
    result = CliRunner().invoke(app, ["serve", "--config", str(write(tmp_path, empty)),
                                      "--db", f"sqlite:///{tmp_path / 'l.db'}"])
    assert result.exit_code == 2
    assert "empty" in result.output and "members" in result.output
