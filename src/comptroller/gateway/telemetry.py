"""OpenTelemetry GenAI spans, one per metered call (optional: ``[gateway] otel_spans = true``).

Each :class:`~comptroller.gateway.request_log.CallEntry` becomes a ``CLIENT`` span named
``"{gen_ai.operation.name} {gen_ai.request.model}"`` with the GenAI semantic conventions'
attributes (OpenTelemetry semantic conventions, "Semantic conventions for generative AI
client spans", v1.37+):

=============================================  =========================================================
attribute                                      value
=============================================  =========================================================
``gen_ai.operation.name``                      ``chat`` (chat, messages, responses), ``embeddings``,
                                               ``text_completion``
``gen_ai.provider.name``                       the API family the provider speaks (``openai``, ``anthropic``)
``gen_ai.request.model``                       the model the client asked for
``gen_ai.response.model``                      the model that answered (the served one when it differs)
``gen_ai.usage.input_tokens``,                 the settled usage (all input; generated output)
``gen_ai.usage.output_tokens``
``gen_ai.usage.cache_read.input_tokens``,      the parts of the input read from / written to a cache
``gen_ai.usage.cache_creation.input_tokens``
``gen_ai.conversation.id``,                    the attribution (``X-Comptroller-Conversation``; the agent)
``gen_ai.agent.name``
``comptroller.tenant``, ``comptroller.outcome`` who paid; settled, streamed, refused, upstream_error, error
``comptroller.cost_mc``, ``comptroller.ceiling_mc``  settled cost and reserved ceiling, millicents
``comptroller.refusal.code``,                  the refusal's code and level (refused calls)
``comptroller.refusal.level``
``error.type``                                 the error or refusal code (status ERROR) when not settled
=============================================  =========================================================

Spans go to the global tracer provider, so whatever the process configured (the
``opentelemetry-instrument`` launcher, ``OTEL_*`` variables, or code) receives them. When
none is configured and ``opentelemetry-exporter-otlp-proto-http`` is installed (the ``otel``
extra), :func:`default_provider` sets up OTLP/HTTP export to ``OTEL_EXPORTER_OTLP_ENDPOINT``.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from comptroller.gateway.apis.base import Api, ApiRequest
from comptroller.gateway.config import GatewayConfig
from comptroller.gateway.identity import Caller
from comptroller.gateway.request_log import CallEntry, RequestLog, call_entry

__all__ = ["OPERATIONS", "CallObserver", "GenAiSpans", "default_provider", "observe_call", "span_attributes",
           "use_observer"]

log = logging.getLogger("comptroller.gateway")

OPERATIONS = {"chat": "chat", "messages": "chat", "responses": "chat", "embeddings": "embeddings",
              "completions": "text_completion"}
"""The adapter's name -> ``gen_ai.operation.name``."""


def span_attributes(entry: CallEntry) -> dict[str, str | int]:
    """The span attributes of one call (see the module docstring); unset values are left out."""
    attributes: dict[str, str | int | None] = {
        "gen_ai.operation.name": OPERATIONS.get(entry.api, entry.api),
        "gen_ai.provider.name": entry.provider,
        "gen_ai.request.model": entry.requested_model or entry.model,
        "gen_ai.response.model": entry.served_model or (entry.model if entry.outcome == "settled" else None),
        "gen_ai.usage.input_tokens": entry.input_tokens,
        "gen_ai.usage.output_tokens": entry.output_tokens,
        "gen_ai.usage.cache_read.input_tokens": entry.cache_read_tokens,
        "gen_ai.usage.cache_creation.input_tokens": entry.cache_write_tokens,
        "gen_ai.conversation.id": entry.conversation,
        "gen_ai.agent.name": entry.agent,
        "comptroller.tenant": entry.tenant,
        "comptroller.outcome": entry.outcome,
        "comptroller.cost_mc": entry.cost_mc,
        "comptroller.ceiling_mc": entry.ceiling_mc,
        "comptroller.refusal.code": entry.code if entry.outcome == "refused" else None,
        "comptroller.refusal.level": entry.level,
        "comptroller.request_id": entry.request_id,
        "http.response.status_code": entry.status,
        "error.type": entry.code or str(entry.status) if entry.outcome not in ("settled", "streamed") else None,
    }
    return {k: v for k, v in attributes.items() if v is not None}


