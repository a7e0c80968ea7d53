"""Group commit for the PostgreSQL ledger: one store's concurrent calls sent as one batch.

A caller hands its item to :meth:`Batcher.submit` and waits. When no batch is in flight, the
caller at the head of the queue becomes the leader: it takes every queued item (at most
``max_items``), sends them in one call of ``send`` (one server function call, one transaction,
one commit), hands each waiter its own answer, and lets the next leader go. So the items that
arrive while a batch is being committed ride together in the next one, and a lone caller is
sent at once, alone (no timer, no added wait).

``send`` answers per item; an exception it raises is every item's answer (the caller decides
which errors those are: the store turns a batch's statement error into "run each item alone",
so one bad item fails only itself).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Generic, TypeVar, cast

__all__ = ["Batcher"]

_I = TypeVar("_I")
_R = TypeVar("_R")


class _Slot(Generic[_I, _R]):
    """One caller's item and, once its batch is back, its answer or error."""

    __slots__ = ("done", "error", "item", "result", "taken")

    def __init__(self, item: _I) -> None:
        self.item = item
        self.taken = False
        self.done = False
        self.result: _R | None = None
        self.error: BaseException | None = None


class Batcher(Generic[_I, _R]):
    """Collects concurrent callers' items and sends them in batches, one batch in flight at a time.

    Args:
        send: sends a batch (1 to ``max_items`` items, in arrival order); returns one answer per
            item, in that order. Runs on the leader's thread.
        max_items: items per batch, at most (>= 1).
        wait_s: how long an item may wait for a batch to take it, seconds; then it leaves the queue
            with the answer ``alone`` (its caller runs it by itself, with its own bounded waits), so a
            stalled batch never holds the callers behind it longer than this.
        alone: that answer.

    Raises:
        ValueError: if ``max_items`` < 1.
    """

    def __init__(self, send: Callable[[Sequence[_I]], Sequence[_R]], *, max_items: int, wait_s: float,
                 alone: _R) -> None:
        if max_items < 1:
            raise ValueError(f"max_items must be at least 1, got {max_items}")
        self._send = send
        self._max = max_items
        self._wait_s = wait_s
        self._alone = alone
        self._queue: list[_Slot[_I, _R]] = []
        self._busy = False
        self._cond = threading.Condition()
        self.batches = 0
        """Batches sent so far."""
        self.items = 0
        """Items sent so far (``items / batches``: the mean batch size)."""

    def submit(self, item: _I) -> _R:
        """Send ``item`` in the next batch and return its answer (``alone`` if no batch took it within ``wait_s``).

        Raises:
            BaseException: whatever ``send`` raised for the batch that carried the item.
        """
        slot: _Slot[_I, _R] = _Slot(item)
        deadline = time.monotonic() + self._wait_s
        with self._cond:
            self._queue.append(slot)
        while True:
            with self._cond:
                while not slot.done and self._busy:
                    left = deadline - time.monotonic()
                    if left <= 0 and not slot.taken:  # no batch took it in time: its caller runs it alone
                        self._queue.remove(slot)
                        return self._alone
                    self._cond.wait(left if left > 0 else None)
                if slot.done:
                    break
                self._busy = True
                batch = self._queue[:self._max]
                del self._queue[:self._max]
                for s in batch:
                    s.taken = True
            self._lead(batch)
        if slot.error is not None:
            raise slot.error
        return cast(_R, slot.result)  # set with done whenever error is not

    @property
    def queued(self) -> int:
        """How many items wait for a batch now."""
        with self._cond:
            return len(self._queue)

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Send nothing while the block runs (after the batch in flight, if any): the items submitted
        meanwhile wait and then go together, in batches of at most ``max_items``."""
        with self._cond:
            while self._busy:
                self._cond.wait()
            self._busy = True
        try:
            yield
        finally:
            with self._cond:
                self._busy = False
                self._cond.notify_all()

    def _lead(self, batch: list[_Slot[_I, _R]]) -> None:
        """Send one batch and hand out its answers (every slot gets one, even when ``send`` fails)."""
        try:
            answers = self._send([s.item for s in batch])
            if len(answers) != len(batch):
                raise RuntimeError(f"a batch of {len(batch)} items got {len(answers)} answers")
            for s, answer in zip(batch, answers, strict=True):
                s.result = answer
        except BaseException as exc:  # every item of the batch gets the error; the leader's own included
            for s in batch:
                s.error = exc
        finally:
            with self._cond:
                for s in batch:
                    s.done = True
                self.batches += 1
                self.items += len(batch)
                self._busy = False
                self._cond.notify_all()
