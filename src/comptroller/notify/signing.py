"""Webhook signatures per the Standard Webhooks specification (https://www.standardwebhooks.com/).

Every request carries three headers:

- ``webhook-id``: the message id (``msg_...``), the same on every retry of one batch,
  so a receiver can drop duplicates;
- ``webhook-timestamp``: integer Unix seconds (UTC) of this attempt;
- ``webhook-signature``: ``v1,<base64(HMAC-SHA256(key, f"{id}.{timestamp}.{body}"))>``;
  the spec allows several space-separated signatures (key rotation).

The secret is written ``whsec_<base64 of 24 to 64 random bytes>``; the HMAC key is the
decoded bytes (the spec's "Signature scheme" and "Secret" sections). Make one with
:func:`generate_secret`.

Receiver side::

    from comptroller.notify import SignatureError, verify_signature

    try:
        verify_signature(secret, request.headers, raw_body)   # raw bytes, before JSON parsing
    except SignatureError as exc:
        return 400, str(exc)
    events = json.loads(raw_body)["data"]["events"]
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from collections.abc import Mapping
from datetime import datetime

from comptroller.clock import SystemClock

__all__ = [
    "SECRET_PREFIX",
    "SignatureError",
    "decode_secret",
    "generate_secret",
    "sign",
    "signature_headers",
    "verify_signature",
]

SECRET_PREFIX = "whsec_"
_KEY_BYTES_MIN, _KEY_BYTES_MAX = 24, 64
_TOLERANCE_S = 300.0


class SignatureError(ValueError):
    """A webhook request failed verification: a header missing or malformed, a stale timestamp, no match."""


def generate_secret(key_bytes: int = 32) -> str:
    """A fresh secret ``whsec_<base64>`` of ``key_bytes`` random bytes (24 to 64)."""
    if not _KEY_BYTES_MIN <= key_bytes <= _KEY_BYTES_MAX:
        raise ValueError(f"key_bytes must be {_KEY_BYTES_MIN} to {_KEY_BYTES_MAX}, got {key_bytes}")
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(key_bytes)).decode("ascii")


def decode_secret(secret: str) -> bytes:
    """The HMAC key of a ``whsec_<base64>`` secret (the prefix is optional).

    Raises:
        ValueError: the text after the prefix is not base64, or decodes to fewer than 24
            or more than 64 bytes; the message says how to make a valid secret.
    """
    encoded = secret.removeprefix(SECRET_PREFIX).strip()
    hint = "make one with: python -c 'from comptroller.notify import generate_secret; print(generate_secret())'"
    try:
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"webhook secret must be 'whsec_' followed by base64; {hint}") from None
    if not _KEY_BYTES_MIN <= len(key) <= _KEY_BYTES_MAX:
        raise ValueError(f"webhook secret must decode to {_KEY_BYTES_MIN} to {_KEY_BYTES_MAX} bytes, "
                         f"got {len(key)}; {hint}")
    return key


def sign(key: bytes, msg_id: str, timestamp_s: int, body: bytes) -> str:
    """The ``v1,<base64>`` signature of ``body`` for message ``msg_id`` at ``timestamp_s`` (Unix seconds)."""
    digest = hmac.new(key, f"{msg_id}.{timestamp_s}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def signature_headers(key: bytes, msg_id: str, timestamp_s: int, body: bytes) -> dict[str, str]:
    """The three Standard Webhooks headers for one attempt."""
    return {"webhook-id": msg_id, "webhook-timestamp": str(timestamp_s),
            "webhook-signature": sign(key, msg_id, timestamp_s, body)}


def _header(headers: Mapping[str, str], name: str) -> str:
    for key, value in headers.items():
        if key.lower() == name:
            return value
    raise SignatureError(f"missing header {name!r}")


def verify_signature(secret: str, headers: Mapping[str, str], body: bytes, *,
                     tolerance_s: float = _TOLERANCE_S, now: datetime | None = None) -> None:
    """Check a received webhook: headers present, timestamp fresh, one ``v1`` signature matching.

    Args:
        secret: the shared secret, ``whsec_<base64>``.
        headers: the request headers (names in any case).
        body: the raw request body bytes, exactly as received.
        tolerance_s: how far the timestamp may be from ``now``, seconds (default 300,
            as the spec's reference libraries; it bounds replay of a captured request).
        now: the receiver's current time, aware UTC (default: the system clock).

    Raises:
        SignatureError: a header is missing or malformed, the timestamp is outside the
            tolerance, or no signature matches (constant-time comparison).
        ValueError: ``secret`` is not a valid secret (see :func:`decode_secret`).
    """
    key = decode_secret(secret)
    msg_id, stamp = _header(headers, "webhook-id"), _header(headers, "webhook-timestamp")
    signatures = _header(headers, "webhook-signature")
    try:
        timestamp_s = int(stamp)
    except ValueError:
        raise SignatureError(f"webhook-timestamp must be integer Unix seconds, got {stamp!r}") from None
    now_s = (now or SystemClock().now()).timestamp()
    if abs(now_s - timestamp_s) > tolerance_s:
        raise SignatureError(f"webhook-timestamp {timestamp_s} is {now_s - timestamp_s:+.0f} s from now, "
                             f"outside the {tolerance_s:.0f} s tolerance (replayed, or clocks skewed)")
    expected = sign(key, msg_id, timestamp_s, body).encode("ascii")
    if not any(hmac.compare_digest(expected, candidate.encode("ascii", "replace"))
               for candidate in signatures.split() if candidate.startswith("v1,")):
        raise SignatureError("no v1 signature in webhook-signature matches the body")
