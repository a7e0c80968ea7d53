"""Errors as OpenAI-compatible HTTP responses.

Every answer that is not a completion has the body OpenAI's API uses, so any OpenAI
client raises its own typed exception (``RateLimitError``, ``BadRequestError``...)
with our ``code`` and ``param``::

    {"error": {"message": "...", "type": "...", "param": "...", "code": "..."}}

=============================  ======  ==========================  ==========================
cause                          status  ``type``                    ``code``
=============================  ======  ==========================  ==========================
a defense or budget refused    429     ``insufficient_quota``      the verdict's code
the kill switch is tripped     503     ``insufficient_quota``      ``kill_switch``
bad request body               400     ``invalid_request_error``   e.g. ``invalid_json``
no or bad API key              401     ``authentication_error``    ``invalid_api_key``
a header widens the key        403     ``permission_error``        ``scope_not_allowed``
the ledger cannot answer       503     ``api_error``               ``ledger_unavailable``
upstream failed / timed out    502/504 ``upstream_error``          ``upstream_error`` / ``upstream_timeout``
=============================  ======  ==========================  ==========================

A refusal's ``param`` names the level that refused (``agent``, ``conversation``...)
and its ``Retry-After`` header gives whole seconds, rounded up, where waiting helps.
"""

from __future__ import annotations

import json
import math
from typing import Any

from starlette.responses import Response

from comptroller.domain.codes import Code
from comptroller.domain.defenses.verdict import Verdict

__all__ = ["GatewayError", "error_response", "verdict_response"]


class GatewayError(Exception):
    """An answer other than a completion, raised inside the call path and rendered once.

    Args:
        status: the HTTP status.
        message: one sentence for people: what is wrong and what to do.
        type_: the OpenAI error ``type``.
        code: the machine code.
        param: the request parameter or level at fault, if any.
        headers: extra response headers (``Retry-After``).
    """

    def __init__(self, status: int, message: str, *, type_: str = "invalid_request_error", code: str,
                 param: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type_ = type_
        self.code = code
        self.param = param
        self.headers = headers or {}

    def response(self) -> Response:
        """The HTTP response."""
        return error_response(self.status, self.message, type_=self.type_, code=self.code, param=self.param,
                              headers=self.headers)


def error_response(status: int, message: str, *, type_: str, code: str, param: str | None = None,
                   headers: dict[str, str] | None = None, extra: dict[str, Any] | None = None) -> Response:
    """A JSON response with OpenAI's error body; ``extra`` adds fields beside ``message``."""
    error: dict[str, Any] = {"message": message, "type": type_, "param": param, "code": code, **(extra or {})}
    return Response(json.dumps({"error": error}, separators=(",", ":")), status_code=status,
                    media_type="application/json", headers=headers)


def verdict_response(verdict: Verdict) -> Response:
    """The 429 (or 503 for the kill switch) a refusal answers, with ``Retry-After`` when waiting helps.

    The body carries the verdict's ``rule``, ``detector``, ``scope`` and ``evidence``
    beside the standard fields, so a client can show limit, used and remaining.
    """
    status = 503 if verdict.code is Code.KILL_SWITCH else 429
    headers = {}
    if verdict.retry_after_s is not None:
        headers["Retry-After"] = str(max(1, math.ceil(verdict.retry_after_s)))
    extra = {"rule": str(verdict.rule), "detector": verdict.detector, "scope": verdict.scope,
             "evidence": dict(verdict.evidence)}
    return error_response(status, verdict.message, type_="insufficient_quota", code=str(verdict.code),
                          param=None if verdict.level is None else str(verdict.level), headers=headers,
                          extra=extra)
