"""Posting the usage log to the wallets: the service the CLI (and any edge, after a settle) calls.

The usage log is the source of truth for what calls cost; the wallets follow it. A
posting pass reads the usage log and the stored transfers, computes the targets
(:func:`comptroller.domain.wallets.postings.targets`: LLM cost to the provider, service
and task fees from the tenant to the agent, infrastructure shares) and creates only the
transfers and adjustments that are missing (:func:`~comptroller.domain.wallets.postings.adjustments`).
Every id is derived from the usage row, so a pass is idempotent: running it after every
settle, every minute or once before a report gives the same wallets, and two passes at
once create each transfer once (the store answers the second ``exists``).

Two ways in: with a ``[fees]`` schedule, :func:`wallet_hooks` gives the engine a post-settle
hook (``Engine(on_settled=...)``, wired by :func:`comptroller.bootstrap.build_engine`) that posts
each call's cost and fees right after its settle commits, in a transaction of its own (the
settle's ledger transaction is unchanged, and a wallet store outage never fails a settle);
and a pass (``comptroller wallet post``, ``comptroller pnl``) posts whatever the hook missed:
infrastructure shares (they need whole periods), charges the expiry sweep wrote
(``unknown_outcome``), and anything lost to a crash between a settle and its posting.
Wallets therefore lag the ledger by at most one pass; a wallet floor is checked at admit against
the agent's floor row instead, which every settle moves exactly
(:mod:`comptroller.domain.wallets.floors`).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from comptroller.domain.ledger import UsageRecord
from comptroller.domain.wallets.allocation import InfraItem
from comptroller.domain.wallets.fees import FeeSchedule
from comptroller.domain.wallets.postings import ADJ_MAX, adjustments, targets
from comptroller.domain.wallets.transfers import Transfer, TransferCode
from comptroller.errors import LedgerUnavailableError
from comptroller.storage.transfer_stores import transfers_from_url
from comptroller.storage.transfers import TransferStore

__all__ = ["PostingSummary", "WalletPosting", "post_usage", "wallet_hooks"]

_log = logging.getLogger("comptroller.wallets")

_BATCH = 500
_FIRST_OUTCOMES = frozenset({"settled", "unknown_outcome"})  # a row's first charge (corrections: *_late)
_BULK = 64  # more targets than this: read every stored transfer once instead of by id


@dataclass(frozen=True, slots=True)
class PostingSummary:
    """What a pass did: ``records`` read, ``codes`` of the transfers it created (``ok`` = applied)."""

    records: int
    codes: Counter[TransferCode] = field(default_factory=Counter)

    @property
    def applied(self) -> int:
        """Transfers and adjustments applied by this pass."""
        return self.codes[TransferCode.OK]

    @property
    def problems(self) -> dict[str, int]:
        """Codes other than ok and exists (a concurrent pass), by name: each needs a look."""
        return {c.value: n for c, n in self.codes.items() if c not in (TransferCode.OK, TransferCode.EXISTS)}


def post_usage(records: Iterable[UsageRecord], transfers: TransferStore, *, fees: FeeSchedule | None = None,
               infra: Sequence[InfraItem] = ()) -> PostingSummary:
    """Bring the wallets to what the usage log calls for; idempotent.

    Args:
        records: the usage log (``LedgerStore.usage_records()``), or some of it: the records
            of one settle (``SettleResult.record``) post that call's cost and fee. Infra shares
            need the whole log of their periods.
        transfers: the wallet store beside the ledger.
        fees: the ``[fees]`` schedule (None: costs only).
        infra: the ``[[infra]]`` items.

    Returns:
        What was read and created.

    Raises:
        LedgerUnavailableError: if the wallet store cannot answer (nothing lost: run it again).
        ValueError: if a stored transfer disagrees with the log about its accounts.
    """
    records = list(records)
    wanted = targets(records, fees=fees, infra=infra)
    new = adjustments(wanted, _stored(transfers, wanted))
    codes: Counter[TransferCode] = Counter()
    for start in range(0, len(new), _BATCH):
        codes.update(r.code for r in transfers.create_transfers(new[start:start + _BATCH]))
    return PostingSummary(len(records), codes)


def _stored(transfers: TransferStore, wanted: Sequence[Transfer]) -> dict[str, Transfer]:
    """The stored transfers of the targets' ids and their adjustments (all of them, for a large pass)."""
    if len(wanted) > _BULK:
        return {t.id: t for t in transfers.transfers()}
    stored: dict[str, Transfer] = {}
    for t in wanted:
        found, n = transfers.transfer(t.id), 1
        while found is not None and n <= ADJ_MAX + 1:
            stored[found.id] = found
            found, n = transfers.transfer(f"{t.id}:adj{n}"), n + 1
    return stored


class WalletPosting:
    """A post-settle hook (``Engine(on_settled=[...])``): posts each settled call's cost and fees at once.

    A failure to reach the wallet store is logged, never raised into the settle (the call is
    already charged in the ledger); the next ``comptroller wallet post`` or ``pnl`` pass posts
    what was missed. Infrastructure shares are left to those passes (they need whole periods).

    Args:
        transfers: the wallet store.
        fees: the ``[fees]`` schedule (None: costs only).
    """

    def __init__(self, transfers: TransferStore, fees: FeeSchedule | None = None) -> None:
        self.transfers = transfers
        self.fees = fees

    def _post(self, record: UsageRecord) -> PostingSummary:
        """A first settle's transfers are new: create them in one round (no lookups); a correction, or an id
        stored with other fields, takes the full path (:func:`post_usage`: lookups and adjustments)."""
        if record.outcome not in _FIRST_OUTCOMES:
            return post_usage([record], self.transfers, fees=self.fees)
        wanted = [t for t in targets([record], fees=self.fees) if t.amount_mc > 0]
        codes = Counter(r.code for r in self.transfers.create_transfers(wanted))
        if codes[TransferCode.EXISTS_WITH_DIFFERENT_FIELDS]:
            return post_usage([record], self.transfers, fees=self.fees)
        return PostingSummary(1, codes)

    def __call__(self, record: UsageRecord) -> None:
        """Post one settled call."""
        try:
            summary = self._post(record)
        except LedgerUnavailableError as exc:
            _log.warning("wallet posting of %s deferred to the next pass: %s", record.reservation_id, exc)
            return
        if summary.problems:
            _log.warning("wallet posting of %s: %s", record.reservation_id, summary.problems)


def wallet_hooks(db_url: str, fees: FeeSchedule | None) -> list[WalletPosting]:
    """The post-settle hooks for an engine on ``db_url``: one :class:`WalletPosting` when a ``[fees]`` schedule
    is configured, else none (without fees, wallets are posted by ``comptroller wallet post`` / ``pnl`` passes,
    so engines of deployments that do not use wallets write nothing more per call).

    Raises:
        StoreURLError: for an unknown URL scheme.
    """
    return [] if fees is None else [WalletPosting(transfers_from_url(db_url), fees)]
