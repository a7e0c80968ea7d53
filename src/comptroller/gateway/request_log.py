"""The per-call access log: one JSON object per line for every metered call, and what feeds the spans.

Off unless ``[gateway] request_log`` is set: a file path (appended to, one line per call,
flushed per line, shared safely by a worker's threads) or ``logger:NAME`` (each line is an
``INFO`` record of the standard-library logger ``NAME``, for the user's own handlers).

A line (:class:`CallEntry`; tokens follow the OpenTelemetry GenAI names, money is integer
millicents)::

    {"ts": "2026-12-07T19:41:54.120Z", "request_id": "...", "api": "chat", "status": 429,
     "tenant": "acme", "agent": "default", "conversation": "c1", "task": null,
     "model": "gpt-4o-mini", "requested_model": "gpt-4o-mini", "served_model": null,
     "input_tokens": 0, "output_tokens": 0, "cache_read_tokens": 0, "cache_write_tokens": 0,
     "cost_mc": 0, "ceiling_mc": 3300,
     "outcome": "refused", "code": "budget_exceeded", "level": "tenant", "upstream_status": null,
     "cause": "budget_exceeded: the tenant budget ...", "latency_ms": 3.1}

``outcome`` is ``settled`` (an answer whose usage was settled), ``streamed`` (a stream: it is
settled when it ends, after this line; its cost is in the ledger), ``refused`` (a defense or
budget said no: ``code`` and ``level`` say which), ``upstream_error`` (the provider failed:
``upstream_status`` is its HTTP status when it answered one, ``cause`` its message or the
connection error) or ``error`` (anything else the gateway answered with an error, e.g. a bad
request or key). The entry is built from what the call path hands back (the response, its
``X-Comptroller-*`` headers and error body, the adapter's reading of the answer's usage), so
the log never disagrees with what the client was told.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from starlette.requests import Request
from starlette.responses import Response

from comptroller.gateway.apis.base import Api, ApiRequest
from comptroller.gateway.identity import Caller

__all__ = ["LOGGER_PREFIX", "CallEntry", "RequestLog", "call_entry"]

LOGGER_PREFIX = "logger:"
_UPSTREAM_STATUS = re.compile(r"answered HTTP (\d{3})")
_REFUSAL_STATUSES = (429, 503)


@dataclass(frozen=True, slots=True)
class CallEntry:
    """One metered call as the request log and the spans see it (see the module docstring for the fields)."""

    ts: str
    request_id: str
    api: str
    status: int
    tenant: str | None
    agent: str | None
    conversation: str | None
    task: str | None
    model: str | None
    requested_model: str | None
    served_model: str | None
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int
    cost_mc: int
    ceiling_mc: int | None
    outcome: str
    code: str | None
    level: str | None
    upstream_status: int | None
    cause: str | None
    latency_ms: float
    provider: str | None = None

    def to_json(self) -> str:
        """The entry as one line of JSON (no newline)."""
        return json.dumps(asdict(self), separators=(",", ":"), ensure_ascii=False)


def _int(value: str | None) -> int | None:
    try:
        return None if value is None else int(value)
    except ValueError:
        return None


def _error_body(response: Response) -> dict[str, Any]:
    """The ``error`` object of an error answer (OpenAI or Anthropic shape), or {}."""
    try:
        body = json.loads(bytes(response.body))
    except (ValueError, AttributeError):
        return {}
    error = body.get("error") if isinstance(body, dict) else None
    return error if isinstance(error, dict) else {}


def _outcome(status: int, error: dict[str, Any], headers: dict[str, str], streamed: bool) -> tuple[str, str | None]:
    """(outcome, code) of an answer."""
    code = error.get("code") or error.get("type")
    code = None if code is None else str(code)
    if status < 400:
        return ("streamed" if streamed else "settled"), None
    if status in _REFUSAL_STATUSES and "rule" in error:
        return "refused", code
    if error.get("type") == "upstream_error" or (code or "").startswith("upstream_") or (
            status < 500 and "x-comptroller-ceiling-mc" not in headers and not error.get("param") and code is None):
        return "upstream_error", code
    return "error", code


def call_entry(request: Request, api: Api, response: Response, *, started: float, caller: Caller | None,
               call: ApiRequest | None, request_id: str | None = None) -> CallEntry:
    """The log entry of one call, from the request, who called, what was asked and the response sent.

    Args:
        request: the client's request (its ``X-Comptroller-*`` attribution headers).
        api: the adapter that served it (reads the usage of the answer).
        response: what the client got.
        started: ``time.perf_counter()`` when the request arrived.
        caller: the authenticated key (None when authentication failed).
        call: the parsed request (None when the body was refused before parsing).
        request_id: the call's id (default: the ``X-Request-Id`` header, else a new UUID4).
    """
    latency_ms = round((time.perf_counter() - started) * 1000, 3)
    headers = {k.lower(): v for k, v in response.headers.items()}
    asked = request.headers
    status = response.status_code
    streamed = not hasattr(response, "body")
    error = _error_body(response) if status >= 400 else {}
    outcome, code = _outcome(status, error, headers, streamed)
    usage = None
    if outcome == "settled" and call is not None:
        try:
            answer = json.loads(bytes(response.body))
            usage = api.usage(answer) if isinstance(answer, dict) else None
        except ValueError:
            usage = None
    evidence: dict[str, Any] = error["evidence"] if isinstance(error.get("evidence"), dict) else {}
    message = str(error.get("message")) if error.get("message") is not None else None
    upstream_status = None
    if outcome in ("settled", "streamed"):
        upstream_status = 200
    elif outcome == "upstream_error":
        found = _UPSTREAM_STATUS.search(message or "")
        upstream_status = int(found.group(1)) if found else (status if status < 500 else None)
    key = caller.key if caller is not None else None
    return CallEntry(
        ts=datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        request_id=request_id or headers.get("x-comptroller-request-id") or asked.get("x-request-id")
        or uuid.uuid4().hex,
        api=api.name, status=status, tenant=None if key is None else key.tenant,
        agent=None if key is None else (key.agent or asked.get("x-comptroller-agent") or "default"),
        conversation=asked.get("x-comptroller-conversation"), task=asked.get("x-comptroller-task"),
        model=headers.get("x-comptroller-model") or (None if call is None else call.model),
        requested_model=None if call is None else call.model, served_model=headers.get("x-comptroller-served-model"),
        input_tokens=0 if usage is None else usage.input_tokens,
        output_tokens=0 if usage is None else usage.output_tokens,
        cache_read_tokens=0 if usage is None else usage.cache_read_tokens,
        cache_write_tokens=0 if usage is None else usage.cache_write_tokens,
        cost_mc=_int(headers.get("x-comptroller-cost-mc")) or 0,
        ceiling_mc=_int(headers.get("x-comptroller-ceiling-mc")) or _int(str(evidence.get("requested_mc", ""))),
        outcome=outcome, code=code, level=error.get("param") if outcome == "refused" else None,
        upstream_status=upstream_status, cause=None if outcome in ("settled", "streamed") else message,
        latency_ms=latency_ms, provider=api.family.value)


class RequestLog:
    """Writes :class:`CallEntry` lines to a file or a logger.

    Args:
        target: a file path (created with its directory; appended to) or ``logger:NAME``.

    Raises:
        OSError: when the file cannot be opened for appending.
    """

    def __init__(self, target: str) -> None:
        self.target = target
        self._lock = threading.Lock()
        self._logger: logging.Logger | None = None
        self._file: TextIO | None = None
        if target.startswith(LOGGER_PREFIX):
            self._logger = logging.getLogger(target.removeprefix(LOGGER_PREFIX) or "comptroller.requests")
        else:
            path = Path(target)
            path.parent.mkdir(parents=True, exist_ok=True)
            self._file = path.open("a", encoding="utf-8")

    def write(self, entry: CallEntry) -> None:
        """Append one line (flushed at once)."""
        line = entry.to_json()
        if self._logger is not None:
            self._logger.info(line)
            return
        assert self._file is not None
        with self._lock:
            self._file.write(line + "\n")
            self._file.flush()

    def close(self) -> None:
        """Close the file (a logger needs nothing)."""
        if self._file is not None:
            with self._lock:
                self._file.close()
