"""``comptroller what-if``: recorded traffic re-priced under another model mapping (cost only).

Each trace record is priced twice at its recorded time with its recorded tokens: as
replay prices it (:func:`comptroller.replay.runner.model_for`, the policy's aliases and
prices) and as the mapping (:class:`comptroller.domain.routing.whatif.ModelMapping`)
would route it. Sums are exact integer millicents. Quality is not simulated
(:data:`~comptroller.domain.routing.whatif.COST_ONLY_NOTE`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from comptroller.config import Policy
from comptroller.domain.pricing import cost_mc
from comptroller.domain.routing.whatif import COST_ONLY_NOTE, ModelMapping
from comptroller.domain.usage import Usage
from comptroller.ports import PriceSource
from comptroller.replay.runner import model_for
from comptroller.replay.trace import TraceRecord

__all__ = ["WhatIf", "WhatIfRow", "what_if"]


@dataclass(frozen=True, slots=True)
class WhatIfRow:
    """Calls moved from one model to another, with their cost before and after (millicents)."""

    model: str
    mapped_to: str
    reason: str
    calls: int
    recorded_mc: int
    mapped_mc: int


@dataclass(frozen=True, slots=True)
class WhatIf:
    """Totals and rows (by model, target and reason), with the cost-only note."""

    rows: tuple[WhatIfRow, ...]
    recorded_mc: int
    mapped_mc: int
    note: str = COST_ONLY_NOTE


def what_if(records: Sequence[TraceRecord], mapping: ModelMapping, *, policy: Policy,
            prices: PriceSource) -> WhatIf:
    """Re-price ``records`` under ``mapping``.

    Raises:
        UnknownModelError: for a recorded or mapped model without a price.
        MissingModelError: for a record without a model label and no default model.
    """
    groups: dict[tuple[str, str, str], list[int]] = defaultdict(lambda: [0, 0, 0])
    for record in records:
        model = prices.resolve(model_for(record, policy))
        target, reason = mapping.target(agent=record.agent, phase=record.phase, model=model)
        target = prices.resolve(target)
        usage = Usage(record.input_tokens, record.output_tokens, record.cache_read_tokens, record.cache_write_tokens)
        group = groups[(model, target, reason)]
        group[0] += 1
        group[1] += cost_mc(prices.price(model, record.ts), usage)
        group[2] += cost_mc(prices.price(target, record.ts), usage)
    rows = tuple(WhatIfRow(m, t, why, *g) for (m, t, why), g in sorted(groups.items(), key=lambda kv: -kv[1][1]))
    return WhatIf(rows, sum(r.recorded_mc for r in rows), sum(r.mapped_mc for r in rows))
