"""The ceiling-miss table: usage reported above the bounds its call was admitted with.

Source: issue 11, item 4 ("usage is checked before it is believed"). The gateway
(:mod:`comptroller.gateway.apis.settlement`) and the SDK charge such usage in full (the
provider bills it) and record a ``usage_anomaly`` event per bucket above its bound (code
``input_above_bound`` or ``output_above_bound``, with ``reported_tokens`` and
``bound_tokens``). This table counts them per model, agent and code, with the tokens
reported beyond the bounds: an input bound that missed a field, or a provider that ignored
the output cap sent.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from comptroller.domain.ledger import Event

__all__ = ["CEILING_MISS_HEADER", "CeilingMiss", "ceiling_miss_rows", "ceiling_misses"]

USAGE_ANOMALY = "usage_anomaly"
CEILING_MISS_HEADER = ("model", "tenant", "agent", "code", "calls", "reported tokens", "bound tokens",
                       "excess tokens")


@dataclass
class CeilingMiss:
    """The usage anomalies of one (model, tenant, agent, code).

    Attributes:
        model: the model the calls were admitted for.
        tenant, agent: who made them ("-" when the ledger no longer says).
        code: ``input_above_bound`` or ``output_above_bound``.
        calls: anomalies counted (one per call and bucket).
        reported_tokens: tokens the provider reported (and billed), summed.
        bound_tokens: the bounds the calls were admitted with, summed.
        excess_tokens: ``reported_tokens - bound_tokens``: tokens no ceiling covered.
    """

    model: str
    tenant: str
    agent: str
    code: str
    calls: int = 0
    reported_tokens: int = 0
    bound_tokens: int = 0
    excess_tokens: int = 0


def ceiling_misses(events: Iterable[Event], callers: Mapping[str, tuple[str, str]] | None = None) -> list[CeilingMiss]:
    """Group the ``usage_anomaly`` events; other events are ignored.

    Args:
        events: the ledger's events (any kinds).
        callers: reservation id -> (tenant, agent), for events that do not name them (the
            usage log knows every settled call's attribution).

    Returns:
        One entry per (model, tenant, agent, code), most excess tokens first.
    """
    callers = callers or {}
    groups: dict[tuple[str, str, str, str], CeilingMiss] = {}
    for event in events:
        if event.kind != USAGE_ANOMALY:
            continue
        detail = event.detail
        tenant, agent = callers.get(str(detail.get("reservation", "")), ("-", "-"))
        key = (str(detail.get("model", "-")), str(detail.get("tenant") or tenant), str(detail.get("agent") or agent),
               event.code)
        miss = groups.setdefault(key, CeilingMiss(*key))
        reported, bound = int(detail.get("reported_tokens", 0)), int(detail.get("bound_tokens", 0))
        miss.calls += 1
        miss.reported_tokens += reported
        miss.bound_tokens += bound
        miss.excess_tokens += reported - bound
    return sorted(groups.values(), key=lambda m: (-m.excess_tokens, m.model, m.tenant, m.agent, m.code))


def ceiling_miss_rows(misses: Iterable[CeilingMiss]) -> list[tuple[str, ...]]:
    """The table's rows (shared by the terminal and HTML reports), columns :data:`CEILING_MISS_HEADER`."""
    return [(m.model, m.tenant, m.agent, m.code, f"{m.calls:,}", f"{m.reported_tokens:,}", f"{m.bound_tokens:,}",
             f"{m.excess_tokens:,}") for m in misses]
