"""Upper bounds on the input tokens of one image, by the providers' documented rules.

OpenAI (guide "Images and vision", section "Calculating costs"):

* tile models (gpt-4o, gpt-4.1, gpt-4.5, gpt-5, o-series): ``detail: low`` costs the base
  tokens; ``high``/``auto`` scales the image to fit 2048x2048, then so that its shortest side
  is 768 px, and costs base + tile x (number of 512 px tiles). Base/tile: 85/170 for gpt-4o
  and most models, 75/150 for o1/o3, 65/129 for computer-use-preview and gpt-image-1, and
  2833/5667 for gpt-4o-mini (its image "multiplier": images cost the same dollars as on gpt-4o).
  After the two scalings the image is at most 768 x 2048, so at most 2 x 4 = 8 tiles.
* patch models (gpt-4.1-mini, gpt-4.1-nano, o4-mini, gpt-5-mini, gpt-5-nano): 32 px patches,
  capped at 1536 (larger images are scaled down), times a multiplier (1.62, 2.46, 1.72).
  Another ``-mini``/``-nano`` model of a tile family is treated as unknown (it may be priced by patches).

Anthropic (docs "Images and vision"): an image costs about ``width * height / 750`` tokens,
or, in the current wording, one visual token per 28 x 28 px patch, ``ceil(w/28) * ceil(h/28)``,
after resizing to the model's maximal native resolution (1568 px on the long edge; 2576 px for
Claude Opus 4.7). The bound here is the larger of both formulas at a 2576 px long edge.

An image whose size is unknown (a URL, a file id, undecodable bytes) gets the rule's maximum.
A model no rule names gets the largest maximum of all OpenAI rules (fail closed).
"""

from __future__ import annotations

import base64
import binascii
import math
import struct
from fractions import Fraction

__all__ = ["ANTHROPIC_LONG_EDGE_PX_MAX", "anthropic_image_tokens_max", "image_size_px",
           "openai_image_tokens_max"]

# (model prefix, base tokens, tokens per 512 px tile); the first matching prefix wins.
_TILE_RULES: tuple[tuple[str, int, int], ...] = (
    ("gpt-4o-mini", 2833, 5667),
    ("computer-use-preview", 65, 129),
    ("gpt-image-1", 65, 129),
    ("o1", 75, 150),
    ("o3", 75, 150),
)
# (model prefix, multiplier per 32 px patch); checked before the tile rules.
_PATCH_RULES: tuple[tuple[str, Fraction], ...] = (
    ("gpt-4.1-mini", Fraction("1.62")),
    ("gpt-4.1-nano", Fraction("2.46")),
    ("gpt-5-mini", Fraction("1.62")),
    ("gpt-5-nano", Fraction("2.46")),
    ("o4-mini", Fraction("1.72")),
)
# Families documented with the default 85/170 tile rule.
_DEFAULT_TILE_PREFIXES = ("gpt-4o", "chatgpt-4o", "gpt-4.1", "gpt-4.5", "gpt-4-turbo", "gpt-4-vision", "gpt-5")
_DEFAULT_TILE = (85, 170)
# Small variants OpenAI has priced by patches: a new one no rule names (gpt-5.1-mini...) is unknown,
# so it gets the largest bound rather than the default tile rule.
_PATCH_TAGS = ("mini", "nano")
_TILES_MAX = 8  # 768 x 2048 after the two documented scalings: 2 x 4 tiles
_PATCHES_MAX = 1536
ANTHROPIC_LONG_EDGE_PX_MAX = 2576
_ANTHROPIC_PATCH_PX = 28


def _tile_tokens(base: int, tile: int, detail: str, size: tuple[int, int] | None) -> int:
    if detail == "low":
        return base
    if size is None:
        return base + tile * _TILES_MAX
    return base + tile * _tiles(*size)


def _tiles(width: int, height: int) -> int:
    w, h = Fraction(width), Fraction(height)
    if max(w, h) > 2048:
        scale = Fraction(2048) / max(w, h)
        w, h = w * scale, h * scale
    # The guide scales the shortest side to 768; whether it ever scales up is not stated, so
    # take the larger tile count of "scaled to 768" and "left as is" (at most 768 x 2048 both ways).
    scale = Fraction(768) / min(w, h)
    counts = [math.ceil(w * scale / 512) * math.ceil(h * scale / 512)]
    if min(w, h) <= 768:
        counts.append(math.ceil(w / 512) * math.ceil(h / 512))
    return min(max(counts), _TILES_MAX)


def _patch_tokens(multiplier: Fraction, size: tuple[int, int] | None) -> int:
    patches = _PATCHES_MAX if size is None else min(math.ceil(size[0] / 32) * math.ceil(size[1] / 32), _PATCHES_MAX)
    return math.ceil(patches * multiplier)


