"""Importers: each source format's fixture (written from its documented schema) gives the calls and totals it holds."""

from __future__ import annotations

import csv
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from google.protobuf.json_format import MessageToJson
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from typer.testing import CliRunner

from comptroller.cli.main import app
from comptroller.replay.importers import convert, detect, load
from comptroller.replay.trace import TraceError, TraceRecord, read_traces

FIXTURES = Path(__file__).parent / "fixtures"


def _totals(records: list[TraceRecord]) -> tuple[int, int, int, int, Decimal]:
    return (sum(r.input_tokens for r in records), sum(r.output_tokens for r in records),
            sum(r.cache_read_tokens for r in records), sum(r.cache_write_tokens for r in records),
            sum((r.logged_cost_usd or Decimal(0) for r in records), Decimal(0)))


def _otel_attrs(span: dict[str, Any]) -> dict[str, int | str]:
    out: dict[str, int | str] = {}
    for a in span["attributes"]:
        v = a["value"]
        out[a["key"]] = int(v["intValue"]) if "intValue" in v else v["stringValue"]
    return out


def test_otel_fixture_totals() -> None:
    """OTLP JSON: every span with GenAI usage is a call; cache tokens are part of input unless input is smaller."""
    doc = json.loads((FIXTURES / "otel_spans.json").read_text())
    spans = [_otel_attrs(s) for rs in doc["resourceSpans"] for ss in rs["scopeSpans"] for s in ss["spans"]]
    usage = [a for a in spans if "gen_ai.usage.input_tokens" in a or "gen_ai.usage.prompt_tokens" in a]
    want_in = 0
    for a in usage:
        given = int(a.get("gen_ai.usage.input_tokens", a.get("gen_ai.usage.prompt_tokens", 0)))
        cached = int(a.get("gen_ai.usage.cache_read.input_tokens", 0)) + int(
            a.get("gen_ai.usage.cache_creation.input_tokens", 0))
        want_in += given + (cached if given < cached else 0)
    want_out = sum(int(a.get("gen_ai.usage.output_tokens", a.get("gen_ai.usage.completion_tokens", 0))) for a in usage)
    records, skipped = load([FIXTURES / "otel_spans.json"], "otel")
    assert (len(records), skipped) == (len(usage), 0)
    got = _totals(records)
    assert got[:4] == (want_in, want_out,
                       sum(int(a.get("gen_ai.usage.cache_read.input_tokens", 0)) for a in usage),
                       sum(int(a.get("gen_ai.usage.cache_creation.input_tokens", 0)) for a in usage))
    assert {r.agent for r in records} == {str(a.get("gen_ai.agent.name", "support-bot")) for a in usage}


