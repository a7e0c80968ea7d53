"""The README's budget commands, run as written against a replayed ledger, refuse the traffic they are meant to.

The ``comptroller budget set`` and ``comptroller replay`` lines of the README's "The ledger" block
are read from README.md and run in order (only the ``--db`` URL points at the test's directory),
so a README example on a scope its own traffic does not use (DESIGN.md rule 14) fails here.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from typer.testing import CliRunner

from comptroller.cli.main import app
from comptroller.domain.scopes import Level
from comptroller.storage import store_from_url

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()


def _ledger_block() -> list[list[str]]:
    """The ``budget set`` and ``replay`` commands of the README's "The ledger" section, as argv lists."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("### The ledger", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block is not None, "README's 'The ledger' section has no bash block"
    commands = []
    for line in block.group(1).splitlines():
        argv = shlex.split(line, comments=True)
        if argv[:3] == ["comptroller", "budget", "set"] or argv[:2] == ["comptroller", "replay"]:
            commands.append(argv[1:])
    return commands


def _with_db(argv: list[str], db: str) -> list[str]:
    out = list(argv)
    out[out.index("--db") + 1] = db
    return out


@pytest.fixture(scope="module")
def ledger(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A ledger after running the README's budget and replay commands, as written, in the repository root."""
    db = f"sqlite:///{tmp_path_factory.mktemp('readme')}/ledger.db"
    commands = _ledger_block()
    assert [c[0] for c in commands][:2] == ["budget", "replay"], commands
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(ROOT)  # the README's paths are relative to the repository
        for argv in commands:
            result = runner.invoke(app, _with_db(argv, db), env={"COLUMNS": "200"})
            assert result.exit_code == 0, f"{' '.join(argv)}: {result.output}"
    return db


def test_the_readme_agent_budget_matches_and_refuses_its_traffic(ledger: str) -> None:
    """The README's agent budget names the scope replayed Programmer calls have, refuses some of them, and
    no account of it ends above its limit."""
    store = store_from_url(ledger)
    try:
        agent_budgets = [b for b in store.budgets() if b.level is Level.AGENT]
        accounts = [a for a in store.accounts() if a.budget.level is Level.AGENT]
        refusals = [e for e in store.events() if e.level == str(Level.AGENT) and e.code == "budget_exceeded"]
        programmer_calls = [r for r in store.usage_records() if r.attribution.agent == "Programmer"]
    finally:
        store.close()
    assert len(agent_budgets) == 1
    budget = agent_budgets[0]
    assert programmer_calls and all(budget.scope == dict(r.attribution.scopes())[Level.AGENT]
                                    for r in programmer_calls)
    assert accounts and all(a.settled_mc + a.reserved_mc <= budget.limit_mc for a in accounts)
    assert refusals, "the README's agent budget refused no call of the traffic it names"


def test_the_readme_budget_is_not_flagged_as_never_matched(ledger: str) -> None:
    """`budget list` on the README's ledger never says its budget matched no call."""
    listed = runner.invoke(app, ["budget", "list", "--db", ledger], env={"COLUMNS": "250"})
    assert listed.exit_code == 0
    assert "matched no call yet" not in listed.output
