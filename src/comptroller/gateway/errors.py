"""Errors in the shape of the API they came through, with retry headers clients honour.

Every answer that is not a result has the body of its API, so the official clients raise
their own typed exceptions (``RateLimitError``, ``BadRequestError``...) with our ``code``::

    OpenAI (chat, responses, embeddings, completions):
        {"error": {"message": "...", "type": "...", "param": "...", "code": "..."}}
    Anthropic (messages):
        {"type": "error", "error": {"type": "...", "message": "...", "code": "...", "param": "..."}}

Anthropic's ``error.type`` is one of its documented types, chosen by status
(``invalid_request_error`` 400, ``authentication_error`` 401, ``permission_error`` 403,
``not_found_error`` 404, ``request_too_large`` 413, ``rate_limit_error`` 429, ``api_error``
5xx), except quota refusals (``billing_error``); our ``code`` rides beside it.

Retry headers (the openai and anthropic Python clients read both): a refusal that waiting
fixes carries ``Retry-After`` (whole seconds, rounded up); one that waiting cannot fix, or
only after longer than the clients' 60 s retry horizon, carries ``x-should-retry: false``, so
a refusal costs one request, not three. Other 4xx carry ``x-should-retry: false`` too;
upstream 5xx carry neither (the client's own policy applies: nothing was charged).

=============================  ======  ===============================  ====================================
code                           status  OpenAI ``type``                  retry headers
=============================  ======  ===============================  ====================================
``budget_exceeded``            429     ``insufficient_quota``           ``x-should-retry: false`` (a period
                                                                        budget: ``Retry-After`` if <= 60 s)
``kill_switch``                503     ``insufficient_quota``           ``x-should-retry: false``
``loop_detected``              429     ``loop_detected``                ``x-should-retry: false``
``deadline_exceeded``          429     ``deadline_exceeded``            ``x-should-retry: false``
``model_not_allowed``          429     ``model_not_allowed``            ``x-should-retry: false``
``retry_limit``                429     ``retry_limit``                  ``x-should-retry: false`` (+
                                                                        ``Retry-After`` to midnight UTC)
``circuit_open``               429     ``circuit_open``                 ``Retry-After`` (cooldown)
``pace_exceeded``              429     ``pace_exceeded``                ``Retry-After``
``rate_limited``               429     ``rate_limited``                 ``Retry-After`` (GCRA wait; over 60 s
                                                                        also ``x-should-retry: false``)
``quota_exceeded``             429     ``insufficient_quota``           ``x-should-retry: false`` (a period
                                                                        quota: ``Retry-After`` if <= 60 s)
``insufficient_funds``         429     ``insufficient_quota``           ``x-should-retry: false`` (top up)
bad body / unknown field       400     ``invalid_request_error``        ``x-should-retry: false``
no or bad API key              401     ``authentication_error``         ``x-should-retry: false``
key may not / header widens    403     ``permission_error``             ``x-should-retry: false``
unknown endpoint               404     ``not_found_error``              ``x-should-retry: false``
``ledger_unavailable``         503     ``api_error``                    ``Retry-After: 1``
``shutting_down``              503     ``api_error``                    ``Retry-After: 1``
``upstream_error`` / timeout   502/504 ``upstream_error``               none (client default)
=============================  ======  ===============================  ====================================

A refusal's ``param`` names the level that refused (``agent``, ``conversation``...); its body
also carries the verdict's ``rule``, ``detector``, ``scope`` and ``evidence``.
"""

from __future__ import annotations

import json
import math
from enum import StrEnum
from typing import Any

from starlette.responses import Response

from comptroller.domain.codes import Code
from comptroller.domain.defenses.verdict import Verdict

__all__ = ["RETRY_HORIZON_S", "ErrorShape", "GatewayError", "error_response", "verdict_response"]

RETRY_HORIZON_S = 60
"""The longest ``Retry-After`` the openai/anthropic clients wait for; longer waits they ignore and retry early."""

_QUOTA = frozenset({Code.BUDGET_EXCEEDED, Code.KILL_SWITCH, Code.QUOTA_EXCEEDED, Code.INSUFFICIENT_FUNDS})
_ANTHROPIC_TYPES = {400: "invalid_request_error", 401: "authentication_error", 402: "billing_error",
                    403: "permission_error", 404: "not_found_error", 413: "request_too_large",
                    429: "rate_limit_error"}


class ErrorShape(StrEnum):
    """The error body family of an API."""

    OPENAI = "openai"
    ANTHROPIC = "anthropic"


class GatewayError(Exception):
    """An answer other than a result, raised inside the call path and rendered once, in the API's shape.

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

    def response(self, shape: ErrorShape = ErrorShape.OPENAI) -> Response:
        """The HTTP response in ``shape``."""
        return error_response(self.status, self.message, type_=self.type_, code=self.code, param=self.param,
                              headers=self.headers, shape=shape)


def _anthropic_type(status: int, type_: str) -> str:
    if type_ == "insufficient_quota":
        return "billing_error"
    return _ANTHROPIC_TYPES.get(status, "api_error")


def error_response(status: int, message: str, *, type_: str, code: str, param: str | None = None,
                   headers: dict[str, str] | None = None, extra: dict[str, Any] | None = None,
                   shape: ErrorShape = ErrorShape.OPENAI, retry: bool | None = None) -> Response:
    """A JSON error response in ``shape`` with its retry headers (see the module table).

    Args:
        extra: fields added beside ``message`` (a refusal's rule, scope, evidence).
        retry: False adds ``x-should-retry: false``; None decides by status (4xx without
            ``Retry-After``: false; 5xx: the client's default).
    """
    headers = dict(headers or {})
    if retry is None:
        retry = None if status >= 500 or "Retry-After" in headers else False
    if retry is False:
        headers["x-should-retry"] = "false"
    if shape is ErrorShape.ANTHROPIC:
        body: dict[str, Any] = {"type": "error", "error": {"type": _anthropic_type(status, type_),
                                                            "message": message, "code": code, "param": param,
                                                            **(extra or {})}}
    else:
        body = {"error": {"message": message, "type": type_, "param": param, "code": code, **(extra or {})}}
    return Response(json.dumps(body, separators=(",", ":")), status_code=status, media_type="application/json",
                    headers=headers)


def verdict_response(verdict: Verdict, shape: ErrorShape = ErrorShape.OPENAI) -> Response:
    """The 429 (503 for the kill switch) a refusal answers, typed and with its retry headers.

    The body carries the verdict's ``rule``, ``detector``, ``scope`` and ``evidence``
    beside the standard fields, so a client can show limit, used and remaining.
    """
    status = 503 if verdict.code is Code.KILL_SWITCH else 429
    headers = {}
    wait_s = None if verdict.retry_after_s is None else max(1, math.ceil(verdict.retry_after_s))
    if wait_s is not None:
        headers["Retry-After"] = str(wait_s)
    retry = None if wait_s is not None and wait_s <= RETRY_HORIZON_S and verdict.code is not Code.KILL_SWITCH \
        else False
    extra = {"rule": str(verdict.rule), "detector": verdict.detector, "scope": verdict.scope,
             "evidence": dict(verdict.evidence)}
    type_ = "insufficient_quota" if verdict.code in _QUOTA else str(verdict.code)
    return error_response(status, verdict.message, type_=type_, code=str(verdict.code),
                          param=None if verdict.level is None else str(verdict.level), headers=headers,
                          extra=extra, shape=shape, retry=retry)
