"""Money conversions and the Usage record: rounding rules and validation errors."""

from __future__ import annotations

import math
from decimal import Decimal

import pytest

from comptroller.domain.money import MC_PER_USD, format_usd, mc_to_usd, usd_to_mc_ceil, usd_to_mc_half_up
from comptroller.domain.usage import (
    Usage,
    UsageError,
    from_anthropic,
    from_anthropic_usage,
    from_openai,
    from_openai_usage,
    from_responses_usage,
)

# --- money ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("usd", ["0", "0.00001", "0.000004", "0.000005", "0.0000051", "0.000015", "0.000025",
                                 "1.234567", "2.5"])
def test_usd_conversions_round_as_named(usd: str) -> None:
    """usd_to_mc_ceil rounds toward +inf; usd_to_mc_half_up rounds to nearest with .5 going up (not to even)."""
    exact = Decimal(usd) * MC_PER_USD
    assert usd_to_mc_ceil(Decimal(usd)) == math.ceil(exact)
    assert usd_to_mc_half_up(Decimal(usd)) == math.floor(exact + Decimal("0.5"))


def test_one_dollar_is_100000_millicents() -> None:
    """1 USD converts to 100,000 mc and back."""
    assert usd_to_mc_ceil(Decimal(1)) == MC_PER_USD == usd_to_mc_half_up(Decimal(1))
    assert mc_to_usd(MC_PER_USD) == Decimal(1)


@pytest.mark.parametrize("bad", [Decimal("-0.00001"), Decimal("NaN"), Decimal("Infinity"), Decimal("-Infinity")])
@pytest.mark.parametrize("convert", [usd_to_mc_ceil, usd_to_mc_half_up])
def test_conversions_reject_negative_and_non_finite(bad: Decimal, convert: object) -> None:
    """A negative, NaN or infinite USD amount is a ValueError, never a silent integer."""
    with pytest.raises(ValueError, match="finite and >= 0"):
        convert(bad)  # type: ignore[operator]


@pytest.mark.parametrize("mc", [0, 1, 2_423, 100_000, 123_456_789, -2_423])
def test_format_usd_shows_five_decimals(mc: int) -> None:
    """format_usd renders the exact amount with a $ sign and 5 decimals, minus sign in front."""
    text = format_usd(mc)
    assert text.startswith("-$" if mc < 0 else "$")
    assert Decimal(text.replace("$", "")) * MC_PER_USD == mc
    assert len(text.split(".")[1]) == 5


# --- usage ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("field", ["input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens",
                                   "cache_write_1h_tokens"])
@pytest.mark.parametrize("bad", [-1, 1.0, "3", None, True])
def test_usage_rejects_negative_and_non_integer_counts(field: str, bad: object) -> None:
    """Every count must be a non-negative int (not float, str, None or bool); the error names the field."""
    counts: dict[str, object] = {"input_tokens": 10, "output_tokens": 5, field: bad}
    with pytest.raises(UsageError, match=field):
        Usage(**counts)  # type: ignore[arg-type]


def test_usage_rejects_cache_parts_exceeding_the_input() -> None:
    """Cache reads plus writes above input_tokens is an error that points to from_anthropic."""
    with pytest.raises(UsageError, match="exceed input_tokens") as info:
        Usage(input_tokens=10, output_tokens=0, cache_read_tokens=6, cache_write_tokens=5)
    assert "from_anthropic" in str(info.value)


def test_usage_rejects_1h_writes_exceeding_writes() -> None:
    """1-hour cache writes are part of cache writes, so they cannot exceed them."""
    with pytest.raises(UsageError, match="cache_write_1h_tokens"):
        Usage(input_tokens=10, output_tokens=0, cache_write_tokens=2, cache_write_1h_tokens=3)


def test_usage_splits_input_into_disjoint_buckets() -> None:
    """Uncached input, reads, 5-minute and 1-hour writes add up to input_tokens."""
    usage = Usage(input_tokens=100, output_tokens=1, cache_read_tokens=30, cache_write_tokens=20,
                  cache_write_1h_tokens=5)
    assert usage.uncached_input_tokens == 100 - 30 - 20
    assert usage.cache_write_5m_tokens == 20 - 5
    assert (usage.uncached_input_tokens + usage.cache_read_tokens + usage.cache_write_5m_tokens
            + usage.cache_write_1h_tokens) == usage.input_tokens


