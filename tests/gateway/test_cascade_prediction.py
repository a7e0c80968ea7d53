"""Cascades reserve a Predicted Output's tokens on every tier attempt, as a plain chat call does."""

from __future__ import annotations

from typing import Any

from gateway_kit import GatewayFactory
from test_gateway_cascades import (
    CHEAP,
    CHEAP_IN,
    CHEAP_OUT,
    INVALID,
    MESSAGES,
    MODELS,
    STRONG,
    STRONG_IN,
    STRONG_OUT,
    VALID,
    cascade_policy,
)

from comptroller.domain.tokens import prediction_tokens_max, request_input_tokens_max

PREDICTION = {"type": "content", "content": '{"answer": "42"}\n' * 8}
MAX_TOKENS = 10


def test_each_attempt_reserves_the_prediction_beyond_the_bound_sent(make_gateway: GatewayFactory) -> None:
    """Both tier attempts hold input + (max_tokens + prediction) at their tier's price; upstream sees max_tokens."""
    gw = make_gateway(cascade_policy(), models=MODELS)
    gw.stub.control.replies.update({CHEAP: INVALID, STRONG: VALID})
    body: dict[str, Any] = {"model": "cascade/support", "messages": MESSAGES, "max_tokens": MAX_TOKENS,
                            "prediction": PREDICTION}
    raw = gw.client().chat.completions.with_raw_response.create(**body)
    assert raw.headers["x-comptroller-tier"] == "strong"
    assert [r["max_tokens"] for r in gw.stub.control.requests] == [MAX_TOKENS, MAX_TOKENS]
    input_max, extra = request_input_tokens_max(body, api="chat"), prediction_tokens_max(body)
    assert extra > MAX_TOKENS  # the prediction dominates: a ceiling without it would be too low
    records = sorted(gw.engine.store.usage_records(), key=lambda r: r.reserved_at)
    assert [r.ceiling_mc for r in records] == [input_max * rate_in + (MAX_TOKENS + extra) * rate_out
                                               for rate_in, rate_out in ((CHEAP_IN, CHEAP_OUT),
                                                                         (STRONG_IN, STRONG_OUT))]
