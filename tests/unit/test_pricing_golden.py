"""Golden pricing: every expected cost is rate x tokens / 10 millicents, from genai-prices' own rates.

1 USD = 100,000 mc and rates are USD per million tokens, so a bucket of ``n`` tokens
at rate ``r`` costs ``r * n / 10`` mc. Expected values below are computed from the
rates genai-prices ships (or from a :class:`ModelPrice` built in the test), never
pasted, and rounded half up once per call (a ceiling rounds up).
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal

import genai_prices
import pytest
from genai_prices import data_snapshot, types

from comptroller.domain.pricing import ModelPrice, TieredRate, ceiling_mc, cost_mc, cost_usd
from comptroller.domain.usage import Usage, from_anthropic, from_openai
from comptroller.prices import PriceBook

AT = datetime(2025, 6, 1, tzinfo=UTC)
BOOK = PriceBook()


def genai_rates(model: str, at: datetime = AT) -> types.ModelPrice:
    """The raw rates genai-prices ships for ``model`` at ``at``."""
    _, info = data_snapshot.get_snapshot().find_provider_model(model, None, None, None)
    return info.get_prices(at)


def flat(rate: Decimal | types.TieredPrices | None) -> Decimal:
    """A rate that must be flat (not tiered) in the data."""
    assert isinstance(rate, Decimal), rate
    return rate


def half_up_mc(pairs: list[tuple[Decimal, int]]) -> int:
    """Expected settled cost: sum(rate x tokens) / 10, rounded half up."""
    exact = sum((rate * tokens for rate, tokens in pairs), Decimal(0)) / 10
    return int(exact.quantize(Decimal(1), rounding=ROUND_HALF_UP))


# --- cache buckets --------------------------------------------------------------------------------


def test_claude_3_5_sonnet_prices_each_cache_bucket_at_its_rate() -> None:
    """Uncached input, cache reads, 5-minute and 1-hour cache writes and output each pay their own rate."""
    rates = genai_rates("claude-3-5-sonnet")
    uncached, read, write_5m, write_1h, output = 1_234, 10_000, 2_000, 1_000, 567
    usage = from_anthropic(input_tokens=uncached, output_tokens=output, cache_read_input_tokens=read,
                           cache_creation_input_tokens=write_5m + write_1h, ephemeral_1h_input_tokens=write_1h)
    expected = half_up_mc([
        (flat(rates.input_mtok), uncached), (flat(rates.cache_read_mtok), read),
        (flat(rates.cache_write_mtok), write_5m), (flat(rates.cache_write_1h_mtok), write_1h),
        (flat(rates.output_mtok), output),
    ])
    assert cost_mc(BOOK.price("claude-3-5-sonnet", AT), usage) == expected


def test_missing_cache_rates_fall_back_to_input_and_5_minute_rates() -> None:
    """Without cache rates, reads and writes cost the input rate, and 1-hour writes the 5-minute write rate."""
    input_rate, output_rate, write_rate = Decimal("2"), Decimal("8"), Decimal("2.5")
    no_cache = ModelPrice("m", input_mtok=input_rate, output_mtok=output_rate)
    write_only = ModelPrice("m", input_mtok=input_rate, output_mtok=output_rate, cache_write_mtok=write_rate)
    usage = Usage(input_tokens=9_000, output_tokens=700, cache_read_tokens=3_000, cache_write_tokens=4_000,
                  cache_write_1h_tokens=1_500)
    assert cost_mc(no_cache, usage) == half_up_mc([(input_rate, usage.input_tokens),
                                                   (output_rate, usage.output_tokens)])
    assert cost_mc(write_only, usage) == half_up_mc([
        (input_rate, usage.uncached_input_tokens + usage.cache_read_tokens),
        (write_rate, usage.cache_write_tokens), (output_rate, usage.output_tokens)])


# --- tiers ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["claude-sonnet-4-5", "gemini-2.5-pro"])
def test_tiered_price_applies_the_tier_rate_to_all_tokens_above_the_threshold(model: str) -> None:
    """Above the tier start (200k input tokens) every token of each kind pays the tier rate; at it, the base."""
    rates = genai_rates(model)
    assert isinstance(rates.input_mtok, types.TieredPrices) and isinstance(rates.output_mtok, types.TieredPrices)
    start = rates.input_mtok.tiers[0].start
    read, output = 50_000, 4_000
    price = BOOK.price(model, AT)
    for total_input, pick in ((start, "base"), (start + 1, "tier")):
        def rate(r: types.TieredPrices, pick: str = pick) -> Decimal:
            return r.base if pick == "base" else r.tiers[0].price

        usage = Usage(input_tokens=total_input, output_tokens=output, cache_read_tokens=read)
        assert isinstance(rates.cache_read_mtok, types.TieredPrices)
        expected = half_up_mc([(rate(rates.input_mtok), total_input - read),
                               (rate(rates.cache_read_mtok), read), (rate(rates.output_mtok), output)])
        assert cost_mc(price, usage) == expected, pick


def test_tiered_ceiling_prices_the_reachable_tier() -> None:
    """A ceiling whose input bound passes the tier start is priced at the tier's (highest) rates."""
    rates = genai_rates("claude-sonnet-4-5")
    assert isinstance(rates.cache_write_1h_mtok, types.TieredPrices)
    assert isinstance(rates.output_mtok, types.TieredPrices)
    start = rates.cache_write_1h_mtok.tiers[0].start
    price = BOOK.price("claude-sonnet-4-5", AT)
    below = ceiling_mc(price, input_tokens_max=start, output_tokens_max=8_000)
    above = ceiling_mc(price, input_tokens_max=start + 1, output_tokens_max=8_000)
    assert below == math.ceil((rates.cache_write_1h_mtok.base * start + rates.output_mtok.base * 8_000) / 10)
    assert above == math.ceil((rates.cache_write_1h_mtok.tiers[0].price * (start + 1)
                               + rates.output_mtok.tiers[0].price * 8_000) / 10)


