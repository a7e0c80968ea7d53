"""The price book finds every model genai-prices prices, including those its provider inference misses."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest
from genai_prices import data_snapshot

from comptroller.domain.pricing import TieredRate, ceiling_mc, cost_mc
from comptroller.domain.usage import Usage
from comptroller.prices.book import PriceBook, UnknownModelError

AT = datetime(2025, 6, 1, tzinfo=UTC)
EMBEDDINGS = ["text-embedding-3-small", "text-embedding-3-large", "text-embedding-ada-002"]


def _openai_listed_input_rate(model: str) -> Decimal:
    """The input rate OpenAI's own entry in the genai-prices snapshot gives ``model``."""
    snapshot = data_snapshot.get_snapshot()
    openai = next(p for p in snapshot.providers if p.id == "openai")
    info = openai.find_model(model, all_providers=snapshot.providers)
    assert info is not None
    return Decimal(info.get_prices(AT).input_mtok)


@pytest.mark.parametrize("model", EMBEDDINGS)
def test_openai_embedding_models_are_priced_input_only(model: str) -> None:
    """An embedding model genai-prices lists under OpenAI prices at OpenAI's input rate, output free."""
    price = PriceBook().price(model, AT)
    assert price.input_mtok == _openai_listed_input_rate(model)
    assert price.output_mtok == 0


@pytest.mark.parametrize("model", EMBEDDINGS)
def test_an_embedding_call_costs_rate_times_tokens(model: str) -> None:
    """One million embedding input tokens cost the input rate in USD (100,000 mc per USD), and the ceiling covers it."""
    price = PriceBook().price(model, AT)
    tokens = 1_000_000
    expected_mc = int(_openai_listed_input_rate(model) * tokens / 1_000_000 * 100_000)
    assert cost_mc(price, Usage(input_tokens=tokens, output_tokens=0)) == expected_mc
    assert ceiling_mc(price, input_tokens_max=tokens, output_tokens_max=0) >= expected_mc


def test_a_truly_unknown_model_is_still_an_error_with_other_names() -> None:
    """A name no provider lists raises UnknownModelError, and its suggestions never repeat the name itself."""
    with pytest.raises(UnknownModelError) as caught:
        PriceBook().price("text-embedding-9-imaginary", AT)
    assert "text-embedding-9-imaginary" not in caught.value.suggestions
    assert caught.value.suggestions


def test_inferred_providers_are_unchanged() -> None:
    """Models genai-prices already resolves (gpt-4o-mini) keep the price its provider inference gives."""
    snapshot = data_snapshot.get_snapshot()
    _, info = snapshot.find_provider_model("gpt-4o-mini", None, None, None)
    assert PriceBook().price("gpt-4o-mini", AT).input_mtok == Decimal(info.get_prices(AT).input_mtok)


def test_tiered_rates_print_readably() -> None:
    """A tiered rate prints its base and each tier's threshold, not a dataclass repr."""
    rate = TieredRate(Decimal("3"), ((200_000, Decimal("6")), (1_000_000, Decimal("9"))))
    assert str(rate) == "3; $6 when input > 200,000 tokens; $9 when input > 1,000,000 tokens"
    assert "TieredRate" not in str(rate)
