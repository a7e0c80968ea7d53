"""The SDK's batch ledger work: reserve a whole batch before it is sent, reconcile it once when it ends.

:class:`BatchLedger` holds a second :class:`~comptroller.engine.Engine` on the SDK engine's
store, clock, caps, defenses, limits and settle hooks, priced by :class:`~comptroller.prices.batch.BatchPrices`
(genai-prices' batch price, else the policy's ``[batch]`` discount): every line is admitted
like a call (every defense and budget) and settled at the batch price.

* :meth:`BatchLedger.reserve` admits every line with the key ``sdk_batch|<create id>|<custom_id>``
  and a lease of ``[batch] lease_s`` (default 86,400 s, the ledger's longest), or releases the
  holds taken and raises the first refusal: all lines or none, before anything is sent.
* :meth:`BatchLedger.open` writes the batch's state row (kind ``sdk_batch``, key the provider's
  batch id: api, tenant, status, custom_id -> reservation id), so any process on the same ledger,
  a restarted one too, can reconcile it.
* :meth:`BatchLedger.reconcile` applies :func:`comptroller.domain.batch_results.reconcile`:
  settle at the batch price, release, and report missing, duplicate and unexpected custom_ids
  in the row and one ledger event (kind ``batch``). Settles and releases are idempotent and the
  row is written by compare-and-set, so reconciling again changes nothing and answers the report.
* The process that sent a batch renews its line leases in the background
  (:class:`~comptroller.sdk.leases.LeaseKeeper`, each third of the lease) until it is reconciled;
  :meth:`BatchLedger.renew` extends the leases of a batch still running on every retrieve (so a
  restarted process keeps them alive too); a lease that ran out anyway is charged its ceiling
  (``unknown_outcome``) until the reconcile corrects it to the real cost.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from comptroller.batch_config import BatchSection
from comptroller.domain.batch_results import LineResult, Unreturned, reconcile
from comptroller.domain.batches import BatchInputError, BatchLine
from comptroller.domain.defenses.verdict import JsonScalar
from comptroller.domain.ledger import Event
from comptroller.domain.pricing import cost_mc
from comptroller.domain.state import StateKey, StoredState
from comptroller.domain.usage import Usage
from comptroller.domain.usage_checks import check_usage
from comptroller.engine import Admission, CallRequest, Engine
from comptroller.prices.batch import BatchPrices
from comptroller.sdk.context import CallContext
from comptroller.sdk.errors import refused
from comptroller.sdk.leases import LeaseKeeper

__all__ = ["SDK_BATCH", "BatchLedger"]

log = logging.getLogger("comptroller.sdk")

SDK_BATCH = "sdk_batch"
"""The state-row kind of batches created through the SDK (key: the provider's batch id)."""

_LIST_MAX = 1000  # custom_ids listed per kind in a report (the counts are complete)
_RENEW_MARGIN = timedelta(hours=8)  # renew on retrieve when a lease has less than this left


class BatchLedger:
    """Batch reservations and reconciliation for one :class:`~comptroller.sdk.governor.Comptroller`.

    Args:
        engine: the Comptroller's engine (its store, clock, caps, defenses, sinks are shared).
        section: the policy's ``[batch]`` section (prices without a genai-prices batch price, lease length).
        leases: renews the line leases of the batches this process sent, each third of their length, until
            they are reconciled (a restarted process renews on ``retrieve`` instead: :meth:`renew`).
    """

    def __init__(self, engine: Engine, section: BatchSection, leases: LeaseKeeper | None = None) -> None:
        self.section = section
        self.leases = leases
        self.engine = Engine(store=engine.store, prices=BatchPrices(engine.prices, section), clock=engine.clock,
                             caps=engine.caps, ttl_s=section.lease_s, defenses=engine.defenses,
                             sinks=[engine.sinks], on_settled=engine.on_settled, limits=engine.limits)

    def reserve(self, lines: Sequence[BatchLine], context: CallContext, create_id: str) -> dict[str, Admission]:
        """Admit every line at the batch price, or none.

        Returns:
            custom_id -> its admission (``output_tokens_max`` is the bound to send).

        Raises:
            RefusedError: (its code's subclass) for the first line a defense or budget refuses;
                the holds already taken are released first.
            BatchInputError: for a line the engine would move to another model (a batch cannot be rerouted).
            UnknownModelError, NoOutputCapError: for a model without a price or an output bound.
        """
        taken: dict[str, Admission] = {}
        try:
            for line in lines:
                call = CallRequest(attribution=context.attribution(), model=line.model,
                                   input_tokens_max=line.input_tokens_max, max_tokens=line.max_tokens,
                                   idempotency_key=f"{SDK_BATCH}|{create_id}|{line.custom_id}",
                                   ttl_s=self.section.lease_s, run_id=context.run_id, attempt_id=context.attempt_id,
                                   sends=True, choices=line.choices)
                admission = self.engine.admit(call)
                if admission.reservation is None:
                    assert admission.verdict is not None
                    raise refused(admission.verdict)
                taken[line.custom_id] = admission
                route = admission.route
                if route is not None and route.model != route.requested_model:
                    raise BatchInputError(f"{line.custom_id}: {route.detail}; a batch cannot be moved to another "
                                          "model, so send it on an allowed model", param=f"{line.custom_id}.model")
        except BaseException:
            self.release(taken.values())
            raise
        return taken

    def release(self, admissions: Any) -> None:
        """Return the holds of admissions; a ledger failure is logged (the leases expire)."""
        for admission in list(admissions):
            if admission.reservation is None:
                continue
            try:
                self.engine.release(admission.reservation)
            except Exception:
                log.exception("release of batch line %s failed; its hold returns at lease expiry",
                              admission.reservation.id)

    def open(self, batch_id: str, api: str, context: CallContext, held: dict[str, Admission]) -> None:
        """Record a sent batch (state row ``sdk_batch``/``batch_id``) so any process can reconcile it."""
        lines = {cid: a.reservation.id for cid, a in held.items() if a.reservation is not None}
        record: dict[str, JsonScalar] = {"api": api, "tenant": context.tenant or "", "status": "open",
                                         "lines": json.dumps(lines), "report": "{}",
                                         "ceiling_mc": sum(a.ceiling_mc for a in held.values())}
        if not self.engine.store.put_state(StoredState(StateKey(SDK_BATCH, batch_id), 1, record), 0):
            log.error("batch %s was already recorded; keeping the first record", batch_id)
        if self.leases is not None:
            for admission in held.values():
                if admission.reservation is not None:
                    self.leases.hold(admission.reservation)

    def open_ids(self, api: str) -> list[str]:
        """The batches of ``api`` (``openai`` | ``anthropic``) created through the SDK and not reconciled yet."""
        return [stored.key.key for stored in self.engine.store.states(SDK_BATCH)
                if stored.record.get("status") == "open" and stored.record.get("api") == api]

    def is_open(self, batch_id: str) -> bool:
        """True when the batch was created through the SDK and is not reconciled yet."""
        stored = self.engine.store.state(StateKey(SDK_BATCH, batch_id))
        return stored is not None and stored.record.get("status") == "open"

    def report(self, batch_id: str) -> dict[str, Any] | None:
        """The reconciliation report of a batch (``{}`` while open), or None for a batch the SDK did not create."""
        stored = self.engine.store.state(StateKey(SDK_BATCH, batch_id))
        if stored is None:
            return None
        value: dict[str, Any] = json.loads(str(stored.record.get("report") or "{}"))
        return value

    def renew(self, batch_id: str) -> int:
        """Extend the line leases of a running batch that have less than 8 hours left; the number renewed."""
        stored = self.engine.store.state(StateKey(SDK_BATCH, batch_id))
        if stored is None or stored.record.get("status") != "open":
            return 0
        renewed = 0
        for reservation_id in json.loads(str(stored.record["lines"])).values():
            reservation = self.engine.store.reservation(reservation_id)
            if reservation is not None and reservation.expires_at - self.engine.clock.now() < _RENEW_MARGIN:
                renewed += bool(self.engine.renew(reservation, self.section.lease_s))
        return renewed

    def reconcile(self, batch_id: str, results: list[LineResult], unreturned: Unreturned,
                  provider_status: str) -> dict[str, Any] | None:
        """Settle and release a finished batch's lines once, and report.

        Args:
            batch_id: the provider's batch id.
            results: every result line the provider returned.
            unreturned: what to do with submitted custom_ids not returned.
            provider_status: the provider's final status (``ended``, ``completed``, ``expired``...).

        Returns:
            The report (counts, cost, missing / duplicate / unexpected custom_ids), the stored one
            when the batch was reconciled before; None for a batch the SDK did not create.
        """
        key = StateKey(SDK_BATCH, batch_id)
        stored = self.engine.store.state(key)
        if stored is None:
            return None
        if stored.record.get("status") != "open":
            return self.report(batch_id)
        lines: dict[str, str] = json.loads(str(stored.record["lines"]))
        plan = reconcile(lines, results, unreturned=unreturned)
        cost, anomalies = 0, []
        for custom_id, usage in plan.settle.items():
            reservation = self.engine.store.reservation(lines[custom_id])
            if reservation is not None and self.leases is not None:
                self.leases.drop(reservation)
            if reservation is None:
                log.error("batch line reservation %s is not in the ledger; nothing to settle", lines[custom_id])
                continue
            if usage is not None:
                anomalies += [{"custom_id": custom_id, "bucket": a.bucket, "bound_tokens": a.bound_tokens,
                               "reported_tokens": a.reported_tokens}
                              for a in check_usage(usage, input_tokens_max=reservation.input_tokens_max,
                                                   output_tokens_max=reservation.output_tokens_max)]
            charged = usage or Usage(input_tokens=reservation.input_tokens_max,
                                     output_tokens=reservation.output_tokens_max)
            result = self.engine.settle(reservation, charged, served_model=plan.served.get(custom_id))
            # None: settled by an earlier pass cut short (its cost at the admitted model's batch price)
            cost += result.record.cost_mc if result.record is not None else cost_mc(
                self.engine.prices.price(reservation.model, reservation.created_at), charged)
        for custom_id in plan.release:
            reservation = self.engine.store.reservation(lines[custom_id])
            if reservation is not None:
                if self.leases is not None:
                    self.leases.drop(reservation)
                self.engine.release(reservation)
        report = {"status": "reconciled", "batch_status": provider_status, "lines": len(lines),
                  "ceiling_mc": stored.record.get("ceiling_mc"), "settled": len(plan.settle), "cost_mc": cost,
                  "released": len(plan.release), "missing": len(plan.missing), "duplicate": len(plan.duplicate),
                  "unexpected": len(plan.unexpected), "usage_anomalies": anomalies[:_LIST_MAX],
                  "missing_custom_ids": plan.missing[:_LIST_MAX], "duplicate_custom_ids": plan.duplicate[:_LIST_MAX],
                  "unexpected_custom_ids": plan.unexpected[:_LIST_MAX]}
        gaps = plan.missing or plan.duplicate or plan.unexpected
        event = Event(ts=self.engine.clock.now(), kind="batch", code="batch_mismatch" if gaps else "batch_reconciled",
                      detail={"batch_id": batch_id, "api": str(stored.record.get("api")), "via": "sdk",
                              **{k: v[:100] if isinstance(v, list) else v for k, v in report.items()}})
        done = StoredState(key, stored.version + 1, {**stored.record, "status": "reconciled",
                                                     "report": json.dumps(report)})
        if self.engine.store.put_state(done, stored.version, [event]):
            self.engine.sinks.publish([event])
            return report
        return self.report(batch_id)  # another process reconciled it first: its report
