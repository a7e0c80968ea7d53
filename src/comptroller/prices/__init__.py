"""Prices: genai-prices' bundled snapshot, plus configured overrides and aliases."""

from comptroller.prices.book import PriceBook, UnknownModelError

__all__ = ["PriceBook", "UnknownModelError"]
