"""Shared fixtures and settings: hypothesis profiles and the ledger store under test.

Every contract test takes the ``store`` fixture, which runs it once per backend in
``ledger_kit.BACKENDS``. Adding a backend (PostgreSQL) is one line there: a name and
a factory taking a directory for its files.

Hypothesis profiles (choose with ``HYPOTHESIS_PROFILE``): ``fast``, the default, keeps the
suite within its time budget on a 2-core machine; ``thorough`` runs ten times as
many examples for a nightly job.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from comptroller.ports import LedgerStore
from ledger_kit import BACKENDS

settings.register_profile(
    "fast", max_examples=40, stateful_step_count=40, deadline=None, database=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "thorough", max_examples=400, stateful_step_count=80, deadline=None, database=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "fast"))


@pytest.fixture(params=sorted(BACKENDS))
def backend(request: pytest.FixtureRequest) -> str:
    """The name of the ledger backend under test (one run per backend)."""
    return str(request.param)


@pytest.fixture
def make_store(backend: str, tmp_path: Path) -> Iterator[Callable[[], LedgerStore]]:
    """A factory opening the backend under test on fresh storage; every store is closed afterwards."""
    opened: list[LedgerStore] = []
    counter = iter(range(1_000_000))

    def make() -> LedgerStore:
        directory = tmp_path / f"store{next(counter)}"
        directory.mkdir()
        store = BACKENDS[backend](directory)
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.close()


@pytest.fixture
def store(make_store: Callable[[], LedgerStore]) -> LedgerStore:
    """A fresh, empty ledger of the backend under test."""
    return make_store()
