"""The refusals of an open or half-open spend-rate breaker (see :mod:`comptroller.domain.breaker`)."""

from __future__ import annotations

from datetime import datetime

from comptroller.domain.breaker_config import BreakerConfig
from comptroller.domain.breaker_state import BreakerState
from comptroller.domain.codes import Code
from comptroller.domain.defenses import _records as rec
from comptroller.domain.defenses.verdict import JsonScalar, Rule, Verdict
from comptroller.domain.defenses.windows import seconds_until
from comptroller.domain.money import format_usd

__all__ = ["busy_verdict", "open_verdict"]


def _evidence(state: BreakerState, config: BreakerConfig) -> dict[str, JsonScalar]:
    return {
        "status": str(state.status), "trips": state.trips, "tripped_by": state.tripped_by,
        "threshold_mc": config.threshold_mc,
        "window_s": config.window_s, "trip_windows": config.trip_windows,
        "cooldown_s": config.cooldown_s(state.trips) if state.trips else None,
        "open_until": rec.iso(state.open_until), "probe_id": state.probe_id,
        "probe_expires_at": rec.iso(state.probe_expires_at),
    }


def open_verdict(state: BreakerState, config: BreakerConfig, now: datetime) -> Verdict:
    assert state.open_until is not None  # open always has an end; see _open
    wait = seconds_until(state.open_until, now)
    cooldown = config.cooldown_s(state.trips)
    if state.tripped_by == "relative":
        return Verdict(
            code=Code.CIRCUIT_OPEN, rule=Rule.BREAKER, detector="relative_rate", level=state.level,
            scope=state.scope, retry_after_s=wait, evidence=_evidence(state, config),
            message=(
                f"circuit_open: the spend-rate breaker of {state.level} {state.scope!r} is open: for "
                f"{config.trip_windows} windows of {config.relative_window_s} s in a row it spent more than "
                f"{config.relative_k} times its usual rate and more than {format_usd(config.relative_floor_mc)} "
                f"(trip {state.trips}). One probe call may go in {wait:.0f} s; find what changed, or have an "
                "admin reset the breaker (`comptroller breaker reset`)."
            ),
        )
    return Verdict(
        code=Code.CIRCUIT_OPEN, rule=Rule.BREAKER, detector="open", level=state.level, scope=state.scope,
        retry_after_s=wait, evidence=_evidence(state, config),
        message=(
            f"circuit_open: the spend-rate breaker of {state.level} {state.scope!r} is open: spend ran "
            f"above {format_usd(config.threshold_mc)} per {config.window_s} s window (trip {state.trips}, "
            f"cooldown {cooldown:g} s). One probe call may go in {wait:.1f} s; wait, or have an admin "
            "reset the breaker."
        ),
    )


def busy_verdict(state: BreakerState, config: BreakerConfig, now: datetime) -> Verdict:
    assert state.probe_expires_at is not None  # a lease always has an expiry; see admit
    wait = seconds_until(state.probe_expires_at, now)
    return Verdict(
        code=Code.CIRCUIT_OPEN, rule=Rule.BREAKER, detector="probe_in_flight", level=state.level,
        scope=state.scope, retry_after_s=wait, evidence=_evidence(state, config),
        message=(
            f"circuit_open: the spend-rate breaker of {state.level} {state.scope!r} is half-open and its "
            f"one probe call ({state.probe_id!r}) is in flight; other calls wait until it settles "
            f"(at most {wait:.1f} s, the probe lease). Retry then."
        ),
    )
