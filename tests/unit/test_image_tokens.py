"""Image sizes read from base64 headers, and the documented per-image token rules."""

from __future__ import annotations

import base64
import math
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from comptroller.domain.image_tokens import anthropic_image_tokens_max, image_size_px, openai_image_tokens_max


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def png(width: int, height: int) -> bytes:
    return (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + struct.pack(">II", width, height)
            + b"\x08\x02\0\0\0")


def gif(width: int, height: int) -> bytes:
    return b"GIF89a" + struct.pack("<HH", width, height) + b"\0\0\0"


def webp_vp8x(width: int, height: int) -> bytes:
    return (b"RIFF" + b"\0" * 4 + b"WEBP" + b"VP8X" + struct.pack("<I", 10) + b"\0" * 4
            + (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little"))


def webp_vp8l(width: int, height: int) -> bytes:
    bits = (width - 1) | ((height - 1) << 14)
    return (b"RIFF" + b"\0" * 4 + b"WEBP" + b"VP8L" + struct.pack("<I", 10) + b"\x2f" + bits.to_bytes(4, "little")
            + b"\0" * 5)


def webp_vp8(width: int, height: int) -> bytes:
    return (b"RIFF" + b"\0" * 4 + b"WEBP" + b"VP8 " + struct.pack("<I", 10) + b"\0\0\0" + b"\x9d\x01\x2a"
            + struct.pack("<HH", width, height))


def jpeg(width: int, height: int) -> bytes:
    app0 = b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\0" + b"\0" * 9
    sof0 = b"\xff\xc0" + struct.pack(">H", 17) + b"\x08" + struct.pack(">HH", height, width) + b"\x03" + b"\0" * 9
    return b"\xff\xd8" + app0 + sof0 + b"\xff\xd9"


@pytest.mark.parametrize("encode", [png, gif, webp_vp8x, webp_vp8l, webp_vp8, jpeg])
@pytest.mark.parametrize(("width", "height"), [(1, 1), (640, 480), (3000, 2000), (16383, 7)])
def test_sizes_are_read_from_each_format_header(encode: object, width: int, height: int) -> None:
    """PNG, GIF, WebP (VP8X, VP8L, VP8) and JPEG headers give back the size they were written with."""
    raw = encode(width, height)  # type: ignore[operator]
    assert image_size_px(_b64(raw)) == (width, height)
    assert image_size_px("data:image/x;base64," + _b64(raw)) == (width, height)


@pytest.mark.parametrize("data", ["", "not base64 at all ***", _b64(b"plain bytes, no image"), "é",
                                  _b64(b"\xff\xd8\xff")])
def test_unreadable_data_has_no_size(data: str) -> None:
    """Bytes that are no known image header give None, which callers bound at the rule's maximum."""
    assert image_size_px(data) is None


@given(st.integers(1, 20_000), st.integers(1, 20_000))
def test_a_known_size_never_exceeds_the_unknown_size_maximum(width: int, height: int) -> None:
    """For every rule, an image of any size is bounded by the rule's maximum for an unknown size."""
    for model in ("gpt-4o", "gpt-4o-mini", "o1", "gpt-4.1-mini", "unknown-model"):
        for detail in ("low", "high"):
            assert (openai_image_tokens_max(model, detail=detail, size=(width, height))
                    <= openai_image_tokens_max(model, detail=detail, size=None))
    assert anthropic_image_tokens_max((width, height)) <= anthropic_image_tokens_max(None)


@given(st.integers(1, 2576), st.integers(1, 2576))
def test_anthropic_bound_covers_both_documented_formulas(width: int, height: int) -> None:
    """Within 2576 px, the bound is at least w*h/750 and at least one token per 28 px patch."""
    bound = anthropic_image_tokens_max((width, height))
    assert bound >= math.ceil(width * height / 750)
    assert bound >= math.ceil(width / 28) * math.ceil(height / 28)


def test_openai_high_detail_is_at_least_low_detail() -> None:
    """The high-detail bound of a tile model is never below its low-detail (base) cost."""
    for size in [(1, 1), (512, 512), (4096, 8192), None]:
        assert (openai_image_tokens_max("gpt-4o", detail="high", size=size)
                >= openai_image_tokens_max("gpt-4o", detail="low", size=size) == 85)
