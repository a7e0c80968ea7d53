"""Wallets: double-entry transfers, service fees and shared-cost allocation (DESIGN.md rule 10).

Pure rules, no I/O: :mod:`.transfers` (the transfer, its result codes and their order),
:mod:`.accounts` (account names), :mod:`.fees` (the service fee formula),
:mod:`.allocation` (infrastructure cost shared by largest remainder), :mod:`.postings` (what the
usage log calls for) and :mod:`.pnl` (profit and loss rows). Stores live in
:mod:`comptroller.storage.transfers`; the posting service in
:mod:`comptroller.wallet_posting`.
"""

from comptroller.domain.wallets.accounts import PLATFORM_REVENUE, AccountKind, account_kind
from comptroller.domain.wallets.allocation import AllocationBasis, AllocationTarget, InfraItem, allocate
from comptroller.domain.wallets.fees import FeeSchedule, service_fee_mc
from comptroller.domain.wallets.transfers import AccountBalance, Transfer, TransferCode, TransferResult, decide

__all__ = ["PLATFORM_REVENUE", "AccountBalance", "AccountKind", "AllocationBasis", "AllocationTarget",
           "FeeSchedule", "InfraItem", "Transfer", "TransferCode", "TransferResult", "account_kind", "allocate",
           "decide", "service_fee_mc"]