class GenAiSpans:
    """Records one GenAI span per call.

    Args:
        tracer_provider: where spans go (None: the global provider, see :func:`default_provider`).

    Raises:
        ImportError: when ``opentelemetry-api`` is not installed (install the ``otel`` extra).
    """

    def __init__(self, tracer_provider: Any = None) -> None:
        from opentelemetry import trace  # noqa: PLC0415 (optional dependency: imported only when spans are on)

        self._trace = trace
        provider = tracer_provider if tracer_provider is not None else trace.get_tracer_provider()
        self.tracer = provider.get_tracer("comptroller.gateway")

    def record(self, entry: CallEntry) -> None:
        """One span for ``entry``, ending now and starting ``latency_ms`` before."""
        end_ns = time.time_ns()
        start_ns = end_ns - int(entry.latency_ms * 1_000_000)
        name = f"{OPERATIONS.get(entry.api, entry.api)} {entry.requested_model or entry.model or ''}".strip()
        span = self.tracer.start_span(name, kind=self._trace.SpanKind.CLIENT, start_time=start_ns,
                                      attributes=span_attributes(entry))
        if entry.outcome not in ("settled", "streamed"):
            span.set_status(self._trace.Status(self._trace.StatusCode.ERROR, entry.code or entry.outcome))
        span.end(end_time=end_ns)


def default_provider() -> Any:
    """The global tracer provider; when none is set, an SDK provider exporting OTLP/HTTP (if installed).

    Returns None (use the global one as it is) when the SDK or the exporter is missing.
    """
    try:
        from opentelemetry import trace  # noqa: PLC0415 (optional dependencies, only when spans are on)
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter  # noqa: PLC0415
        from opentelemetry.sdk.trace import TracerProvider  # noqa: PLC0415
        from opentelemetry.sdk.trace.export import BatchSpanProcessor  # noqa: PLC0415
    except ImportError:
        log.warning("otel_spans: opentelemetry-sdk or the OTLP/HTTP exporter is missing (pip install "
                    "'comptroller[otel]'); spans go to the global tracer provider as configured")
        return None
    if type(trace.get_tracer_provider()).__name__ not in ("ProxyTracerProvider", "NoOpTracerProvider"):
        return trace.get_tracer_provider()
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    return provider


class CallObserver:
    """The request log and the spans of one gateway config (either may be off).

    Args:
        request_log: where the JSON lines go (None: no log).
        spans: the span recorder (None: no spans).
    """

    def __init__(self, request_log: RequestLog | None = None, spans: GenAiSpans | None = None) -> None:
        self.request_log, self.spans = request_log, spans

    @classmethod
    def from_config(cls, config: GatewayConfig) -> CallObserver:
        """The observer ``[gateway] request_log`` and ``otel_spans`` ask for.

        Raises:
            OSError: the request log file cannot be opened.
        """
        target = getattr(config, "request_log", None)
        spans = None
        if getattr(config, "otel_spans", False):
            try:
                spans = GenAiSpans(default_provider())
            except ImportError:
                log.error("otel_spans = true but opentelemetry is not installed: pip install 'comptroller[otel]'")
        return cls(RequestLog(target) if target else None, spans)

    def observe(self, request: Request, api: Api, response: Response, *, started: float, caller: Caller | None,
                call: ApiRequest | None) -> None:
        """Log the call and record its span; an observer failure is logged, never raised into the call."""
        if self.request_log is None and self.spans is None:
            return
        try:
            entry = call_entry(request, api, response, started=started, caller=caller, call=call)
            if self.request_log is not None:
                self.request_log.write(entry)
            if self.spans is not None:
                self.spans.record(entry)
        except Exception:
            log.exception("request log / span of a %s call failed", api.name)


_OBSERVERS: dict[int, tuple[GatewayConfig, CallObserver]] = {}


def use_observer(config: GatewayConfig, observer: CallObserver) -> None:
    """Observe the calls of the gateway with ``config`` through ``observer`` (e.g. spans to a given provider)."""
    _OBSERVERS[id(config)] = (config, observer)


def observe_call(config: GatewayConfig, request: Request, api: Api, response: Response, *, started: float,
                 caller: Caller | None, call: ApiRequest | None) -> None:
    """Log one metered call and record its span, as ``config`` asks (the pipeline's one hook).

    Args:
        config: the gateway's ``[gateway]`` settings (one observer per config object, made at first use).
        request, api, response: the call, its adapter and the answer the client got.
        started: ``time.perf_counter()`` when the request arrived.
        caller, call: the key and the parsed request (None when the call failed before them).
    """
    found = _OBSERVERS.get(id(config))
    if found is None or found[0] is not config:
        found = _OBSERVERS[id(config)] = (config, CallObserver.from_config(config))
    found[1].observe(request, api, response, started=started, caller=caller, call=call)
