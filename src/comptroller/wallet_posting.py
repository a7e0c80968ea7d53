"""Posting the usage log to the wallets: the service the CLI (and any edge, after a settle) calls.

The usage log is the source of truth for what calls cost; the wallets follow it. A
posting pass reads the usage log and the stored transfers, computes the targets
(:func:`comptroller.domain.wallets.postings.targets`: LLM cost to the provider, service
and task fees from the tenant to the agent, infrastructure shares) and creates only the
transfers and adjustments that are missing (:func:`~comptroller.domain.wallets.postings.adjustments`).
Every id is derived from the usage row, so a pass is idempotent: running it after every
settle, every minute or once before a report gives the same wallets, and two passes at
once create each transfer once (the store answers the second ``exists``).

Why a pass over the log and not a hook inside ``Engine.settle``: the settle's ledger
transaction stays as it is (no second store in it, no new failure mode on the hot path),
and a crash between a settle and its posting loses nothing (the next pass posts it).
The cost: wallets lag the ledger until the next pass, so a wallet floor cannot refuse a
call at admit yet (see the README's "Wallets and P&L").
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from comptroller.domain.ledger import UsageRecord
from comptroller.domain.wallets.allocation import InfraItem
from comptroller.domain.wallets.fees import FeeSchedule
from comptroller.domain.wallets.postings import adjustments, targets
from comptroller.domain.wallets.transfers import TransferCode
from comptroller.storage.transfers import TransferStore

__all__ = ["PostingSummary", "post_usage"]

_BATCH = 500


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
    stored = {t.id: t for t in transfers.transfers()}
    new = adjustments(wanted, stored)
    codes: Counter[TransferCode] = Counter()
    for start in range(0, len(new), _BATCH):
        codes.update(r.code for r in transfers.create_transfers(new[start:start + _BATCH]))
    return PostingSummary(len(records), codes)
