"""BoundedCall: a ledger operation whose caller may stop waiting; its result is used exactly once."""

from __future__ import annotations

import threading

import pytest

from comptroller.gateway.runtime import BoundedCall


def test_a_result_that_comes_after_the_caller_gave_up_goes_to_late() -> None:
    """The caller gives up first: finish() is False, and the result, when it comes, is handed to late once."""
    gate, late = threading.Event(), []
    call = BoundedCall(lambda x: (gate.wait(10), x)[1], (7,), late=late.append)
    worker = threading.Thread(target=call.run)
    worker.start()
    assert call.finish() is False
    gate.set()
    worker.join(10)
    assert late == [7]


def test_a_result_in_before_the_caller_gives_up_is_returned_and_not_late() -> None:
    """The operation ends first: finish() is True, result() gives its value (or raises its error), late is unused."""
    late: list[object] = []
    call = BoundedCall(lambda: 5, (), late=late.append)
    call.run()
    assert call.finish() is True and call.result() == 5
    failing = BoundedCall(lambda: 1 / 0, (), late=late.append)
    failing.run()
    assert failing.finish() is True
    with pytest.raises(ZeroDivisionError):
        failing.result()
    assert late == []


def test_an_operation_never_started_runs_once_when_claimed_after_the_timeout() -> None:
    """A settle whose thread never started is claimed and run by the caller's fallback; a later run() is a no-op."""
    runs: list[int] = []
    call = BoundedCall(lambda: runs.append(1), (), late=lambda _: None)
    assert call.finish() is False
    assert call.claim() is True
    call.execute()
    call.run()
    assert runs == [1]
