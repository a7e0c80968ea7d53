"""Ledger operations the gateway runs off its event loop, and the stores that can run one on it.

:class:`BoundedCall` is one operation in a worker thread whose caller may stop waiting for it
(:meth:`comptroller.gateway.runtime.Gateway.run` bounds the wait by ``ledger_timeout_s``);
:class:`InlineLedger` is a store that can hold itself for one operation without waiting
(SQLite's), so the operation runs on the loop instead: the hop to a thread and back was a third
of a call's CPU (BENCHMARKS.md, issue 14).
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any, Protocol, runtime_checkable

__all__ = ["BoundedCall", "InlineLedger", "holds_itself"]


@runtime_checkable
class InlineLedger(Protocol):
    """A ledger store that can hold itself for one operation without waiting (SQLite's).

    ``uncontended()`` yields True when the operation's calls will wait on no lock (they are
    taken for the block), False when something holds them (run the operation where a wait is bounded).
    """

    def uncontended(self) -> AbstractContextManager[bool]:
        """Take the store for one operation if it is free now; never waits."""

    def held_here(self) -> bool:
        """Whether another thread of this process holds the store now (its operation will end soon)."""


@functools.cache
def holds_itself(store_type: type) -> bool:
    """Whether a store class is an :class:`InlineLedger` (a protocol check is slow: once per class)."""
    return issubclass(store_type, InlineLedger)


class BoundedCall:
    """One operation run in a worker thread, whose caller may stop waiting for it.

    Whichever comes second, the operation's end or the caller giving up, decides: an
    operation that ends after :meth:`finish` was called hands its result to ``late``
    (in its own thread). A lock orders the two, so a result is used exactly once. The
    operation runs at most once: :meth:`run` and :meth:`claim` take it first.

    Args:
        operation: the ledger operation.
        args: its arguments.
        late: called with a result nobody waited for.
    """

    def __init__(self, operation: Callable[..., Any], args: tuple[Any, ...], *, late: Callable[[Any], None]) -> None:
        self._operation, self._args, self._late = operation, args, late
        self._lock = threading.Lock()
        self._outcome: tuple[bool, Any] | None = None  # (raised, value)
        self._abandoned = False
        self._claimed = False

    def claim(self) -> bool:
        """Take the operation to run it (then call :meth:`execute`); False when it has been taken already."""
        with self._lock:
            taken, self._claimed = self._claimed, True
        return not taken

    def run(self) -> None:
        """Run the operation (in the worker thread), unless it was claimed already."""
        if self.claim():
            self.execute()

    def execute(self) -> None:
        """Run the operation, after :meth:`claim` gave True."""
        try:
            outcome: tuple[bool, Any] = (False, self._operation(*self._args))
        except Exception as exc:
            outcome = (True, exc)
        with self._lock:
            self._outcome = outcome
            abandoned = self._abandoned
        if abandoned and not outcome[0]:
            self._late(outcome[1])

    def finish(self) -> bool:
        """Stop waiting: True when the outcome is in (use :meth:`result`), False when it will go to ``late``."""
        with self._lock:
            self._abandoned = self._outcome is None
            return not self._abandoned

    def result(self) -> Any:
        """The operation's value, or its exception raised (after :meth:`finish` gave True)."""
        assert self._outcome is not None
        raised, value = self._outcome
        if raised:
            raise value
        return value
