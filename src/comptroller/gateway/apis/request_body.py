"""Reading a request body: a size limit, then strict JSON (RFC 8259 only) and a nesting limit.

:func:`read_body` refuses a body over ``[gateway] body_bytes_max`` before reading it all.

Python's ``json`` accepts ``Infinity``, ``-Infinity`` and ``NaN`` (not JSON: RFC 8259 section 6
has no such numbers) and would forward them upstream; its recursive decoder raises
``RecursionError`` on deep nesting. Here both are a 400 naming the problem, raised before
anything is reserved. No API the gateway serves needs more than a few levels (a JSON schema
in ``response_format`` or a tool's parameters is the deepest); :data:`DEPTH_MAX` leaves room.

A body is decoded by ``orjson`` (RFC 8259 only, UTF-8 checked, several times faster than
``json`` on the gateway's hot path: BENCHMARKS.md, "Gateway call profile"). A body ``orjson``
refuses goes through ``json`` with the checks above, which accepts what ``json`` always
accepted and names the problem; so does a body with an integer of 20 or more digits, which
``orjson`` would turn into a float (``json`` keeps it exact, and it is forwarded exactly).
"""

from __future__ import annotations

import json
from typing import Any

import orjson
from starlette.requests import Request

from comptroller.gateway.errors import GatewayError

__all__ = ["DEPTH_MAX", "loads_object", "read_body"]

DEPTH_MAX = 64
"""Arrays and objects nested deeper than this are refused."""


def _bad(message: str, code: str) -> GatewayError:
    return GatewayError(400, message, code=code)


def _no_constant(name: str) -> Any:
    raise _bad(f"the request body contains {name}, which is not JSON (RFC 8259 has no Infinity or NaN); "
               "send a finite number", "invalid_json")


def _depth_ok(value: Any) -> bool:
    """True when no array or object in ``value`` is nested deeper than :data:`DEPTH_MAX` (iterative)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > DEPTH_MAX:
            return False
        children = item.values() if isinstance(item, dict) else item
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return True


_DIGITS_AS_ZERO = bytes.maketrans(b"123456789", b"000000000")
_LONG_DIGITS = b"0" * 19
"""A run of digits that may be an integer beyond 64 bits, which orjson would read as a float: 19
digits already, since a negative one below -9,223,372,036,854,775,808 does not fit an int64 (a
body with such a run is decoded by ``json``); found with ``translate`` and a substring search,
several times faster than a regular expression."""


def loads_object(raw: bytes) -> dict[str, Any]:
    """Decode a request body: UTF-8, strict JSON, an object, nested at most :data:`DEPTH_MAX` deep.

    Raises:
        GatewayError: 400 ``invalid_encoding`` or ``invalid_json`` naming the problem.
    """
    if _LONG_DIGITS not in raw.translate(_DIGITS_AS_ZERO):
        try:
            fast = orjson.loads(raw)
        except (orjson.JSONDecodeError, RecursionError):
            pass  # named below by json
        else:
            if isinstance(fast, dict) and (raw.count(b"[") + raw.count(b"{") <= DEPTH_MAX or _depth_ok(fast)):
                return fast
    return _loads_checked(raw)


def _loads_checked(raw: bytes) -> dict[str, Any]:
    """:func:`loads_object` by ``json``, naming what is wrong with the body."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _bad(f"the request body is not valid UTF-8 (byte {exc.start}); send UTF-8 JSON",
                   "invalid_encoding") from None
    too_deep = _bad(f"the request body nests arrays or objects deeper than {DEPTH_MAX} levels; flatten it",
                    "invalid_json")
    try:
        body = json.loads(text, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        raise _bad(f"the request body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}",
                   "invalid_json") from None
    except RecursionError:
        raise too_deep from None
    if not isinstance(body, dict):
        raise _bad(f"the request body must be a JSON object, got {type(body).__name__}", "invalid_json")
    if text.count("[") + text.count("{") > DEPTH_MAX and not _depth_ok(body):  # the count: C speed
        raise too_deep
    return body


async def read_body(request: Request, limit_bytes: int) -> bytes:
    """The request body, refused with 400 once it passes ``limit_bytes``.

    Raises:
        GatewayError: 400 ``request_too_large``.
    """
    too_large = GatewayError(400, f"the request body is larger than the limit of {limit_bytes} bytes; "
                             "send less, or raise [gateway] body_bytes_max", code="request_too_large")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit_bytes:
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit_bytes:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)
