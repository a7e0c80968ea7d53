"""Inject a runaway loop into recorded traffic: one run re-attempted again and again.

The documented pattern is a retry loop: a task fails at its end and the scheduler
(or the agent) starts it over, paying every call again; one such loop cost $47,000
in 11 days ("Multi-Agent Mesh Economics"). ``--inject-loop RUN_ID:FACTOR`` makes
the run happen FACTOR times in all: copies 1 .. FACTOR-1 of its calls, each a new
attempt of the same task (same conversation and task ids, attempt id
``RUN_ID#k``), each starting ``gap_s`` after the previous copy's last call and
keeping the recorded spacing of its calls.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import timedelta

from comptroller.replay.trace import TraceRecord

__all__ = ["LoopSpecError", "inject_loop", "parse_loop_spec"]


class LoopSpecError(ValueError):
    """An ``--inject-loop`` value is malformed or names a run the traces do not have."""


def parse_loop_spec(spec: str) -> tuple[str, int]:
    """``RUN_ID:FACTOR`` -> (run id, factor); the run id may itself contain ``:``.

    Raises:
        LoopSpecError: when the factor is missing, not an integer, or below 2.
    """
    run_id, sep, factor = spec.rpartition(":")
    if not sep or not run_id or not factor.isdigit() or int(factor) < 2:
        raise LoopSpecError(f"--inject-loop takes RUN_ID:FACTOR with an integer FACTOR >= 2 (the run happens "
                            f"FACTOR times in all), got {spec!r}")
    return run_id, int(factor)


def inject_loop(records: Sequence[TraceRecord], run_id: str, factor: int, *,
                gap_s: float = 1.0) -> list[TraceRecord]:
    """The records with ``factor - 1`` re-attempts of ``run_id`` added, sorted by time.

    Args:
        records: the recorded calls (any order).
        run_id: the run to repeat.
        factor: how many times the run happens in all (>= 2).
        gap_s: seconds between one attempt's last call and the next attempt's first.

    Raises:
        LoopSpecError: if no record has ``run_id`` (the message lists a few that exist),
            or ``factor`` < 2.
    """
    if factor < 2:
        raise LoopSpecError(f"the loop factor must be >= 2, got {factor}")
    run = sorted((r for r in records if r.run_id == run_id and r.attempt == 0), key=lambda r: (r.ts, r.seq))
    if not run:
        known = sorted({r.run_id for r in records})[:5]
        raise LoopSpecError(f"--inject-loop: no run {run_id!r} in the traces; runs include {known}")
    span = run[-1].ts - run[0].ts + timedelta(seconds=gap_s)
    copies = [replace(r, ts=r.ts + span * k, attempt=k) for k in range(1, factor) for r in run]
    return sorted([*records, *copies], key=lambda r: (r.ts, r.run_id, r.attempt, r.seq))
