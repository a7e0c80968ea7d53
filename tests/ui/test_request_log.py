"""The per-call JSON-lines request log and the OpenTelemetry GenAI spans, through a real gateway."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import openai
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from stub_upstream import prompt_tokens
from ui_kit import MODEL, UiGateway

from comptroller.domain.budgets import Budget, Period
from comptroller.domain.scopes import Level
from comptroller.gateway.telemetry import CallObserver, GenAiSpans, use_observer

MESSAGES = [{"role": "user", "content": "hello there"}]  # what UiGateway.call sends
MC_IN, MC_OUT = 100, 200  # the stub model's price: input_mtok 1000, output_mtok 2000 USD


def lines(path: Path) -> list[dict[str, Any]]:
    """The log's entries."""
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_settled_call_logs_tokens_cost_and_ceiling(make_gateway: Any, tmp_path: Path) -> None:
    """A served call's line carries its tenant, agent, conversation, model, tokens, cost and ceiling as settled."""
    log = tmp_path / "logs" / "requests.jsonl"
    gw: UiGateway = make_gateway(request_log=str(log))
    gw.call(conversation="c7")
    (entry,) = lines(log)
    (record,) = [r for r in gw.engine.store.usage_records() if r.attribution.tenant == "acme"]
    assert (entry["tenant"], entry["agent"], entry["conversation"], entry["task"]) == ("acme", "default", "c7",
                                                                                       "task-c7")
    assert (entry["model"], entry["requested_model"], entry["api"], entry["status"]) == (MODEL, MODEL, "chat", 200)
    assert (entry["input_tokens"], entry["output_tokens"]) == (record.usage.input_tokens, record.usage.output_tokens)
    assert entry["input_tokens"] == prompt_tokens(MESSAGES)
    assert (entry["cost_mc"], entry["ceiling_mc"]) == (record.cost_mc, record.ceiling_mc)
    assert (entry["outcome"], entry["code"], entry["upstream_status"]) == ("settled", None, 200)
    assert entry["latency_ms"] > 0 and entry["request_id"]


def test_refused_call_logs_code_level_and_ceiling(make_gateway: Any, tmp_path: Path) -> None:
    """A call refused by a tenant budget logs outcome refused, its code and level, the ceiling it asked for."""
    log = tmp_path / "requests.jsonl"
    gw: UiGateway = make_gateway(request_log=str(log))
    gw.engine.store.put_budget(Budget(level=Level.TENANT, scope="replay|acme", limit_mc=1, period=Period.DAY))
    with pytest.raises(openai.APIStatusError):
        gw.call()
    (entry,) = lines(log)
    (refusal,) = [e for e in gw.engine.store.events("refusal") if e.scope == "replay|acme"]
    assert (entry["outcome"], entry["code"], entry["level"], entry["status"]) == ("refused", refusal.code, "tenant",
                                                                                   429)
    assert entry["ceiling_mc"] == refusal.detail["requested_mc"]
    assert (entry["tenant"], entry["model"], entry["cost_mc"], entry["upstream_status"]) == ("acme", MODEL, 0, None)
    assert entry["cause"] == refusal.detail["message"]


def test_upstream_502_logs_its_status_and_cause(make_gateway: Any, tmp_path: Path) -> None:
    """A provider answering 502 is logged as upstream_error with upstream status 502 and the provider's message."""
    log = tmp_path / "requests.jsonl"
    gw: UiGateway = make_gateway(request_log=str(log))
    gw.stub.control.fail_status = 502
    with pytest.raises(openai.APIStatusError) as failed:
        gw.call()
    assert failed.value.status_code == 502
    (entry,) = lines(log)
    assert (entry["outcome"], entry["upstream_status"], entry["status"], entry["code"]) == ("upstream_error", 502,
                                                                                             502, "upstream_error")
    assert "502" in entry["cause"] and "stub" in entry["cause"]
    assert (entry["tenant"], entry["model"], entry["cost_mc"]) == ("acme", MODEL, 0)


def test_log_to_a_logger(make_gateway: Any, caplog: pytest.LogCaptureFixture) -> None:
    """``logger:NAME`` sends each line to that standard-library logger at INFO."""
    gw: UiGateway = make_gateway(request_log="logger:test.requests")
    with caplog.at_level("INFO", logger="test.requests"):
        gw.call()
    (record,) = [r for r in caplog.records if r.name == "test.requests"]
    assert json.loads(record.getMessage())["outcome"] == "settled"


def test_genai_span_of_a_hand_checked_call(make_gateway: Any) -> None:
    """An in-memory exporter receives one CLIENT span with the GenAI attributes of a call priced by hand."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    gw: UiGateway = make_gateway()
    use_observer(gw.config, CallObserver(spans=GenAiSpans(provider)))
    gw.stub.control.reply_words = 7
    raw = gw.client().chat.completions.with_raw_response.create(
        model=MODEL, messages=MESSAGES, max_tokens=16,  # type: ignore[arg-type]
        extra_headers={"X-Comptroller-Conversation": "c9", "X-Comptroller-Agent": "writer"})
    input_tokens, output_tokens = prompt_tokens(MESSAGES), 7  # the stub: words + 3 per message; one per word
    (span,) = exporter.get_finished_spans()
    attributes = dict(span.attributes or {})
    assert span.name == f"chat {MODEL}" and span.kind.name == "CLIENT"
    assert attributes == {
        "gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai", "gen_ai.request.model": MODEL,
        "gen_ai.response.model": MODEL, "gen_ai.usage.input_tokens": input_tokens,
        "gen_ai.usage.output_tokens": output_tokens, "gen_ai.usage.cache_read.input_tokens": 0,
        "gen_ai.usage.cache_creation.input_tokens": 0, "gen_ai.conversation.id": "c9", "gen_ai.agent.name": "writer",
        "comptroller.tenant": "acme", "comptroller.outcome": "settled",
        "comptroller.cost_mc": input_tokens * MC_IN + output_tokens * MC_OUT,
        "comptroller.ceiling_mc": int(raw.headers["x-comptroller-ceiling-mc"]),
        "comptroller.request_id": attributes["comptroller.request_id"], "http.response.status_code": 200,
    }
    assert attributes["comptroller.ceiling_mc"] >= input_tokens * MC_IN + 16 * MC_OUT


def test_genai_span_of_a_refusal_names_the_code(make_gateway: Any) -> None:
    """A refused call's span has status ERROR, the refusal code and level, and the ceiling asked for."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    gw: UiGateway = make_gateway()
    use_observer(gw.config, CallObserver(spans=GenAiSpans(provider)))
    gw.engine.store.put_budget(Budget(level=Level.TENANT, scope="replay|acme", limit_mc=1, period=Period.DAY))
    with pytest.raises(openai.APIStatusError):
        gw.call()
    (span,) = exporter.get_finished_spans()
    (refusal,) = [e for e in gw.engine.store.events("refusal") if e.scope == "replay|acme"]
    attributes = dict(span.attributes or {})
    assert span.status.status_code.name == "ERROR"
    assert (attributes["comptroller.refusal.code"], attributes["comptroller.refusal.level"]) == (refusal.code,
                                                                                                 "tenant")
    assert attributes["comptroller.ceiling_mc"] == refusal.detail["requested_mc"]
    assert attributes["error.type"] == refusal.code
