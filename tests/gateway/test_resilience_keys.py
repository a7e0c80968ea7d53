"""Keys for deployments as code: `comptroller key create --secret-env VAR` and `comptroller key import` (stdin)."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest
from typer.testing import CliRunner

from comptroller.cli.main import app
from comptroller.storage.keys import SQLiteKeyStore, key_format_problem


def known_key() -> str:
    """A well-formed key as a deployment would generate it."""
    return f"ck-{secrets.token_hex(6)}.{secrets.token_urlsafe(32)}"


def test_create_from_an_environment_variable_provisions_that_key(tmp_path: Path) -> None:
    """The key in the variable verifies afterwards, for the tenant and agent given, and is never printed."""
    db = tmp_path / "ledger.db"
    key = known_key()
    result = CliRunner().invoke(app, ["key", "create", "--tenant", "acme", "--agent", "writer", "--secret-env",
                                      "DEPLOY_KEY", "--db", f"sqlite:///{db}"], env={"DEPLOY_KEY": key})
    assert result.exit_code == 0, result.output
    assert key.split(".")[1] not in result.output
    store = SQLiteKeyStore(db)
    try:
        record = store.verify(key)
        assert record is not None
        assert (record.id, record.tenant, record.agent) == (key[3:15], "acme", "writer")
    finally:
        store.close()


def test_import_from_stdin_is_repeatable_and_refuses_a_changed_scope(tmp_path: Path) -> None:
    """Importing the same key twice is a no-op; importing it for another tenant is refused, naming the key."""
    db = f"sqlite:///{tmp_path / 'ledger.db'}"
    key = known_key()
    runner = CliRunner()
    first = runner.invoke(app, ["key", "import", "--tenant", "acme", "--db", db], input=key + "\n")
    again = runner.invoke(app, ["key", "import", "--tenant", "acme", "--db", db], input=key + "\n")
    other = runner.invoke(app, ["key", "import", "--tenant", "globex", "--db", db], input=key + "\n")
    assert (first.exit_code, again.exit_code) == (0, 0), first.output + again.output
    assert "already provisioned" in again.output
    assert other.exit_code == 2
    assert key[3:15] in other.output and "'acme'" in other.output
    listed = runner.invoke(app, ["key", "list", "--db", db])
    assert listed.output.count(key[3:15]) == 1


@pytest.mark.parametrize(("key", "says"), [
    ("", "empty"),
    (" ck-0123456789ab." + "a" * 40, "whitespace"),
    ("sk-0123456789ab." + "a" * 40, "does not start with 'ck-'"),
    ("ck-0123456789ab" + "a" * 40, "no '.'"),
    ("ck-0123456789AB." + "a" * 40, "not 12 lowercase hex digits"),
    ("ck-0123456789ab." + "a" * 39 + "!", "characters outside"),
    ("ck-0123456789ab." + "a" * 31, "has 31 characters"),
    ("ck-0123456789ab." + "a" * 101, "has 101 characters"),
])
def test_a_malformed_key_is_refused_saying_what_is_wrong(tmp_path: Path, key: str, says: str) -> None:
    """Each malformed key exits 2 with a message naming its fault (and never echoes the secret)."""
    assert key_format_problem(key) is not None
    result = CliRunner().invoke(app, ["key", "import", "--tenant", "acme", "--db", f"sqlite:///{tmp_path / 'l.db'}"],
                                input=key)
    assert result.exit_code == 2
    assert says in " ".join(result.output.split())
    assert "a" * 31 not in result.output


def test_an_unset_variable_and_several_lines_are_refused(tmp_path: Path) -> None:
    """--secret-env naming an unset variable, or two keys on stdin, is an error and stores nothing."""
    db = f"sqlite:///{tmp_path / 'ledger.db'}"
    runner = CliRunner()
    unset = runner.invoke(app, ["key", "create", "--tenant", "acme", "--secret-env", "H6_UNSET_VAR", "--db", db],
                          env={"H6_UNSET_VAR": None})
    assert unset.exit_code == 2
    assert "H6_UNSET_VAR is not set" in unset.output
    two = runner.invoke(app, ["key", "import", "--tenant", "acme", "--db", db], input=f"{known_key()}\n{known_key()}\n")
    assert two.exit_code == 2
    assert "one key" in two.output
    assert "ck-" not in runner.invoke(app, ["key", "list", "--db", db]).output
