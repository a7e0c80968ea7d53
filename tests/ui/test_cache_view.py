"""The Cache page's figures (pure): hit rate, money saved, groups and totals, and spend by API key."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from comptroller.domain.ledger import UsageRecord
from comptroller.domain.pricing import ModelPrice, TieredRate
from comptroller.domain.scopes import Attribution
from comptroller.domain.usage import Usage
from comptroller.prices.book import UnknownModelError
from comptroller.ui.cache_view import cache_groups, saved_mc
from comptroller.ui.views import Filters, groups, key_of

AT = datetime(2026, 3, 5, 12, tzinfo=UTC)
rates = st.decimals(min_value=0, max_value=100, places=3, allow_nan=False, allow_infinity=False)


def _record(usage: Usage, *, model: str = "m", agent: str = "a", key_id: str | None = None,
            cost_mc: int = 0) -> UsageRecord:
    attribution = Attribution(namespace="ns", tenant="acme", agent=agent, key_id=key_id)
    return UsageRecord(f"r{id(usage)}", "k", attribution, model, AT, AT, usage, cost_mc, cost_mc, "settled")


@given(input_rate=rates, read_rate=rates, input_tokens=st.integers(0, 10**7), output_tokens=st.integers(0, 10**6),
       read_share=st.floats(0, 1))
def test_saving_is_the_rate_difference_on_the_reads(input_rate: Decimal, read_rate: Decimal, input_tokens: int,
                                                    output_tokens: int, read_share: float) -> None:
    """A call's saving is (input rate - cache-read rate) x reads, within the 1 mc of each side's rounding."""
    reads = int(input_tokens * read_share)
    price = ModelPrice("m", input_mtok=input_rate, output_mtok=Decimal(3), cache_read_mtok=read_rate)
    saved = saved_mc(_record(Usage(input_tokens, output_tokens, reads)), lambda model, at: price)
    exact = (input_rate - read_rate) * reads / 10  # USD per Mtok x tokens / 1e6 x 1e5 mc per USD
    assert saved is not None and abs(saved - exact) <= 1


def test_saving_uses_the_tier_of_the_whole_input() -> None:
    """A long-context call pays the upper tier on every token, cached or not, so its reads save at that tier."""
    price = ModelPrice("m", input_mtok=TieredRate(Decimal(3), ((200_000, Decimal(6)),)), output_mtok=Decimal(15),
                       cache_read_mtok=TieredRate(Decimal("0.3"), ((200_000, Decimal("0.6")),)))
    saved = saved_mc(_record(Usage(250_000, 0, 100_000)), lambda model, at: price)
    assert saved == (6 - Decimal("0.6")) * 100_000 / 10


def test_no_reads_no_saving_and_an_unpriced_model_is_counted_apart() -> None:
    """A call without reads saves 0 without a price lookup; one whose model has no price is unpriced, not 0."""
    def unknown(model: str, at: datetime) -> ModelPrice:
        raise UnknownModelError(model, [])

    assert saved_mc(_record(Usage(100, 5)), unknown) == 0
    assert saved_mc(_record(Usage(100, 5, 40)), unknown) is None
    (group,), total = cache_groups([_record(Usage(100, 5, 40), model="gone"), _record(Usage(300, 5), model="gone")],
                                   unknown, lambda r: r.model)
    assert (group.calls, group.cached_calls, group.unpriced_calls, group.saved_mc) == (2, 1, 1, 0)
    assert group.hit_rate == 40 / 400 == total.hit_rate


def test_groups_by_model_and_agent_sum_to_the_total() -> None:
    """Per-agent groups add up to the total; the hit rate is reads over all input tokens."""
    price = ModelPrice("m", input_mtok=Decimal(1), output_mtok=Decimal(2), cache_read_mtok=Decimal("0.1"))
    records = [_record(Usage(1000, 10, 500), agent="a"), _record(Usage(1000, 10, 0), agent="a"),
               _record(Usage(2000, 10, 1500), agent="b")]
    by_agent, total = cache_groups(records, lambda model, at: price, lambda r: r.attribution.agent)
    assert [g.key for g in by_agent] == ["b", "a"]  # most saved first
    assert sum(g.saved_mc for g in by_agent) == total.saved_mc == (1 - Decimal("0.1")) * 2000 / 10
    assert total.hit_rate == 2000 / 4000


def test_spend_by_key_groups_and_filters_on_the_key_id() -> None:
    """Records group by the API key's id (``-`` without one), and the key filter keeps that key's calls only."""
    records = [_record(Usage(1, 1), key_id="k1", cost_mc=5), _record(Usage(1, 1), key_id="k1", cost_mc=7),
               _record(Usage(1, 1), cost_mc=11)]
    assert [(g.key, g.cost_mc) for g in groups(records, lambda r: key_of(r, "key"))] == [("k1", 12), ("-", 11)]
    day = AT.date()
    assert [r.cost_mc for r in records if Filters(day, day, key="k1").keeps(r)] == [5, 7]
    assert [r.cost_mc for r in records if Filters(day, day, key="-").keeps(r)] == [11]
    assert all(Filters(date(2026, 3, 5), date(2026, 3, 5)).keeps(r) for r in records)
