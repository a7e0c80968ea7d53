"""Token sizes for simulated rooms, drawn from the shipped real traces (``data/traces/``).

* a member's **prompt** (its role and task instructions, read before the room) is the
  input of the first call of a recorded run: the run's opening prompt, with no history
  yet (97 values in the ChatDev corpus; median 445 tokens);
* a **message** (an input to the room or a reply) is the output of a recorded call
  (every call with output; 1,901 values; median 303, mean 452 tokens).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from comptroller.replay.trace import TraceRecord, read_traces

__all__ = ["TokenSizes"]


@dataclass(frozen=True, slots=True)
class TokenSizes:
    """Pools of real token counts to draw from.

    Attributes:
        prompts: opening-prompt sizes, tokens (each > 0).
        messages: message sizes, tokens (each > 0).

    Raises:
        ValueError: if a pool is empty or holds a non-positive size.
    """

    prompts: tuple[int, ...]
    messages: tuple[int, ...]

    def __post_init__(self) -> None:
        for name in ("prompts", "messages"):
            pool = getattr(self, name)
            if not pool or any(type(n) is not int or n <= 0 for n in pool):
                raise ValueError(f"token sizes: {name} must be a non-empty list of positive token counts")

    @classmethod
    def from_records(cls, records: Iterable[TraceRecord]) -> TokenSizes:
        """Prompts from each run's first call, messages from every call's output.

        Raises:
            ValueError: if the records hold no call with output.
        """
        first: dict[str, TraceRecord] = {}
        messages: list[int] = []
        for record in records:
            if record.output_tokens > 0:
                messages.append(record.output_tokens)
            if record.run_id not in first or record.seq < first[record.run_id].seq:
                first[record.run_id] = record
        prompts = [r.input_tokens for r in first.values() if r.input_tokens > 0]
        if not messages or not prompts:
            raise ValueError("the traces hold no call with input and output tokens to draw sizes from")
        return cls(prompts=tuple(prompts), messages=tuple(messages))

    @classmethod
    def from_traces(cls, paths: Iterable[str | Path]) -> TokenSizes:
        """Read JSONL traces (:func:`comptroller.replay.trace.read_traces`) and build the pools.

        Raises:
            TraceError: on a malformed line; FileNotFoundError for a missing file.
        """
        records, _ = read_traces(paths)
        return cls.from_records(records)
