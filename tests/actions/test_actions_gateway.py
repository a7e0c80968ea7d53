"""The action guard through gateway workers: 32 agents, 2 workers, one platform, one ledger, virtual time."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from datetime import datetime

import httpx
from actions_kit import T0, Workers

from comptroller.storage.keys import new_key

AGENTS = 32
COUNT_MAX = 3
GAP_S = 4 * 3600
STEP_S = 3600
POLICY = f"""
[actions.tumblr]
count_max = {COUNT_MAX}
window_s = 86400
gap_s = {GAP_S}
trust_outcome = true
"""


def test_32_agents_on_2_workers_publish_exactly_the_limit_spaced_by_the_gap(
        make_workers: Callable[[str, int], Workers]) -> None:
    """Every hour of one virtual day all 32 agents try at once, half on each worker: exactly 3 posts go out,
    at least the gap apart, and every other attempt is refused with rate_limit or min_gap."""
    workers = make_workers(POLICY, 2)
    keys = [workers.key(agent=f"agent{i}") for i in range(AGENTS)]
    clients = [httpx.Client(base_url=workers.urls[i % 2], headers={"Authorization": f"Bearer {keys[i]}"},
                            timeout=30) for i in range(AGENTS)]
    published: list[datetime] = []
    refusals: dict[str, int] = {}
    lock = threading.Lock()
    steps = 24 * 3600 // STEP_S

    def agent(i: int, step: int, barrier: threading.Barrier) -> None:
        barrier.wait(timeout=30)
        body = {"id": f"s{step}-a{i}", "platform": "tumblr", "kind": "post",
                "text": f"agent {i} at hour {step}: a post on its own subject"}
        response = clients[i].post("/v1/actions/check", json=body)
        action = response.json()["action"]
        with lock:
            if response.status_code == 200:
                published.append(datetime.fromisoformat(action["created_at"]))
            else:
                assert response.status_code == 429
                for reason in action["reasons"]:
                    refusals[reason["code"]] = refusals.get(reason["code"], 0) + 1
        if response.status_code == 200:
            done = clients[i].post(f"/v1/actions/{action['id']}/outcome", json={"published": True})
            assert done.status_code == 200

    try:
        for step in range(steps):
            barrier = threading.Barrier(AGENTS)
            threads = [threading.Thread(target=agent, args=(i, step, barrier)) for i in range(AGENTS)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=60)
            workers.clock.advance(STEP_S)
    finally:
        for c in clients:
            c.close()
    times = sorted(published)
    assert len(times) == COUNT_MAX
    assert all((b - a).total_seconds() >= GAP_S for a, b in itertools.pairwise(times))
    assert times[0] == T0
    rows = [r.record["status"] for r in workers.engines[0].store.states("action")]
    assert (rows.count("refused"), len(rows)) == (steps * AGENTS - COUNT_MAX, steps * AGENTS)
    assert set(refusals) <= {"rate_limit", "min_gap"} and refusals


def test_the_gateway_is_tenant_scoped(make_workers: Callable[[str, int], Workers]) -> None:
    """An action id of one tenant is invisible to another tenant, and its check does not use the other's slots."""
    workers = make_workers(POLICY, 1)
    acme, globex = workers.key("acme", "writer"), workers.key("globex", "writer")
    body = {"id": "post-1", "platform": "tumblr", "kind": "post", "text": "hello"}
    with httpx.Client(base_url=workers.urls[0], timeout=10) as c:
        assert c.post("/v1/actions/check", json=body, headers={"Authorization": f"Bearer {acme}"}).status_code == 200
        assert c.get("/v1/actions/post-1", headers={"Authorization": f"Bearer {globex}"}).status_code == 404
        other = c.post("/v1/actions/check", json=body, headers={"Authorization": f"Bearer {globex}"})
        assert other.status_code == 200  # globex's own first post, not refused by acme's gap
        refused = c.post("/v1/actions/check", json={**body, "id": "post-2"},
                         headers={"Authorization": f"Bearer {acme}"})
        assert refused.status_code == 429 and int(refused.headers["Retry-After"]) == GAP_S
        bad = c.post("/v1/actions/check", json={"id": "x"}, headers={"Authorization": f"Bearer {acme}"})
        assert (bad.status_code, bad.json()["error"]["code"]) == (400, "invalid_request")


