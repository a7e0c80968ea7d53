"""Durable re-verification across a killed `comptroller serve`: the schedule is in the ledger, not the process.

Real processes and the real clock (short backoffs): the first serve is SIGKILLed (worker and parent, no
shutdown code runs), a second serve on the same ledger file resumes re-checking the unverified action.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from actions_kit import StubPlatform

from comptroller.domain.actions import ActionRecord, ActionStatus
from comptroller.engine.action_rows import action_key
from comptroller.storage import store_from_url
from comptroller.storage.keys import SQLiteKeyStore, new_key
from serve_kit import kill_serve, serve_process

TEXT = "Five lessons from running six AI agents in production for a month. Read the thread."
POLICY = """namespace = "test"
[actions.tumblr]
count_max = 3
window_s = 86400
verify_url = "{url}"
verify_attempts = 2
verify_backoff_s_start = 1
verify_backoff_s_max = 1
"""


def _wait(condition: Callable[[], bool], what: str, limit_s: float = 90.0) -> None:
    deadline = time.monotonic() + limit_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting for {what}")
        time.sleep(0.05)


@pytest.mark.slow
def test_a_sigkilled_serve_leaves_re_verification_to_the_next_one(tmp_path: Path) -> None:
    """An action the stub answered 200 for without publishing is checked by the first serve, which is SIGKILLed;
    a second serve on the ledger re-checks it (the unverified event), and verifies it once the stub publishes."""
    (tmp_path / "policy.toml").write_text(POLICY, encoding="utf-8")
    record, plain = new_key(tenant="acme", agent="writer")
    keys = SQLiteKeyStore(tmp_path / "ledger.db")
    keys.add(record)
    keys.close()
    auth = {"Authorization": f"Bearer {plain}"}
    db = f"sqlite:///{tmp_path / 'ledger.db'}"
    reader = store_from_url(db)

    def stored() -> ActionRecord:
        found = reader.state(action_key("acme", "p1"))
        assert found is not None
        return ActionRecord.from_record(found.record)
    with StubPlatform(publishes=False) as liar:
        with serve_process(tmp_path / "policy.toml", db) as (first, url):
            body = {"id": "p1", "platform": "tumblr", "kind": "post", "text": TEXT}
            assert httpx.post(f"{url}/v1/actions/check", json=body, headers=auth, timeout=10).status_code == 200
            liar.publish(TEXT)  # answered 200, published nothing
            outcome = httpx.post(f"{url}/v1/actions/p1/outcome", json={"published": True, "url": liar.url},
                                 headers=auth, timeout=10)
            assert outcome.json()["action"]["status"] == "unverified"
            _wait(lambda: stored().verify_attempts >= 1, "the first serve's check")
            kill_serve(first)
        left = stored()
        assert left.status is ActionStatus.UNVERIFIED and left.verify_next_at is not None
        with serve_process(tmp_path / "policy.toml", db):
            _wait(lambda: stored().verify_attempts > left.verify_attempts, "the second serve to re-check it")
            unverified = [e for e in reader.events("action") if e.code == "unverified"]
            assert [(e.detail["action"], e.detail["attempts"]) for e in unverified] == [("p1", 2)]
            liar.publishes = True
            liar.publish(TEXT)
            _wait(lambda: stored().status is ActionStatus.DONE, "the second serve to verify it")
    done = stored()
    assert done.verify_next_at is None and done.verified_at is not None
    assert liar.gets >= done.verify_attempts  # a GET cut off by the SIGKILL is not counted
    reader.close()