def openai_image_tokens_max(model: str, *, detail: str, size: tuple[int, int] | None) -> int:
    """An upper bound on the input tokens OpenAI bills for one image.

    Args:
        model: the requested model (a ``provider/`` prefix is ignored).
        detail: the part's ``detail`` (``low``, ``high``, ``auto``; anything but ``low`` is
            bounded as ``high``).
        size: (width, height) in pixels, or None when unknown (URL or file id).

    Returns:
        Tokens, by the rule of the model's family (module docstring); for a model no rule
        names, the largest bound of all rules.
    """
    name = model.rsplit("/", 1)[-1].lower()
    for prefix, multiplier in _PATCH_RULES:
        if name.startswith(prefix):
            return _patch_tokens(multiplier, size)
    for prefix, base, tile in _TILE_RULES:
        if name.startswith(prefix):
            return _tile_tokens(base, tile, detail, size)
    if name.startswith(_DEFAULT_TILE_PREFIXES) and not any(tag in name for tag in _PATCH_TAGS):
        return _tile_tokens(*_DEFAULT_TILE, detail, size)
    bounds = [_patch_tokens(m, size) for _, m in _PATCH_RULES]
    bounds += [_tile_tokens(b, t, detail, size) for _, b, t in _TILE_RULES]
    bounds.append(_tile_tokens(*_DEFAULT_TILE, detail, size))
    return max(bounds)


def anthropic_image_tokens_max(size: tuple[int, int] | None) -> int:
    """An upper bound on the input tokens Anthropic bills for one image.

    Args:
        size: (width, height) in pixels, or None when unknown (URL or file id).

    Returns:
        ``max(ceil(w*h/750), ceil(w/28)*ceil(h/28))`` after scaling the long edge down to
        2576 px (the largest native resolution of any Claude model); an unknown size is
        bounded as a 2576 x 2576 image.
    """
    width, height = size if size is not None else (ANTHROPIC_LONG_EDGE_PX_MAX, ANTHROPIC_LONG_EDGE_PX_MAX)
    w, h = Fraction(width), Fraction(height)
    if max(w, h) > ANTHROPIC_LONG_EDGE_PX_MAX:
        scale = Fraction(ANTHROPIC_LONG_EDGE_PX_MAX) / max(w, h)
        w, h = w * scale, h * scale
    patches = math.ceil(w / _ANTHROPIC_PATCH_PX) * math.ceil(h / _ANTHROPIC_PATCH_PX)
    return max(math.ceil(w * h / 750), patches)


def image_size_px(data: str) -> tuple[int, int] | None:
    """The (width, height) of a base64 image (optionally a ``data:`` URL), or None if unknown.

    Reads the PNG, GIF, WebP and JPEG headers; anything else (or bad base64) is None, which
    callers bound by the rule's maximum.
    """
    if data.startswith("data:"):
        data = data.partition(",")[2]
    try:
        raw = base64.b64decode(data, validate=False)
    except (binascii.Error, ValueError):
        return None
    size = _png(raw) or _gif(raw) or _webp(raw) or _jpeg(raw)
    return size if size is not None and size[0] > 0 and size[1] > 0 else None


def _png(raw: bytes) -> tuple[int, int] | None:
    if raw[:8] == b"\x89PNG\r\n\x1a\n" and raw[12:16] == b"IHDR" and len(raw) >= 24:
        width, height = struct.unpack(">II", raw[16:24])
        return int(width), int(height)
    return None


def _gif(raw: bytes) -> tuple[int, int] | None:
    if raw[:6] in (b"GIF87a", b"GIF89a") and len(raw) >= 10:
        width, height = struct.unpack("<HH", raw[6:10])
        return int(width), int(height)
    return None


def _webp(raw: bytes) -> tuple[int, int] | None:
    if raw[:4] != b"RIFF" or raw[8:12] != b"WEBP" or len(raw) < 30:
        return None
    chunk = raw[12:16]
    if chunk == b"VP8X":
        return 1 + int.from_bytes(raw[24:27], "little"), 1 + int.from_bytes(raw[27:30], "little")
    if chunk == b"VP8L":
        bits = int.from_bytes(raw[21:25], "little")
        return 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF)
    if chunk == b"VP8 ":
        width, height = struct.unpack("<HH", raw[26:30])
        return int(width) & 0x3FFF, int(height) & 0x3FFF
    return None


def _jpeg(raw: bytes) -> tuple[int, int] | None:
    if raw[:2] != b"\xff\xd8":
        return None
    i = 2
    while i + 9 < len(raw):
        if raw[i] != 0xFF:
            return None
        marker = raw[i + 1]
        if marker == 0xFF:
            i += 1
            continue
        length = int.from_bytes(raw[i + 2:i + 4], "big")
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            height, width = struct.unpack(">HH", raw[i + 5:i + 9])
            return int(width), int(height)
        i += 2 + length
    return None
