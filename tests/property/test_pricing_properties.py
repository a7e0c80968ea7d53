"""Properties of pricing and money: ceilings bound costs, rounding stays within its half millicent."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from comptroller.domain.money import mc_to_usd, usd_to_mc_ceil, usd_to_mc_half_up
from comptroller.domain.pricing import ModelPrice, Rate, TieredRate, ceiling_mc, cost_mc, cost_usd
from comptroller.domain.usage import Usage, from_anthropic, from_openai
from comptroller.prices import PriceBook

BOOK = PriceBook()
AT = datetime(2025, 6, 1, tzinfo=UTC)
REAL_MODELS = ["gpt-4o", "gpt-4o-mini", "claude-3-5-sonnet", "claude-sonnet-4-5", "gemini-2.5-pro",
               "gemini-2.5-flash", "o3", "gpt-3.5-turbo-16k"]

decimal_rates = st.decimals(min_value=0, max_value=200, places=4, allow_nan=False, allow_infinity=False)


@st.composite
def rates(draw: st.DrawFn) -> Rate:
    """A flat rate, or a tiered one with up to three tiers in any direction."""
    base = draw(decimal_rates)
    if draw(st.booleans()):
        return base
    starts = sorted(draw(st.sets(st.integers(0, 400_000), min_size=1, max_size=3)))
    return TieredRate(base, tuple((start, draw(decimal_rates)) for start in starts))


@st.composite
def prices(draw: st.DrawFn) -> ModelPrice:
    """A model price with optional cache rates; half the time a real genai-prices model."""
    if draw(st.booleans()):
        return BOOK.price(draw(st.sampled_from(REAL_MODELS)), AT)
    optional = st.none() | rates()
    return ModelPrice("drawn", input_mtok=draw(rates()), output_mtok=draw(rates()),
                      cache_read_mtok=draw(optional), cache_write_mtok=draw(optional),
                      cache_write_1h_mtok=draw(optional))


@st.composite
def bounds_and_usage(draw: st.DrawFn) -> tuple[int, int, Usage]:
    """Token bounds and a usage within them, split into cache buckets at random."""
    input_max = draw(st.integers(0, 1_200_000))
    output_max = draw(st.integers(0, 200_000))
    total = draw(st.integers(0, input_max))
    read = draw(st.integers(0, total))
    write = draw(st.integers(0, total - read))
    write_1h = draw(st.integers(0, write))
    usage = Usage(total, draw(st.integers(0, output_max)), read, write, write_1h)
    return input_max, output_max, usage


@given(price=prices(), case=bounds_and_usage())
def test_ceiling_bounds_the_cost_of_any_usage_within_its_bounds(price: ModelPrice,
                                                                case: tuple[int, int, Usage]) -> None:
    """cost_mc(usage) <= ceiling_mc for every usage whose input and output stay within the bounds."""
    input_max, output_max, usage = case
    assert cost_mc(price, usage) <= ceiling_mc(price, input_tokens_max=input_max, output_tokens_max=output_max)


@given(price=prices(), case=bounds_and_usage())
def test_cost_is_the_exact_cost_rounded_half_up(price: ModelPrice, case: tuple[int, int, Usage]) -> None:
    """The settled cost is within half a millicent of the exact Decimal cost, and .5 rounds up."""
    _, _, usage = case
    exact_mc = cost_usd(price, usage) * 100_000
    assert cost_mc(price, usage) == math.floor(exact_mc + Decimal("0.5"))


@given(uncached=st.integers(0, 10**7), cached=st.integers(0, 10**7), output=st.integers(0, 10**6))
def test_openai_and_anthropic_normalise_the_same_split_alike(uncached: int, cached: int, output: int) -> None:
    """For any real split, from_openai and from_anthropic produce the same Usage."""
    assert from_openai(prompt_tokens=uncached + cached, completion_tokens=output, cached_tokens=cached) == (
        from_anthropic(input_tokens=uncached, output_tokens=output, cache_read_input_tokens=cached))


usd_amounts = st.decimals(min_value=0, max_value=10**6, places=9, allow_nan=False, allow_infinity=False)


@given(usd=usd_amounts)
def test_conversions_round_within_one_millicent(usd: Decimal) -> None:
    """Ceil is the least integer >= the exact amount; half-up is within half a millicent of it and <= ceil."""
    exact = usd * 100_000
    up, nearest = usd_to_mc_ceil(usd), usd_to_mc_half_up(usd)
    assert up - 1 < exact <= up
    assert abs(nearest - exact) <= Decimal("0.5")
    assert nearest <= up


@given(mc=st.integers(0, 10**15))
def test_whole_millicents_round_trip_through_usd(mc: int) -> None:
    """An integer of millicents converted to USD and back is unchanged, whichever rounding is used."""
    usd = mc_to_usd(mc)
    assert usd_to_mc_ceil(usd) == mc == usd_to_mc_half_up(usd)