def test_tier_rate_is_chosen_by_the_highest_start_passed() -> None:
    """With several tiers, the call pays the rate of the highest tier whose start it exceeds."""
    tiered = TieredRate(Decimal("1"), ((100, Decimal("2")), (1_000, Decimal("3"))))
    assert [tiered.at(n) for n in (100, 101, 1_000, 1_001)] == [Decimal("1"), Decimal("2"), Decimal("2"),
                                                                Decimal("3")]
    falling = TieredRate(Decimal("5"), ((100, Decimal("2")),))
    assert falling.highest_up_to(1_000) == Decimal("5")


# --- rounding -------------------------------------------------------------------------------------


@pytest.mark.parametrize("rate", ["0.4", "0.5", "4.9", "5", "15", "25", "0.05", "12.345"])
def test_cost_rounds_half_up_and_ceiling_rounds_up(rate: str) -> None:
    """One call's cost rounds to the nearest millicent with .5 going up; its ceiling always rounds up."""
    price = ModelPrice("m", input_mtok=Decimal(rate), output_mtok=Decimal(0))
    for tokens in (1, 3, 7):
        exact = Decimal(rate) * tokens / 10
        assert cost_mc(price, Usage(tokens, 0)) == math.floor(exact + Decimal("0.5"))
        assert ceiling_mc(price, input_tokens_max=tokens, output_tokens_max=0) == math.ceil(exact)


def test_cost_usd_is_exact() -> None:
    """cost_usd is the exact Decimal sum of rate x tokens / 1e6, with no float on the way."""
    price = ModelPrice("m", input_mtok=Decimal("0.15"), output_mtok=Decimal("0.6"))
    assert cost_usd(price, Usage(3, 7)) == (Decimal("0.15") * 3 + Decimal("0.6") * 7) / Decimal(10**6)


def test_ceiling_prices_input_at_the_highest_input_side_rate() -> None:
    """The ceiling prices every input token at the dearest of input, cache read and cache write rates."""
    rates = genai_rates("claude-3-5-sonnet")
    dearest = max(flat(rates.input_mtok), flat(rates.cache_read_mtok), flat(rates.cache_write_mtok),
                  flat(rates.cache_write_1h_mtok))
    got = ceiling_mc(BOOK.price("claude-3-5-sonnet", AT), input_tokens_max=12_345, output_tokens_max=678)
    assert got == math.ceil((dearest * 12_345 + flat(rates.output_mtok) * 678) / 10)


def test_ceiling_rejects_negative_bounds() -> None:
    """A negative token bound is a ValueError naming both bounds."""
    price = ModelPrice("m", input_mtok=Decimal(1), output_mtok=Decimal(1))
    with pytest.raises(ValueError, match="input_tokens_max=-1, output_tokens_max=5"):
        ceiling_mc(price, input_tokens_max=-1, output_tokens_max=5)


# --- usage normalisation, one golden test per provider family -------------------------------------


@pytest.mark.parametrize("model", ["gpt-4o", "gemini-2.5-flash"])
def test_openai_convention_golden(model: str) -> None:
    """OpenAI-style usage (cached tokens inside prompt_tokens) costs uncached x input + cached x read + output."""
    rates = genai_rates(model)
    uncached, cached, output = 7_000, 3_000, 900
    usage = from_openai(prompt_tokens=uncached + cached, completion_tokens=output, cached_tokens=cached)
    expected = half_up_mc([(flat(rates.input_mtok), uncached), (flat(rates.cache_read_mtok), cached),
                           (flat(rates.output_mtok), output)])
    assert cost_mc(BOOK.price(model, AT), usage) == expected


