"""Standard Webhooks signatures: ours verify with the reference library and the reference's verify with ours."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta

import pytest
import standardwebhooks
from hypothesis import given
from hypothesis import strategies as st

from comptroller.notify import SignatureError, generate_secret, verify_signature
from comptroller.notify.signing import decode_secret, signature_headers

SECRET = generate_secret()
NOW = datetime(2026, 11, 21, 16, 0, tzinfo=UTC)
NOW_S = int(NOW.timestamp())


def test_our_signature_verifies_with_the_reference_library() -> None:
    """A body we sign passes standardwebhooks.Webhook.verify (which checks against the real clock)."""
    body = b'{"type":"comptroller.events","data":{"events":[]}}'
    now_s = int(datetime.now(UTC).timestamp())
    headers = signature_headers(decode_secret(SECRET), "msg_1", now_s, body)
    assert standardwebhooks.Webhook(SECRET).verify(body, headers) == {"type": "comptroller.events",
                                                                      "data": {"events": []}}


def test_reference_signature_verifies_with_ours() -> None:
    """A signature made by standardwebhooks.Webhook.sign passes verify_signature."""
    body = '{"a":1}'
    signature = standardwebhooks.Webhook(SECRET).sign("msg_2", NOW, body)
    headers = {"Webhook-Id": "msg_2", "Webhook-Timestamp": str(NOW_S), "Webhook-Signature": signature}
    verify_signature(SECRET, headers, body.encode(), now=NOW)


@given(body=st.binary(max_size=512), msg_id=st.text(alphabet="abcdef0123456789_", min_size=1, max_size=40),
       flip=st.integers(min_value=0))
def test_any_changed_byte_fails_verification(body: bytes, msg_id: str, flip: int) -> None:
    """A signed body verifies as sent, and fails once any one byte of it changes."""
    headers = signature_headers(decode_secret(SECRET), msg_id, NOW_S, body)
    verify_signature(SECRET, headers, body, now=NOW)
    if body:
        index = flip % len(body)
        tampered = body[:index] + bytes([body[index] ^ 0x01]) + body[index + 1:]
        with pytest.raises(SignatureError, match="no v1 signature"):
            verify_signature(SECRET, headers, tampered, now=NOW)


def test_wrong_secret_and_changed_id_fail() -> None:
    """Another secret, or a webhook-id not the one signed, does not verify."""
    headers = signature_headers(decode_secret(SECRET), "msg_3", NOW_S, b"{}")
    with pytest.raises(SignatureError):
        verify_signature(generate_secret(), headers, b"{}", now=NOW)
    with pytest.raises(SignatureError):
        verify_signature(SECRET, {**headers, "webhook-id": "msg_4"}, b"{}", now=NOW)


def test_timestamp_outside_tolerance_fails() -> None:
    """A timestamp more than tolerance_s from now is refused in both directions; within it passes."""
    headers = signature_headers(decode_secret(SECRET), "msg_5", NOW_S, b"{}")
    verify_signature(SECRET, headers, b"{}", now=NOW + timedelta(seconds=300))
    for skew_s in (301, -301):
        with pytest.raises(SignatureError, match="tolerance"):
            verify_signature(SECRET, headers, b"{}", now=NOW + timedelta(seconds=skew_s))


def test_any_of_several_signatures_may_match() -> None:
    """During key rotation the header lists several signatures; one match suffices, v1a ones are ignored."""
    old = generate_secret()
    mine = signature_headers(decode_secret(SECRET), "msg_6", NOW_S, b"{}")["webhook-signature"]
    theirs = signature_headers(decode_secret(old), "msg_6", NOW_S, b"{}")["webhook-signature"]
    headers = {"webhook-id": "msg_6", "webhook-timestamp": str(NOW_S),
               "webhook-signature": f"v1a,{mine[3:]} {theirs} {mine}"}
    verify_signature(SECRET, headers, b"{}", now=NOW)
    headers["webhook-signature"] = f"v1a,{mine[3:]} {theirs}"
    with pytest.raises(SignatureError):
        verify_signature(SECRET, headers, b"{}", now=NOW)


@pytest.mark.parametrize("missing", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_missing_header_is_named(missing: str) -> None:
    """A request without one of the three headers fails with that header's name."""
    headers = signature_headers(decode_secret(SECRET), "msg_7", NOW_S, b"{}")
    del headers[missing]
    with pytest.raises(SignatureError, match=missing):
        verify_signature(SECRET, headers, b"{}", now=NOW)


def test_malformed_timestamp_is_named() -> None:
    """A non-integer webhook-timestamp fails with a message saying what it must be."""
    headers = signature_headers(decode_secret(SECRET), "msg_8", NOW_S, b"{}")
    with pytest.raises(SignatureError, match="integer Unix seconds"):
        verify_signature(SECRET, {**headers, "webhook-timestamp": "yesterday"}, b"{}", now=NOW)


@pytest.mark.parametrize(("secret", "message"), [
    ("whsec_not base64!", "followed by base64"),
    ("whsec_" + base64.b64encode(b"short").decode(), "24 to 64 bytes"),
    ("whsec_" + base64.b64encode(bytes(65)).decode(), "24 to 64 bytes"),
])
def test_bad_secret_says_how_to_make_one(secret: str, message: str) -> None:
    """An invalid secret is refused with what is wrong and the command that makes a valid one."""
    with pytest.raises(ValueError, match=message) as info:
        decode_secret(secret)
    assert "generate_secret()" in str(info.value)


def test_generated_secrets_decode_to_their_length() -> None:
    """generate_secret(n) yields whsec_ + base64 of n random bytes; two are never equal."""
    first, second = generate_secret(24), generate_secret(24)
    assert first.startswith("whsec_") and first != second
    assert len(decode_secret(first)) == 24
    with pytest.raises(ValueError, match="24 to 64"):
        generate_secret(16)
