"""The request decoder (orjson first, json for what orjson refuses) gives exactly what json gives, or a named 400."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from comptroller.gateway.apis.request_body import DEPTH_MAX, loads_object
from comptroller.gateway.errors import GatewayError

_SCALARS = (st.none() | st.booleans() | st.integers(min_value=-(2**80), max_value=2**80)
            | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=12))
_VALUES = st.recursive(_SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6),
                                                                                            inner, max_size=4),
                       max_leaves=20)


@settings(max_examples=300, deadline=None)
@given(body=st.dictionaries(st.text(max_size=8), _VALUES, max_size=5), ascii_only=st.booleans())
@example(body={"": -(2**63) - 1}, ascii_only=False)  # 19 digits below int64: orjson reads it as a float
@example(body={"": -(2**63), "b": 2**63, "c": 2**64 - 1, "d": 2**64}, ascii_only=False)
def test_json_objects_decode_as_json_decodes_them(body: dict[str, Any], ascii_only: bool) -> None:
    """Any JSON object (big integers, floats, non-ASCII text included) decodes to json's value, with its types."""
    raw = json.dumps(body, ensure_ascii=ascii_only).encode("utf-8")
    decoded, expected = loads_object(raw), json.loads(raw)
    assert decoded == expected
    assert json.dumps(decoded, sort_keys=True) == json.dumps(expected, sort_keys=True)  # int stays int, float float


@pytest.mark.parametrize("raw", [b'{"a": 1e400}', b'{"a": "\\ud800"}', b'{"a": 123456789012345678901234567890}'])
def test_bodies_orjson_refuses_but_json_reads_decode_as_json_does(raw: bytes) -> None:
    """A number beyond a double, a lone surrogate escape and a 30-digit integer decode as json decodes them."""
    assert repr(loads_object(raw)) == repr(json.loads(raw))


@pytest.mark.parametrize(("raw", "code", "names"), [
    (b'{"a": NaN}', "invalid_json", "NaN"), (b'{"a": -Infinity}', "invalid_json", "-Infinity"),
    (b'\xef\xbb\xbf{}', "invalid_json", "BOM"), (b'{"a": "\xff"}', "invalid_encoding", "UTF-8"),
    (b'[1]', "invalid_json", "list"), (b'"x"', "invalid_json", "str"), (b'{"a": 1,}', "invalid_json", "line 1"),
    (b'', "invalid_json", "line 1"),
    (b'{"a": ' + b"[" * DEPTH_MAX + b"]" * DEPTH_MAX + b"}", "invalid_json", f"deeper than {DEPTH_MAX}"),
    (b"[" * 5000 + b"]" * 5000, "invalid_json", f"deeper than {DEPTH_MAX}"),
])
def test_bad_bodies_are_a_400_naming_the_problem(raw: bytes, code: str, names: str) -> None:
    """Bodies that are not one strict JSON object nested at most DEPTH_MAX deep are a 400 naming what is wrong."""
    with pytest.raises(GatewayError) as caught:
        loads_object(raw)
    assert (caught.value.status, caught.value.code) == (400, code)
    assert names in caught.value.message


def test_a_big_integer_is_kept_exact() -> None:
    """An integer beyond 64 bits is decoded as that integer (orjson alone would make it a float)."""
    value = 2**70 + 1
    assert loads_object(json.dumps({"seed": value}).encode())["seed"] == value
