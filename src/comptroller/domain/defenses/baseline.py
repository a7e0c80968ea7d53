"""A scope's trailing spend baseline: the input of the relative spend-rate breaker.

Spend is counted in epoch-aligned windows (``window_s``, one hour by default); when a
window ends, its spend is folded into an exponentially weighted moving average with a
half-life of ``half_life_s`` (one day by default: a window 7 days old weighs under 1 %
of a current one, so the baseline is about the last week's typical window). Windows
without spend fold in as zero, however many pass (one multiplication by the decay to
the power of the gap).

The baseline is a statistic, not money: it is kept in integer milli-millicents
(``baseline_mmc``, 1/1,000 mc) so a record holds no float, and is compared with
integer window spend in millicents. Pure: ``now`` is an argument.

A namespace's baseline (:class:`NamespaceRate`, one row shared by every call of the namespace) is
counted from a deterministic sample of settles (:func:`rate_sampled`: one reservation id in
:data:`RATE_SAMPLE`, by CRC-32), each adding :data:`RATE_SAMPLE` times its cost: a Horvitz-Thompson
estimate of each window's spend, unbiased. With ``n`` settles of similar cost in a window, one
window's estimate has a relative standard error of about ``sqrt((RATE_SAMPLE - 1) / n)`` (34 % at
60 settles an hour); the moving average (one-day half-life, hourly windows: about 69 windows' worth)
divides that by about 8 (about 4 % at 60 settles an hour, 1.4 % at 500). So most settles neither
read nor write the shared row (``tests/unit/test_defenses_baseline.py`` checks the bound).
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime

from comptroller.domain.defenses import _records as rec
from comptroller.domain.defenses.verdict import JsonScalar
from comptroller.domain.defenses.windows import window_bounds, window_index

__all__ = ["RATE_SAMPLE", "NamespaceRate", "SpendBaseline", "rate_sampled"]

_MMC_PER_MC = 1_000
RATE_SAMPLE = 8
"""One settle in this many counts in the namespace's baseline, with this many times its cost."""


def rate_sampled(reservation_id: str) -> bool:
    """True if the settle of ``reservation_id`` counts in its namespace's baseline (:data:`RATE_SAMPLE`).

    Deterministic (CRC-32 of the id), so every replica and a retried settle agree.
    """
    return zlib.crc32(reservation_id.encode()) % RATE_SAMPLE == 0


@dataclass(frozen=True, slots=True)
class SpendBaseline:
    """Trailing spend per window of one scope.

    Attributes:
        window_index: the aligned window being counted (None before the first spend).
        window_spend_mc: its spend so far, millicents.
        baseline_mmc: the moving average of earlier windows' spend, milli-millicents.
        since: the start of the first window counted (how long the scope has been observed).
    """

    window_index: int | None = None
    window_spend_mc: int = 0
    baseline_mmc: int = 0
    since: datetime | None = None

    def baseline_mc(self) -> float:
        """The moving average per window, millicents."""
        return self.baseline_mmc / _MMC_PER_MC

    def observed_s(self, now: datetime) -> float:
        """Seconds since the first window counted started (0 before any spend)."""
        return 0.0 if self.since is None else max(0.0, (now - self.since).total_seconds())

    def add(self, cost_mc: int, now: datetime, *, window_s: int, half_life_s: float,
            fold_cap_mc: float | None = None) -> SpendBaseline:
        """Count ``cost_mc`` in the window of ``now``, folding ended windows into the average.

        A time inside an earlier window than the one being counted is counted in the current one.
        ``fold_cap_mc`` caps what an ended window adds (a runaway must not raise the baseline it is
        judged by: the relative breaker passes k times the baseline, a winsorised average).
        """
        index = window_index(now, window_s)
        if self.window_index is None:
            return SpendBaseline(index, cost_mc, 0, window_bounds(index, window_s)[0])
        if index <= self.window_index:
            return SpendBaseline(self.window_index, self.window_spend_mc + cost_mc, self.baseline_mmc, self.since)
        decay = 0.5 ** (window_s / half_life_s)
        ended = self.window_spend_mc if fold_cap_mc is None else min(self.window_spend_mc, fold_cap_mc)
        folded = self.baseline_mmc * decay + ended * _MMC_PER_MC * (1 - decay)
        folded *= decay ** (index - self.window_index - 1)  # the empty windows in between
        return replace(self, window_index=index, window_spend_mc=cost_mc, baseline_mmc=round(folded))

    def to_record(self, prefix: str = "") -> dict[str, JsonScalar]:
        """Flat fields (names prefixed), the start as ISO-8601 text."""
        return {f"{prefix}window_index": self.window_index, f"{prefix}window_spend_mc": self.window_spend_mc,
                f"{prefix}baseline_mmc": self.baseline_mmc, f"{prefix}since": rec.iso(self.since)}

    @classmethod
    def from_record(cls, record: Mapping[str, JsonScalar], prefix: str = "") -> SpendBaseline:
        """Read :meth:`to_record`'s fields (absent fields: an empty baseline)."""
        if f"{prefix}baseline_mmc" not in record:
            return cls()
        return cls(window_index=rec.get_opt_int(record, f"{prefix}window_index"),
                   window_spend_mc=rec.get_int(record, f"{prefix}window_spend_mc"),
                   baseline_mmc=rec.get_int(record, f"{prefix}baseline_mmc"),
                   since=rec.get_opt_dt(record, f"{prefix}since"))


@dataclass(frozen=True, slots=True)
class NamespaceRate:
    """A namespace's spend baseline, as a store keeps it (one row per namespace): the fallback of
    the relative breakers of scopes too young to have their own.

    Attributes:
        scope: the namespace's scope key.
        baseline: its spend per relative window.
        version: incremented by every change; the compare-and-set token.
    """

    scope: str
    baseline: SpendBaseline = field(default_factory=SpendBaseline)
    version: int = 0

    def to_record(self) -> dict[str, JsonScalar]:
        """A flat JSON record."""
        return {"scope": self.scope, **self.baseline.to_record(), "version": self.version}

    @classmethod
    def from_record(cls, record: Mapping[str, JsonScalar]) -> NamespaceRate:
        """Read :meth:`to_record`. Raises ValueError on a missing or mistyped field."""
        return cls(scope=rec.get_str(record, "scope"), baseline=SpendBaseline.from_record(record),
                   version=rec.get_int(record, "version"))
