"""A spend-rate breaker's configuration and its defaults (DESIGN.md rule 5; see :mod:`comptroller.domain.breaker`)."""

from __future__ import annotations

from dataclasses import dataclass

from comptroller.domain.defenses._checks import require_int, require_seconds
from comptroller.domain.defenses.errors import DefenseConfigError

__all__ = ["DEFAULT_RELATIVE_FLOOR_MC", "DEFAULT_RELATIVE_K", "DEFAULT_THRESHOLD_MC", "BreakerConfig"]

DEFAULT_THRESHOLD_MC = 50_000
"""$0.50 per 60 s window ($30 an hour sustained): our starting point, not a sourced number."""
DEFAULT_RELATIVE_K = 10
"""A relative window is over above 10x the scope's own baseline (see the module docstring)."""
DEFAULT_RELATIVE_FLOOR_MC = 100_000
"""...and above $1.00 per relative window (one hour): the absolute floor."""
_DAY_S = 86_400


@dataclass(frozen=True, slots=True)
class BreakerConfig:
    """How one breaker judges spend. Defaults from KinthAI, except the threshold (ours).

    Attributes:
        threshold_mc: a window spending more than this is over, millicents (>= 1).
        window_s: the window length, whole seconds (1..86,400; default 60).
        trip_windows: consecutive over windows that open the breaker (1..1,000; default 3).
        cooldown_s_start: the cooldown of the first trip, seconds (default 5).
        cooldown_s_max: the cooldown never exceeds this, seconds (>= start; default 300).
        probe_lease_s: how long a probe holds the half-open lease before another
            call may probe (a crashed probe gives it up by itself), seconds (default 60).
        relative_k: a relative window spending more than this many times the baseline is
            over (1..1,000,000; default 10), or None to judge by the fixed threshold only.
        relative_floor_mc: ...and more than this, millicents (default 100,000: $1.00).
        relative_window_s: the relative window, whole seconds (60..86,400; default 3,600).
        baseline_half_life_s: the baseline's half-life, seconds (default 86,400: one day).
        baseline_age_s_min: a scope observed for less than this uses its namespace's
            baseline, seconds (default 86,400).

    Raises:
        DefenseConfigError: on a threshold below 1 mc, a window below 1 s, a
            non-positive cooldown or lease, or ``cooldown_s_max < cooldown_s_start``.
    """

    threshold_mc: int = DEFAULT_THRESHOLD_MC
    window_s: int = 60
    trip_windows: int = 3
    cooldown_s_start: float = 5.0
    cooldown_s_max: float = 300.0
    probe_lease_s: float = 60.0
    relative_k: int | None = DEFAULT_RELATIVE_K
    relative_floor_mc: int = DEFAULT_RELATIVE_FLOOR_MC
    relative_window_s: int = 3_600
    baseline_half_life_s: float = 86_400.0
    baseline_age_s_min: float = 86_400.0

    def __post_init__(self) -> None:
        owner = "breaker"
        if self.relative_k is not None:
            require_int(owner, "relative_k", self.relative_k, low=1, high=1_000_000)
        require_int(owner, "relative_floor_mc", self.relative_floor_mc, low=0, unit=" mc")
        require_int(owner, "relative_window_s", self.relative_window_s, low=60, high=_DAY_S, unit=" s")
        for name in ("baseline_half_life_s", "baseline_age_s_min"):
            object.__setattr__(self, name, require_seconds(owner, name, getattr(self, name), high=30 * _DAY_S))
        require_int(owner, "threshold_mc", self.threshold_mc, low=1, unit=" mc")
        require_int(owner, "window_s", self.window_s, low=1, high=_DAY_S, unit=" s")
        require_int(owner, "trip_windows", self.trip_windows, low=1, high=1_000)
        start = require_seconds(owner, "cooldown_s_start", self.cooldown_s_start, high=_DAY_S)
        top = require_seconds(owner, "cooldown_s_max", self.cooldown_s_max, high=_DAY_S)
        if top < start:
            raise DefenseConfigError(
                f"breaker.cooldown_s_max ({top:g} s) is below breaker.cooldown_s_start ({start:g} s); "
                "set cooldown_s_max >= cooldown_s_start"
            )
        lease = require_seconds(owner, "probe_lease_s", self.probe_lease_s, high=3_600.0)
        object.__setattr__(self, "cooldown_s_start", start)
        object.__setattr__(self, "cooldown_s_max", top)
        object.__setattr__(self, "probe_lease_s", lease)

    def cooldown_s(self, trip: int) -> float:
        """The cooldown of trip number ``trip`` (>= 1): ``min(start * 2 ** (trip - 1), max)`` seconds."""
        if trip < 1:
            raise ValueError(f"trip numbers start at 1, got {trip!r}")
        return min(self.cooldown_s_start * 2.0 ** min(trip - 1, 64), self.cooldown_s_max)
