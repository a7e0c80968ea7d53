"""Time windows aligned to the UNIX epoch, so every process counts the same windows.

A window of ``window_s`` seconds has index ``floor((t - 1970-01-01T00:00Z) / window_s)``
and covers ``[index * window_s, (index + 1) * window_s)`` seconds after the epoch.
Two processes that see the same instant compute the same index without talking to
each other; the index is exact integer arithmetic on :class:`~datetime.timedelta`
(microseconds), never a float.

Used by the spend-rate breaker (:mod:`comptroller.domain.breaker`) and the kill
switch's automatic trigger (:mod:`.killswitch`).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from comptroller.domain.defenses._checks import require_aware

__all__ = ["EPOCH", "US_PER_S", "epoch_seconds", "epoch_us", "seconds_until", "window_bounds", "window_index"]

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
US_PER_S = 1_000_000
_LENGTHS: dict[int, timedelta] = {}  # window_s -> its timedelta (a few window lengths are configured)


def window_index(now: datetime, window_s: int) -> int:
    """The index of the aligned window containing ``now``.

    Args:
        now: an aware instant.
        window_s: the window length, whole seconds (>= 1).

    Raises:
        ValueError: on a naive ``now`` or a window shorter than 1 s.
    """
    length = _LENGTHS.get(window_s)
    if length is None:
        if window_s < 1:
            raise ValueError(f"window_s must be >= 1 second, got {window_s!r}")
        length = _LENGTHS[window_s] = timedelta(seconds=window_s)
    try:
        return (now - EPOCH) // length
    except TypeError:  # a naive datetime (or not a datetime): the ValueError below names it
        require_aware("now", now)
        raise


def epoch_us(now: datetime) -> int:
    """Whole microseconds from the epoch to ``now`` (exact).

    Raises:
        ValueError: on a naive ``now``.
    """
    since = _since_epoch(now)
    return (since.days * 86_400 + since.seconds) * US_PER_S + since.microseconds


def epoch_seconds(now: datetime) -> int:
    """Whole seconds from the epoch to ``now``, rounded down (exact): ``epoch_seconds(now) // window_s`` is
    :func:`window_index`, so a settle counting several windows subtracts once and divides small integers.

    Raises:
        ValueError: on a naive ``now``.
    """
    since = _since_epoch(now)
    return since.days * 86_400 + since.seconds  # 0 <= microseconds < 1 s: the floor


def _since_epoch(now: datetime) -> timedelta:
    try:
        return now - EPOCH
    except TypeError:  # a naive datetime (or not a datetime): the ValueError below names it
        require_aware("now", now)
        raise


def window_bounds(index: int, window_s: int) -> tuple[datetime, datetime]:
    """Start (inclusive) and end (exclusive) of window ``index``, aware UTC."""
    start = EPOCH + timedelta(seconds=index * window_s)
    return start, start + timedelta(seconds=window_s)


def seconds_until(later: datetime, now: datetime) -> float:
    """Seconds from ``now`` to ``later``, never negative (0 once ``later`` has passed)."""
    return max(0.0, (later - now).total_seconds())
