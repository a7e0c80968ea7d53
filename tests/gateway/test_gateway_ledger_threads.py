"""With ``ledger_threads`` (networked ledgers) ledger calls run in threads; every exit still resolves once."""

from __future__ import annotations

import httpx
import openai
import pytest
from gateway_kit import MODEL, GatewayFactory, wait_for

MESSAGES = [{"role": "user", "content": "Threads, please."}]


def test_calls_streams_failures_and_disconnects_resolve_once_with_ledger_threads(make_gateway: GatewayFactory) -> None:
    """A plain call and a stream settle, an upstream 500 releases, a disconnect settles the generated part."""
    gw = make_gateway(ledger_threads=True)
    gw.client().chat.completions.create(model=MODEL, messages=MESSAGES)
    list(gw.client().chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "stream"}],
                                             stream=True))
    gw.stub.control.fail_status = 500
    with pytest.raises(openai.InternalServerError):
        gw.client().chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "fails"}])
    gw.stub.control.fail_status = None
    gw.stub.control.reply_words, gw.stub.control.chunk_delay_s = 40, 0.05
    with httpx.Client(timeout=10) as client, client.stream(
            "POST", f"{gw.url}/v1/chat/completions", headers={"authorization": f"Bearer {gw.key}"},
            json={"model": MODEL, "messages": [{"role": "user", "content": "leave early"}], "stream": True}) as r:
        for n, _ in enumerate(r.iter_lines()):
            if n >= 6:
                break
    wait_for(lambda: gw.pending() == 0, "every reservation to be resolved")
    records = list(gw.engine.store.usage_records())
    assert [r.usage.output_tokens for r in records[:2]] == [5, 5]
    assert len(records) == 3
    assert 1 <= records[2].usage.output_tokens < 40
    assert gw.reserved_mc() == 0
