"""The CLI over a ledger file: list held actions, approve and reject them, list and show tasks."""

from __future__ import annotations

from pathlib import Path

from actions_kit import StubPlatform
from typer.testing import CliRunner

from comptroller.actions_config import parse_actions
from comptroller.cli.main import app
from comptroller.clock import SystemClock
from comptroller.domain.actions import Action, ActionStatus
from comptroller.engine.actions import ActionService
from comptroller.engine.tasks import TaskService
from comptroller.storage import store_from_url


def test_action_and_task_commands(tmp_path: Path) -> None:
    """Held actions are listed, approved and rejected by id; a task shows its actions; unknown ids exit 2."""
    db = f"sqlite:///{tmp_path / 'ledger.db'}"
    policy = tmp_path / "policy.toml"
    policy.write_text("[actions.tumblr]\napproval = true\ntrust_outcome = true\n", encoding="utf-8")
    store = store_from_url(db)
    guard = ActionService(store, SystemClock(), parse_actions({"tumblr": {"approval": True}}))
    for i in (1, 2):
        guard.check(Action(f"p{i}", "acme", "writer", "tumblr", "post", f"draft number {i} on its own topic",
                           task="t1"))
    TaskService(store, SystemClock(), guard).create("acme", "t1", "the digest", by="lead")
    store.close()
    runner = CliRunner()
    base = ["--db", db, "--config", str(policy)]
    listed = runner.invoke(app, ["action", "list", *base, "--status", "pending_approval"])
    assert listed.exit_code == 0 and "p1" in listed.output and "p2" in listed.output
    assert runner.invoke(app, ["action", "approve", "p1", "--tenant", "acme", "--by", "ops", *base]).exit_code == 0
    assert runner.invoke(app, ["action", "reject", "p2", "--tenant", "acme", "--by", "ops", *base]).exit_code == 0
    again = runner.invoke(app, ["action", "approve", "p2", "--tenant", "acme", "--by", "ops", *base])
    assert again.exit_code == 2 and "rejected" in again.output
    check = ActionService(store_from_url(db), SystemClock(), parse_actions({"tumblr": {}}))
    assert [r.status for r in check.list("acme")] == [ActionStatus.APPROVED, ActionStatus.REJECTED]
    shown = runner.invoke(app, ["task", "show", "t1", "--tenant", "acme", *base])
    assert shown.exit_code == 0 and '"p1"' in shown.output and '"backlog"' in shown.output
    assert '"budgets": []' in shown.output
    assert "t1" in runner.invoke(app, ["task", "list", *base]).output
    assert runner.invoke(app, ["task", "show", "nope", "--tenant", "acme", *base]).exit_code == 2


def test_simulate_publisher_prints_counts_and_reasons() -> None:
    """The simulation's table names both platforms and the refusal reasons."""
    result = CliRunner().invoke(app, ["simulate", "publisher", "--days", "2"])
    assert result.exit_code == 0
    assert "writeas" in result.output and "tumblr" in result.output and "near_duplicate" in result.output


def test_action_verify_and_reverify(tmp_path: Path) -> None:
    """`action reverify` checks what is due (once: the next check waits its backoff); `action verify` checks one
    action now, and it is done once the platform shows it."""
    db = f"sqlite:///{tmp_path / 'ledger.db'}"
    policy = tmp_path / "policy.toml"
    policy.write_text('[actions.tumblr]\nverify_url = "{url}"\n', encoding="utf-8")
    text = "Weekly digest: budgets per tenant and circuit breakers. Read it."
    with StubPlatform(publishes=False) as liar:
        store = store_from_url(db)
        guard = ActionService(store, SystemClock(), parse_actions({"tumblr": {"verify_url": "{url}"}}))
        guard.check(Action("p1", "acme", "writer", "tumblr", "post", text))
        guard.record_outcome("acme", "p1", published=True, url=liar.url)
        store.close()
        runner = CliRunner()
        base = ["--db", db, "--config", str(policy)]
        first = runner.invoke(app, ["action", "reverify", *base])
        assert first.exit_code == 0 and "1 due action(s) checked" in first.output and "unverified" in first.output
        assert "0 due action(s) checked" in runner.invoke(app, ["action", "reverify", *base]).output
        liar.publishes = True
        liar.publish(text)
        verified = runner.invoke(app, ["action", "verify", "p1", "--tenant", "acme", *base])
        assert verified.exit_code == 0 and "done after 2 verification(s)" in verified.output
        assert liar.gets == 2
