"""Approval by a signed webhook callback: real HMAC (the notify module's Standard Webhooks scheme) through a
gateway on loopback, with a clear error for each way a callback can be wrong."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import standardwebhooks
from actions_kit import Workers

from comptroller.gateway.approval_callback import APPROVAL_SECRET_ENV, APPROVAL_TOLERANCE_S, approval_secret
from comptroller.notify.signing import decode_secret, generate_secret, signature_headers

SECRET = generate_secret()
POLICY = """
[actions.tumblr]
count_max = 3
window_s = 86400
gap_s = 14400
approval = true
approval_ttl_s = 3600
trust_outcome = true
"""


def _signed(workers: Workers, body: dict[str, Any], *, secret: str = SECRET, skew_s: float = 0.0,
            msg_id: str = "msg_1") -> tuple[bytes, dict[str, str]]:
    raw = json.dumps(body).encode()
    stamp = int(workers.clock.now().timestamp() + skew_s)
    return raw, {**signature_headers(decode_secret(secret), msg_id, stamp, raw), "Content-Type": "application/json"}


@pytest.fixture
def held(make_workers: Callable[[str, int], Workers], monkeypatch: pytest.MonkeyPatch) -> Callable[..., Any]:
    """A gateway with the callback secret set; returns (workers, client, hold) where hold(id) holds an action."""
    monkeypatch.setenv(APPROVAL_SECRET_ENV, SECRET)
    workers = make_workers(POLICY, 1)
    writer = {"Authorization": f"Bearer {workers.key(agent='writer')}"}

    def hold(client: httpx.Client, action_id: str) -> None:
        body = {"id": action_id, "platform": "tumblr", "kind": "post", "text": f"post {action_id}, its own subject"}
        assert client.post("/v1/actions/check", json=body, headers=writer).status_code == 202

    def start() -> tuple[Workers, httpx.Client, Callable[[httpx.Client, str], None], dict[str, str]]:
        return workers, httpx.Client(base_url=workers.urls[0], timeout=10), hold, writer
    return start


def _decide(client: httpx.Client, action_id: str, raw: bytes, headers: dict[str, str]) -> httpx.Response:
    return client.post(f"/v1/actions/{action_id}/approval", content=raw, headers=headers)


def test_a_signed_callback_approves_and_the_action_then_runs(held: Callable[..., Any]) -> None:
    """pending -> approved by a correctly signed callback (decided_by names it) -> outcome -> done."""
    workers, client, hold, writer = held()
    with client:
        hold(client, "p1")
        raw, headers = _signed(workers, {"action": "p1", "tenant": "acme", "decision": "approve", "by": "tg:@ops"})
        approved = _decide(client, "p1", raw, headers)
        assert approved.status_code == 200, approved.text
        assert (approved.json()["action"]["status"], approved.json()["action"]["decided_by"]) == (
            "approved", "callback:tg:@ops")
        assert client.post("/v1/actions/p1/outcome", json={"published": True}, headers=writer).status_code == 200
        replay = _decide(client, "p1", raw, headers)  # the same signed request again, inside the window
        assert (replay.status_code, replay.json()["error"]["code"]) == (409, "action_already_decided")


def test_a_signed_callback_rejects(held: Callable[..., Any]) -> None:
    """pending -> rejected by a signed callback; the action may not run (its outcome is refused)."""
    workers, client, hold, writer = held()
    with client:
        hold(client, "p1")
        raw, headers = _signed(workers, {"action": "p1", "tenant": "acme", "decision": "reject", "by": "tg:@ops"})
        rejected = _decide(client, "p1", raw, headers)
        assert (rejected.status_code, rejected.json()["action"]["status"]) == (200, "rejected")
        outcome = client.post("/v1/actions/p1/outcome", json={"published": True}, headers=writer)
        assert outcome.status_code == 409


def test_each_wrong_callback_gets_its_own_error(held: Callable[..., Any]) -> None:
    """Wrong secret, tampered body, missing headers, a stale or future timestamp, another action's id, an unknown
    action, an expired hold: each answers its own status and code, and none of them decides anything."""
    workers, client, hold, writer = held()
    approve = {"action": "p1", "tenant": "acme", "decision": "approve", "by": "tg:@ops"}
    with client:
        hold(client, "p1")

        def code(response: httpx.Response) -> tuple[int, str]:
            return response.status_code, response.json()["error"]["code"]
        raw, headers = _signed(workers, approve, secret=generate_secret())
        assert code(_decide(client, "p1", raw, headers)) == (401, "invalid_signature")
        raw, headers = _signed(workers, approve)
        tampered = raw.replace(b"tg:@ops", b"tg:@eve")
        assert code(_decide(client, "p1", tampered, headers)) == (401, "invalid_signature")
        bare = {"Content-Type": "application/json", "webhook-timestamp": headers["webhook-timestamp"]}
        assert code(_decide(client, "p1", raw, bare)) == (401, "invalid_signature")
        for skew_s in (-APPROVAL_TOLERANCE_S - 1, APPROVAL_TOLERANCE_S + 1):
            raw, headers = _signed(workers, approve, skew_s=skew_s)
            assert code(_decide(client, "p1", raw, headers)) == (401, "stale_timestamp")
        raw, headers = _signed(workers, approve, skew_s=-APPROVAL_TOLERANCE_S)  # the window's edge: still fresh
        other = _decide(client, "p2", raw, headers)  # a valid signature for p1 replayed against p2
        assert code(other) == (400, "invalid_request")
        raw, headers = _signed(workers, {**approve, "action": "nope"})
        assert code(_decide(client, "nope", raw, headers)) == (404, "action_not_found")
        raw, headers = _signed(workers, {**approve, "tenant": "globex"})  # p1 is acme's: globex has none
        assert code(_decide(client, "p1", raw, headers)) == (404, "action_not_found")
        assert client.get("/v1/actions/p1", headers=writer).json()["action"]["status"] == "pending_approval"
        workers.clock.advance(3600)  # the hold's ttl
        raw, headers = _signed(workers, approve)
        assert code(_decide(client, "p1", raw, headers)) == (409, "action_expired")


def test_without_a_secret_the_callback_is_off(make_workers: Callable[[str, int], Workers],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """No COMPTROLLER_APPROVAL_SECRET: every callback answers 403 approval_callback_disabled, signed or not."""
    monkeypatch.delenv(APPROVAL_SECRET_ENV, raising=False)
    workers = make_workers(POLICY, 1)
    raw, headers = _signed(workers, {"action": "p1", "tenant": "acme", "decision": "approve", "by": "x"})
    response = httpx.post(f"{workers.urls[0]}/v1/actions/p1/approval", content=raw, headers=headers, timeout=10)
    assert (response.status_code, response.json()["error"]["code"]) == (403, "approval_callback_disabled")


def test_a_malformed_secret_stops_start_up(monkeypatch: pytest.MonkeyPatch) -> None:
    """A secret that is not whsec_ base64 of 24 to 64 bytes is an error at start, naming the variable."""
    with pytest.raises(ValueError, match=APPROVAL_SECRET_ENV):
        approval_secret({APPROVAL_SECRET_ENV: "whsec_short"})
    assert approval_secret({}) is None
    assert approval_secret({APPROVAL_SECRET_ENV: SECRET}) == SECRET


def test_a_callback_signed_by_the_standard_webhooks_library_is_accepted(held: Callable[..., Any]) -> None:
    """A bot signing with the reference `standardwebhooks` library and the same whsec_ secret is understood: one
    secret format and one scheme serve the gateway's outgoing webhooks and its incoming approvals."""
    workers, client, hold, _ = held()
    with client:
        hold(client, "p1")
        raw = json.dumps({"action": "p1", "tenant": "acme", "decision": "approve", "by": "bot"}).encode()
        now = workers.clock.now()
        headers = {"webhook-id": "msg_ref", "webhook-timestamp": str(int(now.timestamp())),
                   "webhook-signature": standardwebhooks.Webhook(SECRET).sign("msg_ref", now, raw),
                   "Content-Type": "application/json"}
        approved = _decide(client, "p1", raw, headers)
        assert (approved.status_code, approved.json()["action"]["status"]) == (200, "approved")
