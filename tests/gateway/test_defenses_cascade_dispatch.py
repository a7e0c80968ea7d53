"""A strict group's dispatch rule judges ``cascade/<name>`` calls as it judges plain chat calls (issue 13).

The cascade path passes ``X-Comptroller-Message`` to every tier attempt's admission: a member
dispatched for the named message is served through the cascade, and a member answering a message
it was not dispatched for is refused with ``not_dispatched`` before any tier is paid.
"""

from __future__ import annotations

from typing import Any

import httpx
from gateway_kit import GatewayFactory, Harness
from test_gateway_cascades import MESSAGES, MODELS, RESPONSE_FORMAT, VALID, cascade_policy

from comptroller.storage.keys import new_key

CONVERSATION = "review-1"
GROUPS = {"review": {
    "conversation": CONVERSATION, "mode": "strict", "k": 1, "wrap_up": False, "escalate_loops": False,
    "members": [{"agent": "alice", "role": "writer", "description": "python http api databases", "tenant": "acme"},
                {"agent": "bob", "role": "writer", "description": "css frontend design colours", "tenant": "acme"}]}}


def _key(gw: Harness, **who: Any) -> str:
    record, plaintext = new_key(tenant="acme", **who)
    gw.keys.add(record)
    return plaintext


def _cascade(gw: Harness, key: str, message_id: str) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}", "x-comptroller-conversation": CONVERSATION,
               "x-comptroller-message": message_id}
    return httpx.post(f"{gw.url}/v1/chat/completions", headers=headers, timeout=30,
                      json={"model": "cascade/support", "messages": MESSAGES, "response_format": RESPONSE_FORMAT})


def _dispatch(gw: Harness, key: str, message_id: str, text: str) -> None:
    answer = httpx.post(f"{gw.url}/v1/groups/review/dispatch", headers={"authorization": f"Bearer {key}"},
                        timeout=30, json={"id": message_id, "author": "carol", "text": text})
    assert answer.status_code == 200, answer.text


def test_a_cascade_call_names_the_message_it_answers_in_a_strict_group(make_gateway: GatewayFactory) -> None:
    """m1 goes to bob and m2 (the latest) to alice: bob's cascade call naming m1 is served, bob's naming m2 is
    refused with not_dispatched and nothing is upstream for it; alice's naming m2 is served."""
    gw = make_gateway(cascade_policy(groups=GROUPS), models=MODELS)
    gw.stub.control.replies.update({model: VALID for model in MODELS})
    alice, bob, carol = _key(gw, agent="alice"), _key(gw, agent="bob"), _key(gw)
    _dispatch(gw, carol, "m1", "@bob the css design")
    _dispatch(gw, carol, "m2", "@alice the http api")
    served = _cascade(gw, bob, "m1")
    assert served.status_code == 200, served.text
    assert served.headers["x-comptroller-cascade"] == "support"
    upstream_before = len(gw.stub.control.requests)
    refused = _cascade(gw, bob, "m2")
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "not_dispatched"
    assert "'m2'" in refused.json()["error"]["message"]
    assert len(gw.stub.control.requests) == upstream_before  # refused at admit: no tier was sent
    assert _cascade(gw, alice, "m2").status_code == 200
