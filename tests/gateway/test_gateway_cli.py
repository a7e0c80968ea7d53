"""`comptroller key create | list | revoke` on a ledger file."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from comptroller.cli.main import app
from comptroller.storage.keys import SQLiteKeyStore


def test_key_lifecycle_on_the_cli(tmp_path: Path) -> None:
    """A created key is printed once, listed by id without its secret, verifies, and stops after revoke."""
    db = f"sqlite:///{tmp_path / 'ledger.db'}"
    runner = CliRunner()
    created = runner.invoke(app, ["key", "create", "--tenant", "acme", "--agent", "writer", "--db", db])
    assert created.exit_code == 0, created.output
    plaintext = created.output.strip().splitlines()[-1]
    key_id = plaintext.split(".")[0].removeprefix("ck-")
    listed = runner.invoke(app, ["key", "list", "--db", db])
    assert key_id in listed.output
    assert plaintext.split(".")[1] not in listed.output
    store = SQLiteKeyStore(tmp_path / "ledger.db")
    assert store.verify(plaintext) is not None
    assert runner.invoke(app, ["key", "revoke", key_id, "--db", db]).exit_code == 0
    assert store.verify(plaintext) is None
    unknown = runner.invoke(app, ["key", "revoke", "000000000000", "--db", db])
    assert unknown.exit_code == 2
    assert "no key" in unknown.output
    store.close()


def test_serve_refuses_a_missing_provider_key(tmp_path: Path) -> None:
    """`serve` checks provider keys before starting any worker: an unset variable is one error, exit 2."""
    config = tmp_path / "gateway.toml"
    config.write_text('[gateway.providers.openai]\nbase_url = "https://api.openai.com/v1"\n'
                      'api_key_env = "COMPTROLLER_TEST_UNSET_KEY"\n', encoding="utf-8")
    result = CliRunner().invoke(app, ["serve", "--config", str(config), "--db", f"sqlite:///{tmp_path / 'l.db'}"])
    assert result.exit_code == 2
    assert "COMPTROLLER_TEST_UNSET_KEY" in result.output


def test_serve_refuses_a_malformed_approval_secret(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A typo in COMPTROLLER_APPROVAL_SECRET stops `serve` before any worker starts (exit 2, naming it)."""
    monkeypatch.setenv("COMPTROLLER_APPROVAL_SECRET", "whsec_not-base64!")
    result = CliRunner().invoke(app, ["serve", "--db", f"sqlite:///{tmp_path / 'l.db'}"])
    assert result.exit_code == 2, result.output
    assert "COMPTROLLER_APPROVAL_SECRET" in result.output
