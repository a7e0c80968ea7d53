"""OpenTelemetry GenAI spans (OTLP JSON) -> normalised trace records.

Source: OpenTelemetry semantic conventions for generative AI, "Semantic conventions
for generative client AI spans" and the GenAI attribute registry
(opentelemetry.io/docs/specs/semconv/gen-ai/gen-ai-spans/), and the OTLP/JSON
encoding of ``ExportTraceServiceRequest`` (opentelemetry.io/docs/specs/otlp/#json-protobuf-encoding:
``resourceSpans[].scopeSpans[].spans[]``, attributes as ``{"key", "value": {"stringValue" |
"intValue" | ...}}``, 64-bit integers as decimal strings, times as ``*UnixNano``).
A file may hold one request (a JSON document) or one per line (the Collector's file exporter).

A span is one LLM call when it carries ``gen_ai.usage.input_tokens`` or
``gen_ai.usage.output_tokens`` (or their deprecated names ``gen_ai.usage.prompt_tokens`` /
``gen_ai.usage.completion_tokens``); other spans (agent steps, tools, HTTP) are not calls
and are passed over.

| record field | attribute |
|---|---|
| ``input_tokens`` | ``gen_ai.usage.input_tokens`` (includes cached tokens, per the conventions) |
| ``output_tokens`` | ``gen_ai.usage.output_tokens`` (includes ``gen_ai.usage.reasoning.output_tokens``) |
| ``cache_read_tokens`` | ``gen_ai.usage.cache_read.input_tokens`` |
| ``cache_write_tokens`` | ``gen_ai.usage.cache_creation.input_tokens`` |
| ``model`` / ``x_model_resolved`` | ``gen_ai.request.model`` / ``gen_ai.response.model`` |
| ``x_provider`` | ``gen_ai.provider.name``, else the deprecated ``gen_ai.system`` |
| ``agent`` | ``gen_ai.agent.name``, else the resource's ``service.name`` |
| ``phase`` | ``gen_ai.operation.name`` (``chat``, ``embeddings``, ``invoke_agent`` ...) |
| ``run_id`` | ``service.name/`` + ``gen_ai.conversation.id``, else the trace id |
| ``x_max_output_tokens`` | ``gen_ai.request.max_tokens`` |
| ``ts`` | the span's ``endTimeUnixNano`` (when the response arrived) |

An input count smaller than its own cache tokens cannot include them (an instrumentation
passing Anthropic's ``input_tokens`` through), so the cache tokens are added back.
"""

from __future__ import annotations

from typing import Any

from comptroller.replay.importers.rows import Row, RowError, as_int, as_str, first, input_tokens_total, iso_utc, run_id

__all__ = ["calls", "looks_like"]

_INPUT = ("gen_ai.usage.input_tokens", "gen_ai.usage.prompt_tokens")
_OUTPUT = ("gen_ai.usage.output_tokens", "gen_ai.usage.completion_tokens")


def looks_like(row: Row) -> bool:
    """True for an OTLP JSON trace export (``resourceSpans``)."""
    return "resourceSpans" in row


def _value(value: dict[str, Any]) -> Any:
    for kind in ("stringValue", "intValue", "doubleValue", "boolValue"):
        if kind in value:
            return value[kind]
    return None


def _attributes(items: Any) -> dict[str, Any]:
    if not isinstance(items, list):
        return {}
    return {a["key"]: _value(a.get("value") or {}) for a in items if isinstance(a, dict) and "key" in a}


def _call(span: dict[str, Any], resource: dict[str, Any]) -> Row | None:
    attrs = _attributes(span.get("attributes"))
    input_raw, output_raw = first(attrs, *_INPUT), first(attrs, *_OUTPUT)
    if input_raw is None and output_raw is None:
        return None
    cache_read = as_int(attrs.get("gen_ai.usage.cache_read.input_tokens"), "gen_ai.usage.cache_read.input_tokens") or 0
    cache_write = as_int(attrs.get("gen_ai.usage.cache_creation.input_tokens"),
                         "gen_ai.usage.cache_creation.input_tokens") or 0
    input_tokens = as_int(input_raw, "gen_ai.usage.input_tokens") or 0
    service = as_str(resource.get("service.name")) or "otel"
    conversation = as_str(attrs.get("gen_ai.conversation.id")) or as_str(span.get("traceId"))
    if conversation is None:
        raise RowError("gen_ai.conversation.id", "a GenAI span needs gen_ai.conversation.id or a traceId")
    return {
        "run_id": run_id(service, conversation),
        "ts": iso_utc(span.get("endTimeUnixNano") or span.get("startTimeUnixNano"), "endTimeUnixNano"),
        "agent": as_str(attrs.get("gen_ai.agent.name")) or service,
        "phase": as_str(attrs.get("gen_ai.operation.name")),
        "model": as_str(attrs.get("gen_ai.request.model")),
        "x_model_resolved": as_str(attrs.get("gen_ai.response.model")),
        "input_tokens": input_tokens_total(input_tokens, cache_read, cache_write, excludes_cache=False),
        "output_tokens": as_int(output_raw, "gen_ai.usage.output_tokens") or 0,
        "cache_read_tokens": cache_read,
        "cache_write_tokens": cache_write,
        "x_reasoning_tokens": as_int(attrs.get("gen_ai.usage.reasoning.output_tokens"),
                                     "gen_ai.usage.reasoning.output_tokens"),
        "x_max_output_tokens": as_int(attrs.get("gen_ai.request.max_tokens"), "gen_ai.request.max_tokens"),
        "x_provider": as_str(first(attrs, "gen_ai.provider.name", "gen_ai.system")),
        "x_source_id": as_str(span.get("spanId")),
    }


def calls(row: Row) -> list[Row]:
    """The normalised records of every GenAI span in one OTLP export request.

    Raises:
        RowError: naming the attribute of a span that cannot become a record.
    """
    out: list[Row] = []
    for resource_spans in row.get("resourceSpans") or []:
        resource = _attributes((resource_spans.get("resource") or {}).get("attributes"))
        for scope_spans in resource_spans.get("scopeSpans") or []:
            for span in scope_spans.get("spans") or []:
                call = _call(span, resource)
                if call is not None:
                    out.append(call)
    return out