def test_litellm_fixture_totals_csv_and_json(tmp_path: Path) -> None:
    """LiteLLM spend logs: cache hits and failures are passed over; spend is the logged cost; CSV and JSON agree."""
    with open(FIXTURES / "litellm_spend_logs.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    billed = [r for r in rows if r["cache_hit"] != "True" and r["status"] != "failure"]
    usage = [json.loads(r["metadata"])["usage_object"] for r in billed]
    want = (sum(int(r["prompt_tokens"]) for r in billed), sum(int(r["completion_tokens"]) for r in billed),
            sum(u.get("cache_read_input_tokens", u.get("prompt_tokens_details", {}).get("cached_tokens", 0))
                for u in usage),
            sum(u.get("cache_creation_input_tokens", 0) for u in usage),
            sum((Decimal(r["spend"]) for r in billed), Decimal(0)))
    records, _ = load([FIXTURES / "litellm_spend_logs.csv"])
    assert len(records) == len(billed)
    assert _totals(records) == want
    as_json = tmp_path / "spend.json"
    as_json.write_text(json.dumps([{**r, "metadata": json.loads(r["metadata"])} for r in rows]))
    assert detect(as_json) == "litellm"
    assert _totals(load([as_json])[0]) == want
    by_team = {r.run_id.split("/")[0] for r in records}
    assert by_team == {r["team_id"] or r["user"] for r in billed}


def test_langfuse_fixture_totals() -> None:
    """Langfuse observations: usageDetails keys naming input/output sum to the buckets; costDetails.total is logged."""
    observations = json.loads((FIXTURES / "langfuse_observations.json").read_text())["data"]
    generations = [o for o in observations if o.get("usageDetails")]
    def keys(o: dict[str, Any], *parts: str) -> int:
        return sum(v for k, v in o["usageDetails"].items() if k != "total" and any(p in k for p in parts))
    def cost(o: dict[str, Any]) -> Decimal:
        c = o["costDetails"]
        return Decimal(str(c["total"])) if "total" in c else sum((Decimal(str(v)) for v in c.values()), Decimal(0))
    want = (sum(keys(o, "input") for o in generations), sum(keys(o, "output") for o in generations),
            sum(keys(o, "cache_read", "cached") for o in generations),
            sum(keys(o, "cache_creation") for o in generations), sum((cost(o) for o in generations), Decimal(0)))
    records, _ = load([FIXTURES / "langfuse_observations.json"])
    assert len(records) == len(generations)
    assert _totals(records) == want
    assert sorted(r.max_output_tokens or 0 for r in records) == sorted(
        int(o["modelParameters"]["max_tokens"]) for o in generations)


def test_helicone_fixture_totals() -> None:
    """Helicone export: Anthropic's prompt_tokens exclude cache tokens (added back); rows without tokens passed over."""
    rows = [json.loads(line) for line in (FIXTURES / "helicone_export.jsonl").read_text().splitlines()]
    calls = [r for r in rows if r["prompt_tokens"] is not None]
    want_in = sum(r["prompt_tokens"] + (r["prompt_cache_read_tokens"] + r["prompt_cache_write_tokens"]
                                        if r["provider"] == "ANTHROPIC" else 0) for r in calls)
    want = (want_in, sum(r["completion_tokens"] for r in calls), sum(r["prompt_cache_read_tokens"] for r in calls),
            sum(r["prompt_cache_write_tokens"] for r in calls),
            sum((Decimal(str(r["costUSD"])) for r in calls), Decimal(0)))
    records, _ = load([FIXTURES / "helicone_export.jsonl"])
    assert len(records) == len(calls)
    assert _totals(records) == want
    assert [r.agent for r in records] == ["planner", "writer", "triage"]


def test_otel_spans_from_the_sdk(tmp_path: Path) -> None:
    """Spans emitted by opentelemetry-sdk and encoded as OTLP JSON import with the attributes they were given."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "crew"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    calls = [("planner", "gpt-4o-mini", 900, 120, 600), ("coder", "gpt-4o-mini", 4000, 800, 0),
             ("reviewer", "claude-sonnet-4-5", 1500, 60, 1000)]
    with tracer.start_as_current_span("invoke_agent crew"):
        for agent, model, tokens_in, tokens_out, cached in calls:
            with tracer.start_as_current_span(f"chat {model}") as span:
                span.set_attributes({"gen_ai.operation.name": "chat", "gen_ai.request.model": model,
                                     "gen_ai.agent.name": agent, "gen_ai.conversation.id": "job-1",
                                     "gen_ai.usage.input_tokens": tokens_in, "gen_ai.usage.output_tokens": tokens_out,
                                     "gen_ai.usage.cache_read.input_tokens": cached})
    path = tmp_path / "spans.json"
    path.write_text(MessageToJson(encode_spans(exporter.get_finished_spans())))
    records, _ = load([path])
    assert [(r.agent, r.model, r.input_tokens, r.output_tokens, r.cache_read_tokens) for r in records] == calls
    assert {r.run_id for r in records} == {"crew/job-1"}
    assert [r.seq for r in records] == [1, 2, 3]


def test_convert_writes_jsonl_that_reads_back(tmp_path: Path) -> None:
    """`traces convert` writes normalised JSONL that our reader loads into the same records as a direct import."""
    out = tmp_path / "out.jsonl"
    result = CliRunner().invoke(app, ["traces", "convert", str(FIXTURES / "helicone_export.jsonl"),
                                      str(FIXTURES / "otel_spans.json"), "-o", str(out)])
    assert result.exit_code == 0, result.output
    direct, _ = load([FIXTURES / "helicone_export.jsonl", FIXTURES / "otel_spans.json"])
    again, _ = read_traces([out])
    strip = [(r.run_id, r.seq, r.ts, r.agent, r.model, r.input_tokens, r.output_tokens, r.logged_cost_usd)
             for r in direct]
    assert strip == [(r.run_id, r.seq, r.ts, r.agent, r.model, r.input_tokens, r.output_tokens, r.logged_cost_usd)
                     for r in again]


def test_bad_row_names_field_and_row(tmp_path: Path) -> None:
    """A row with a negative token count is an error naming the file, the row and the source column."""
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"request_created_at": "2025-01-01T00:00:00Z", "prompt_tokens": -3,
                                "completion_tokens": 1, "model": "gpt-4o-mini"}) + "\n")
    with pytest.raises(TraceError, match=r"bad.jsonl:1: field 'prompt_tokens'"):
        load([path])
    assert load([path], skip_invalid=True) == ([], 1)
    assert convert([path], "helicone", skip_invalid=True)[1] == 1


def test_unknown_format_names_fields(tmp_path: Path) -> None:
    """A file no importer recognises is an error listing its fields and the --format values."""
    path = tmp_path / "x.json"
    path.write_text(json.dumps([{"foo": 1, "bar": 2}]))
    with pytest.raises(ValueError, match=r"bar, foo.*--format"):
        load([path])


def test_mixed_files_keep_jsonl_seq(tmp_path: Path) -> None:
    """Our JSONL mixed with an import keeps its own seq numbers; imported calls are numbered per run in time order."""
    ours = tmp_path / "ours.jsonl"
    ours.write_text(json.dumps({"run_id": "x/r", "seq": 41, "ts": "2025-01-01T00:00:00Z", "agent": "a",
                                "model": "gpt-4o-mini", "input_tokens": 1, "output_tokens": 1}) + "\n")
    records, _ = load([ours, FIXTURES / "helicone_export.jsonl"])
    assert [r.seq for r in records if r.run_id == "x/r"] == [41]
    assert [r.seq for r in records if r.run_id == "acme/s-9"] == [1, 2]


def test_litellm_keys_become_a_key_table_in_the_replay_report(tmp_path: Path) -> None:
    """LiteLLM logs each call's key hash (``api_key``): replay attributes calls to it and the report, terminal
    and JSON and HTML, has a cost-by-key table whose calls per key equal the rows' count."""
    with open(FIXTURES / "litellm_spend_logs.csv", newline="") as f:
        billed = [r for r in csv.DictReader(f) if r["cache_hit"] != "True" and r["status"] != "failure"]
    records, _ = load([FIXTURES / "litellm_spend_logs.csv"])
    assert [r.key_id for r in records] == [r["api_key"] or None for r in sorted(billed, key=lambda r: r["endTime"])]
    out, html = tmp_path / "report.json", tmp_path / "report.html"
    result = CliRunner().invoke(app, ["replay", str(FIXTURES / "litellm_spend_logs.csv"), "--json", str(out),
                                      "--html", str(html)])
    assert result.exit_code == 0, result.output
    assert "Cost by API key" in result.output and "Cost by API key" in html.read_text()
    by_key = {g["key"]: g["calls"] for g in json.loads(out.read_text())["by_key"]}
    want: dict[str, int] = {}
    for row in billed:
        want[row["api_key"] or "-"] = want.get(row["api_key"] or "-", 0) + 1
    assert by_key == want
