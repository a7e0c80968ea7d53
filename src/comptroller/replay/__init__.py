"""Replay: recorded agent traffic run through the ledger and policies in virtual time."""

from comptroller.replay.runner import CallOutcome, ReplayResult, replay
from comptroller.replay.trace import TraceError, TraceRecord, read_traces

__all__ = ["CallOutcome", "ReplayResult", "TraceError", "TraceRecord", "read_traces", "replay"]
