"""``POST /v1/runs``: runs opened over HTTP, their deadline and spend cap enforced at admit, unknown runs refused."""

from __future__ import annotations

import httpx
import openai
import pytest
from gateway_kit import MODEL, Harness

MESSAGES = [{"role": "user", "content": "Run the nightly summary."}]


def _open(gw: Harness, key: str | None = None, **body: object) -> httpx.Response:
    return httpx.post(f"{gw.url}/v1/runs", json=body, headers={"Authorization": f"Bearer {key or gw.key}"},
                      timeout=20)


def test_a_call_after_the_run_deadline_is_refused_over_http(gw: Harness) -> None:
    """A run opened with a 1 ms deadline refuses the next call naming it: 429 deadline_exceeded, nothing sent."""
    opened = _open(gw, id="nightly-1", duration_s_max=0.001)
    assert opened.status_code == 201, opened.text
    assert opened.json()["run_id"] == "nightly-1" and opened.json()["tenant"] == "acme"
    with pytest.raises(openai.RateLimitError) as caught:
        gw.client(**{"X-Comptroller-Run": "nightly-1"}).chat.completions.create(model=MODEL, messages=MESSAGES)
    assert caught.value.code == "deadline_exceeded"
    assert gw.stub.control.requests == []


def test_a_call_inside_the_deadline_is_served_and_reopening_is_idempotent(gw: Harness) -> None:
    """A run with an hour left serves its calls; opening the same id again answers the stored run (200)."""
    assert _open(gw, id="hourly-9", duration_s_max=3600).status_code == 201
    again = _open(gw, id="hourly-9", duration_s_max=60)
    assert again.status_code == 200 and again.json()["duration_s_max"] == 3600
    answer = gw.client(**{"X-Comptroller-Run": "hourly-9"}).chat.completions.create(model=MODEL, messages=MESSAGES)
    assert answer.choices


def test_a_call_naming_an_unknown_run_is_refused_with_how_to_open_it(gw: Harness) -> None:
    """A typo in the run id is not a free pass: unknown_run, and the message names POST /v1/runs."""
    with pytest.raises(openai.APIStatusError) as caught:
        gw.client(**{"X-Comptroller-Run": "never-opened"}).chat.completions.create(model=MODEL, messages=MESSAGES)
    assert caught.value.code == "unknown_run"  # type: ignore[attr-defined]
    assert "POST /v1/runs" in caught.value.message
    assert gw.stub.control.requests == []


def test_runs_are_tenant_walls(gw: Harness) -> None:
    """Another tenant's run of the same id is unknown to this tenant's calls."""
    other = gw.new_key(tenant="globex")
    assert _open(gw, other, id="shared-name", duration_s_max=3600).status_code == 201
    with pytest.raises(openai.APIStatusError) as caught:
        gw.client(**{"X-Comptroller-Run": "shared-name"}).chat.completions.create(model=MODEL, messages=MESSAGES)
    assert caught.value.code == "unknown_run"  # type: ignore[attr-defined]


def test_the_spend_cap_refuses_the_call_that_would_pass_it(gw: Harness) -> None:
    """A cap smaller than one call's ceiling refuses the first call (run_spend_cap) before it is sent."""
    assert _open(gw, id="capped", duration_s_max=3600, spend_cap_usd="0.00001").status_code == 201
    with pytest.raises(openai.RateLimitError) as caught:
        gw.client(**{"X-Comptroller-Run": "capped"}).chat.completions.create(model=MODEL, messages=MESSAGES)
    assert caught.value.code == "deadline_exceeded" and "spend cap" in caught.value.message


@pytest.mark.parametrize(("body", "param"), [
    ({"duration_s_max": 60}, "id"),
    ({"id": "r", "duration_s_max": 0}, "duration_s_max"),
    ({"id": "r", "duration_s_max": 60, "spend_cap_usd": "lots"}, "spend_cap_usd"),
])
def test_bad_bodies_are_400_naming_the_field(gw: Harness, body: dict[str, object], param: str) -> None:
    """A missing id, a zero duration or a cap that is not a decimal is a 400 naming the field."""
    response = _open(gw, **body)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == param