def test_from_openai_keeps_cached_tokens_inside_the_prompt() -> None:
    """OpenAI's prompt_tokens already include cached tokens, so input_tokens is prompt_tokens."""
    usage = from_openai(prompt_tokens=1_000, completion_tokens=50, cached_tokens=400)
    assert (usage.input_tokens, usage.cache_read_tokens, usage.output_tokens) == (1_000, 400, 50)


def test_from_openai_rejects_more_cached_than_prompt_tokens() -> None:
    """More cached tokens than prompt tokens cannot be an OpenAI usage."""
    with pytest.raises(UsageError):
        from_openai(prompt_tokens=10, completion_tokens=0, cached_tokens=11)


def test_from_anthropic_adds_cache_tokens_to_the_input() -> None:
    """Anthropic's input_tokens exclude cache reads and writes, so they are added back."""
    usage = from_anthropic(input_tokens=100, output_tokens=7, cache_read_input_tokens=300,
                           cache_creation_input_tokens=50, ephemeral_1h_input_tokens=20)
    assert usage == Usage(input_tokens=100 + 300 + 50, output_tokens=7, cache_read_tokens=300,
                          cache_write_tokens=50, cache_write_1h_tokens=20)


@pytest.mark.parametrize("field", ["input_tokens", "cache_read_input_tokens", "cache_creation_input_tokens"])
@pytest.mark.parametrize("bad", [-1, "7", 2.0])
def test_from_anthropic_rejects_bad_counts_by_their_anthropic_name(field: str, bad: object) -> None:
    """A bad Anthropic count is a UsageError naming the Anthropic field, not a TypeError from adding."""
    counts: dict[str, object] = {"input_tokens": 1, "output_tokens": 1, field: bad}
    with pytest.raises(UsageError, match=field):
        from_anthropic(**counts)  # type: ignore[arg-type]


@pytest.mark.parametrize(("value", "expected"), [
    ({"prompt_tokens": 120, "completion_tokens": 30}, Usage(input_tokens=120, output_tokens=30)),
    ({"prompt_tokens": 120, "completion_tokens": 30, "prompt_tokens_details": {"cached_tokens": 100}},
     Usage(input_tokens=120, output_tokens=30, cache_read_tokens=100)),
    ({"prompt_tokens": 120}, None),
    ({"prompt_tokens": "120", "completion_tokens": 30}, None),
    ({"prompt_tokens": -1, "completion_tokens": 30}, None),
    (None, None),
    ("usage", None),
])
def test_openai_usage_objects_parse_or_answer_unknown(value: object, expected: Usage | None) -> None:
    """A provider's usage object becomes Usage; anything missing or malformed is None (the edge charges the bound)."""
    assert from_openai_usage(value) == expected


def test_responses_usage_reads_cached_input_and_refuses_malformed_objects() -> None:
    """A Responses usage object maps input (cached inside), output (reasoning inside), cached tokens; bad ones: None."""
    usage = from_responses_usage({"input_tokens": 120, "output_tokens": 40,
                                  "input_tokens_details": {"cached_tokens": 100},
                                  "output_tokens_details": {"reasoning_tokens": 30}})
    assert usage == Usage(input_tokens=120, output_tokens=40, cache_read_tokens=100)
    for bad in (None, [], {"input_tokens": 1}, {"input_tokens": "1", "output_tokens": 2},
                {"input_tokens": 5, "output_tokens": 1, "input_tokens_details": {"cached_tokens": 9}}):
        assert from_responses_usage(bad) is None


def test_anthropic_usage_object_adds_cache_tokens_back_to_input() -> None:
    """An Anthropic usage object maps like from_anthropic (1-hour writes included); bad ones are None."""
    value = {"input_tokens": 10, "output_tokens": 7, "cache_read_input_tokens": 50,
             "cache_creation_input_tokens": 30, "cache_creation": {"ephemeral_1h_input_tokens": 20}}
    assert from_anthropic_usage(value) == from_anthropic(input_tokens=10, output_tokens=7, cache_read_input_tokens=50,
                                                         cache_creation_input_tokens=30, ephemeral_1h_input_tokens=20)
    for bad in (None, "x", {"input_tokens": 1}, {"input_tokens": None, "output_tokens": 1}):
        assert from_anthropic_usage(bad) is None