def test_tasks_over_http(make_workers: Callable[[str, int], Workers]) -> None:
    """A lead creates and assigns a task; the writer starts it; it goes stale in virtual time; done needs a
    verified action (409 without), and another tenant cannot see it."""
    workers = make_workers(POLICY + '[tasks]\nstale_s = 600\n[tasks.chain]\nlead = ["writer"]\n', 1)
    lead, writer, other = workers.key(agent="lead"), workers.key(agent="writer"), workers.key("globex", "lead")
    with httpx.Client(base_url=workers.urls[0], timeout=10) as c:
        def as_(key: str) -> dict[str, str]:
            return {"Authorization": f"Bearer {key}"}
        created = c.post("/v1/tasks", json={"id": "t1", "title": "digest", "status": "todo"}, headers=as_(lead))
        assert created.status_code == 201
        refused = c.post("/v1/tasks/t1/assign", json={"assignee": "lead"}, headers=as_(writer))
        assert (refused.status_code, refused.json()["error"]["code"]) == (409, "action_conflict")
        assert c.post("/v1/tasks/t1/assign", json={"assignee": "writer"}, headers=as_(lead)).status_code == 200
        assert c.post("/v1/tasks/t1/move", json={"status": "in_progress"}, headers=as_(writer)).status_code == 200
        workers.clock.advance(600)
        assert c.get("/v1/tasks/t1", headers=as_(lead)).json()["task"]["stale"] is True
        assert c.post("/v1/tasks/t1/heartbeat", headers=as_(writer)).json()["task"]["stale"] is False
        assert c.post("/v1/tasks/t1/move", json={"status": "done"}, headers=as_(writer)).status_code == 409
        check = c.post("/v1/actions/check", headers=as_(writer), json={
            "id": "p1", "platform": "tumblr", "kind": "post", "text": "the digest", "task": "t1"})
        assert check.status_code == 200
        assert c.post("/v1/actions/p1/outcome", json={"published": True}, headers=as_(writer)).status_code == 200
        for _ in range(500):  # verification runs after the answer, in the background: wait for it (bounded)
            if c.get("/v1/actions/p1", headers=as_(writer)).json()["action"]["status"] != "unverified":
                break
            time.sleep(0.01)
        shown = c.get("/v1/tasks/t1", headers=as_(lead)).json()
        assert [a["id"] for a in shown["actions"]] == ["p1"]
        assert (shown["calls"], shown["cost_mc"], shown["budgets"]) == (0, 0, [])  # no calls, no task budget
        assert shown["actions"][0]["status"] == "done"  # trust_outcome = true in POLICY; verified in the background
        done = c.post("/v1/tasks/t1/move", json={"status": "done"}, headers=as_(writer))
        assert done.json()["task"]["status"] == "done"
        assert c.get("/v1/tasks/t1", headers=as_(other)).status_code == 404


def test_approval_over_http_takes_the_admin_key(make_workers: Callable[[str, int], Workers]) -> None:
    """A held action answers 202; a tenant key cannot approve it (403); the admin key approves it, then it runs."""
    workers = make_workers(POLICY.replace("trust_outcome = true", "approval = true\ntrust_outcome = true"), 1)
    writer = {"Authorization": f"Bearer {workers.key(agent='writer')}"}
    record, admin_plain = new_key(tenant="acme", admin=True)
    workers.keys.add(record)
    admin = {"Authorization": f"Bearer {admin_plain}"}
    with httpx.Client(base_url=workers.urls[0], timeout=10) as c:
        body = {"id": "p1", "platform": "tumblr", "kind": "post", "text": "the digest"}
        assert c.post("/v1/actions/check", json=body, headers=writer).status_code == 202
        decision = {"tenant": "acme", "by": "ops"}
        assert c.post("/v1/actions/p1/approve", json=decision, headers=writer).status_code == 403
        approved = c.post("/v1/actions/p1/approve", json=decision, headers=admin)
        assert (approved.status_code, approved.json()["action"]["status"]) == (200, "approved")
        assert c.post("/v1/actions/p1/outcome", json={"published": True}, headers=writer).status_code == 200
        again = c.post("/v1/actions/p1/reject", json=decision, headers=admin)
        assert (again.status_code, again.json()["error"]["code"]) == (409, "action_already_decided")