def test_anthropic_convention_golden() -> None:
    """Anthropic usage (cache tokens outside input_tokens) costs each bucket once at its own rate."""
    rates = genai_rates("claude-3-5-haiku")
    uncached, read, written, output = 2_000, 30_000, 5_000, 800
    usage = from_anthropic(input_tokens=uncached, output_tokens=output, cache_read_input_tokens=read,
                           cache_creation_input_tokens=written)
    expected = half_up_mc([(flat(rates.input_mtok), uncached), (flat(rates.cache_read_mtok), read),
                           (flat(rates.cache_write_mtok), written), (flat(rates.output_mtok), output)])
    assert cost_mc(BOOK.price("claude-3-5-haiku", AT), usage) == expected


@pytest.mark.parametrize("model", ["gpt-4o", "claude-3-5-sonnet", "gemini-2.5-flash"])
def test_both_conventions_price_the_same_real_split_alike(model: str) -> None:
    """from_openai and from_anthropic of the same real split give the same usage and the same cost."""
    uncached, cached, output = 4_321, 12_000, 1_111
    openai_style = from_openai(prompt_tokens=uncached + cached, completion_tokens=output, cached_tokens=cached)
    anthropic_style = from_anthropic(input_tokens=uncached, output_tokens=output, cache_read_input_tokens=cached)
    assert openai_style == anthropic_style
    price = BOOK.price(model, AT)
    assert cost_mc(price, openai_style) == cost_mc(price, anthropic_style)
    assert cost_mc(price, openai_style) < cost_mc(price, Usage(uncached + cached, output))


# --- agreement with genai-prices ------------------------------------------------------------------


CROSS_CHECK = [
    ("gpt-4o", Usage(12_345, 678, cache_read_tokens=2_048)),
    ("gpt-4o-mini", Usage(1_000_003, 77_777, cache_read_tokens=500_001)),
    ("gpt-3.5-turbo-16k", Usage(3_333, 1_111)),
    ("claude-3-5-sonnet", Usage(40_000, 2_000, cache_read_tokens=20_000, cache_write_tokens=9_000,
                                cache_write_1h_tokens=4_000)),
    ("claude-sonnet-4-5", Usage(250_000, 3_000, cache_read_tokens=100_000, cache_write_tokens=10_000)),
    ("gemini-2.5-pro", Usage(210_000, 5_555, cache_read_tokens=70_000)),
    ("gemini-2.5-pro", Usage(199_999, 5_555)),
    ("o3", Usage(9_999, 33_333, cache_read_tokens=1)),
]


@pytest.mark.parametrize(("model", "usage"), CROSS_CHECK, ids=[f"{m}-{u.input_tokens}" for m, u in CROSS_CHECK])
def test_cost_agrees_with_genai_prices_calc_price(model: str, usage: Usage) -> None:
    """Our cost is genai-prices' calc_price total to within the rounding of one millicent."""
    theirs = genai_prices.calc_price(
        genai_prices.Usage(input_tokens=usage.input_tokens, output_tokens=usage.output_tokens,
                           cache_read_tokens=usage.cache_read_tokens, cache_write_tokens=usage.cache_write_tokens,
                           cache_write_1h_tokens=usage.cache_write_1h_tokens),
        model, genai_request_timestamp=AT)
    exact_mc = theirs.total_price * 100_000
    ours = BOOK.price(model, AT)
    assert cost_usd(ours, usage) == theirs.total_price
    assert abs(cost_mc(ours, usage) - exact_mc) <= Decimal("0.5")


def test_price_depends_on_the_request_time() -> None:
    """A model whose price changed on a date is priced by the rates genai-prices gives for each instant."""
    model = "claude-sonnet-4-6"
    _, info = data_snapshot.get_snapshot().find_provider_model(model, None, None, None)
    assert isinstance(info.prices, list)
    change = datetime.combine(info.prices[-1].constraint.start_date, datetime.min.time(), tzinfo=UTC)
    usage = Usage(300_000, 1_000)
    for at in (change.replace(year=change.year - 1), change.replace(year=change.year + 1)):
        theirs = genai_prices.calc_price(genai_prices.Usage(input_tokens=usage.input_tokens,
                                                            output_tokens=usage.output_tokens),
                                         model, genai_request_timestamp=at)
        assert cost_usd(BOOK.price(model, at), usage) == theirs.total_price
    assert BOOK.price(model, change.replace(year=change.year - 1)) != BOOK.price(model, change.replace(
        year=change.year + 1))
