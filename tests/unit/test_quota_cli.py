"""`comptroller quota usage` shows each quota row's used, held and remaining, with the policy's limit."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from typer.testing import CliRunner

from comptroller.bootstrap import build_engine
from comptroller.cli.main import app
from comptroller.clock import VirtualClock
from comptroller.config import load_policy
from comptroller.domain.scopes import Attribution
from comptroller.domain.usage import Usage
from comptroller.engine import CallRequest

POLICY = """
namespace = "prod"
output_cap_tokens = 100
[[quotas]]
unit = "tokens"
level = "tenant"
limit = 5000
"""


def test_quota_usage_lists_used_held_and_remaining(tmp_path: Path) -> None:
    """One settled call (130 tokens) and one in flight (its 1,100-token ceiling held): both show, with the limit."""
    policy_path = tmp_path / "policy.toml"
    policy_path.write_text(POLICY, encoding="utf-8")
    db = f"sqlite:///{tmp_path / 'ledger.db'}"
    engine = build_engine(db_url=db, policy=load_policy(policy_path),
                          clock=VirtualClock(datetime(2025, 6, 3, tzinfo=UTC)), sinks=[])
    who = Attribution(namespace="prod", tenant="acme", agent="writer")
    first = engine.admit(CallRequest(who, "gpt-4o-mini", input_tokens_max=1000))
    assert first.reservation is not None
    engine.settle(first.reservation, Usage(input_tokens=100, output_tokens=30))
    assert engine.admit(CallRequest(who, "gpt-4o-mini", input_tokens_max=1000)).admitted
    engine.store.close()
    result = CliRunner().invoke(app, ["quota", "usage", "--policy", str(policy_path), "--db", db],
                                env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    (line,) = [x for x in result.output.splitlines() if "prod|acme" in x]
    cells = [c.strip() for c in line.strip("│ ").split("│")]
    assert cells == ["tokens", "tenant", "month", "2025-06-01", "prod|acme", "130", "1,100", "5,000", "3,770"]


def test_quota_and_rate_limit_set_and_delete_change_what_an_engine_admits(tmp_path: Path) -> None:
    """`quota set` makes a running engine refuse at once; `quota delete` lifts it; `rate-limit set` adds an RPM;
    deleting what was never set is an error naming it."""
    db = f"sqlite:///{tmp_path / 'ledger.db'}"
    engine = build_engine(db_url=db, policy=load_policy(None).model_copy(update={"output_cap_tokens": 100}),
                          clock=VirtualClock(datetime(2025, 6, 3, tzinfo=UTC)), sinks=[])
    who = Attribution(namespace="prod", tenant="acme", agent="writer")
    call = CallRequest(who, "gpt-4o-mini", input_tokens_max=10)
    assert engine.admit(call).admitted
    runner = CliRunner()
    quota = ["--unit", "messages", "--level", "agent", "--namespace", "prod", "--tenant", "acme", "--agent",
             "writer", "--period", "day", "--db", db]
    result = runner.invoke(app, ["quota", "set", *quota, "--limit", "1"])
    assert result.exit_code == 0, result.output
    assert "1 messages per day on agent 'prod|acme|writer'" in result.output
    assert engine.admit(call).admitted  # the new quota's first message
    assert engine.admit(call).code.value == "quota_exceeded"
    assert runner.invoke(app, ["quota", "delete", *quota]).exit_code == 0
    assert engine.admit(call).admitted
    result = runner.invoke(app, ["rate-limit", "set", "--level", "tenant", "--namespace", "prod", "--tenant", "acme",
                                 "--rpm", "1", "--db", db])
    assert result.exit_code == 0, result.output
    assert engine.admit(call).admitted and engine.admit(call).code.value == "rate_limited"
    missing = runner.invoke(app, ["quota", "delete", *quota])
    assert missing.exit_code == 2 and "no messages quota per day on agent 'prod|acme|writer'" in missing.output
