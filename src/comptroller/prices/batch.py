"""Batch prices as a :class:`~comptroller.ports.PriceSource`: batch lines go through the one engine (gateway, SDK).

An :class:`~comptroller.engine.Engine` built on :class:`BatchPrices` (and the gateway engine's
store, clock, caps and defenses) reserves every ceiling and settles every cost at the batch
price, on the same integer path as any call (:func:`comptroller.domain.pricing.ceiling_mc`,
:func:`~comptroller.domain.pricing.cost_mc`): the engine needs no batch flag, and a
reservation's model and time fix its price at settle as they do for calls.
"""

from __future__ import annotations

from datetime import datetime
from typing import Protocol, runtime_checkable

from comptroller.batch_config import BatchSection
from comptroller.domain.batches import discounted
from comptroller.domain.pricing import ModelPrice
from comptroller.ports import PriceSource

__all__ = ["BatchPriceLookup", "BatchPrices"]


@runtime_checkable
class BatchPriceLookup(Protocol):
    """A price source that knows providers' own batch prices (:meth:`comptroller.prices.PriceBook.batch_price`)."""

    def batch_price(self, model: str, at: datetime) -> ModelPrice | None:
        """The batch price of ``model`` at ``at``, or None when none is known."""
        ...


class BatchPrices:
    """Each model's batch price, in the order of :mod:`comptroller.batch_config`.

    Args:
        prices: the standard prices (the gateway engine's).
        section: the policy's ``[batch]`` section.
    """

    def __init__(self, prices: PriceSource, section: BatchSection) -> None:
        self._prices = prices
        self._section = section

    def resolve(self, model: str) -> str:
        """The priced model id (aliases applied). Raises UnknownModelError."""
        return self._prices.resolve(model)

    def price(self, model: str, at: datetime) -> ModelPrice:
        """The batch price of ``model`` at ``at``. Raises UnknownModelError."""
        model_id = self._prices.resolve(model)
        pct = self._section.discount_pct_by_model.get(model_id)
        if pct is None and isinstance(self._prices, BatchPriceLookup):
            batch = self._prices.batch_price(model_id, at)
            if batch is not None:
                return batch
        standard = self._prices.price(model_id, at)
        return discounted(standard, self._section.discount_pct if pct is None else pct)
