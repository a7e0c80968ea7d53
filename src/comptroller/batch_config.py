"""The ``[batch]`` policy section: batch prices where genai-prices has none, leases, reconciling.

::

    [batch]
    discount_pct = 50                 # batch price = standard x (100 - 50) %, for models genai-prices
                                      # has no batch price for (default 0: the full price, an over-bound)
    reconcile_interval_s = 60         # the gateway's reconciler looks at open batches this often
    lease_s = 86400                   # batch line leases (the ledger's longest); renewed while open
    file_bytes_max = 52428800         # largest batch input file accepted

    [batch.discount_pct_by_model]     # per model, before genai-prices and discount_pct
    "my-vllm-model" = 0

Batch prices, in order: ``discount_pct_by_model`` for the priced model id; genai-prices'
``processing = batch`` price (OpenAI and Anthropic both document 50 % off: OpenAI "Batch
API" guide, Anthropic "Batch processing: pricing"), unless the model's price is configured
in ``[prices]``; else ``discount_pct`` off the standard price. The default of 0 % reserves
and charges a model with no known batch price at its full price: an over-count, never an
under-count (DESIGN.md rule 14).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = ["BatchSection"]


class BatchSection(BaseModel):
    """The validated ``[batch]`` section (see the module docstring).

    Attributes:
        discount_pct: percent off the standard price for models without a batch price (0..100).
        discount_pct_by_model: priced model id -> percent off, ahead of genai-prices.
        reconcile_interval_s: seconds between the reconciler's passes over open batches (0 < s <= 3600).
        lease_s: lease of a batch line's reservation, seconds (<= 86,400, the ledger's longest);
            the reconciler renews the leases of open batches before they run out.
        file_bytes_max: the largest batch input file the gateway reads, bytes.
    """

    model_config = ConfigDict(extra="forbid")
    discount_pct: int = Field(default=0, ge=0, le=100)
    discount_pct_by_model: dict[str, int] = Field(default_factory=dict)
    reconcile_interval_s: float = Field(default=60.0, gt=0, le=3600)
    lease_s: float = Field(default=86_400.0, ge=600, le=86_400)
    file_bytes_max: int = Field(default=52_428_800, ge=1024)

    @field_validator("discount_pct_by_model")
    @classmethod
    def _pcts(cls, value: dict[str, int]) -> dict[str, int]:
        for model, pct in value.items():
            if not 0 <= pct <= 100:
                raise ValueError(f"discount_pct_by_model.{model!r} must be 0..100, got {pct}")
        return value
