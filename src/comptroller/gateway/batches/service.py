"""The batch ledger work of one gateway worker: reserve a whole batch, reconcile it when it ends.

:class:`BatchService` holds a second :class:`~comptroller.engine.Engine` on the gateway
engine's store, clock, caps, defenses, limits (quotas, rate limits) and settle hooks (wallet
posting), priced by :class:`BatchPrices`: every batch line
is admitted (every defense and budget, attributed like a call) and settled at the batch
price on the same integer path as a call.

* :meth:`reserve` admits every line with the key ``batch|tenant|create key|attempt|custom_id``
  and a lease of ``[batch] lease_s``, or releases the ones taken and answers the first
  refusal: all lines or none.
* :meth:`reconcile` applies :func:`comptroller.domain.batch_results.reconcile` to a finished
  batch's results: settle (at the batch price), release, report missing, duplicate and
  unexpected custom_ids in the batch's state row and one ledger event (kind ``batch``).
  Settle and release are idempotent and the row is written by compare-and-set, so
  reconciling again changes nothing.
* A background task (:meth:`start`) looks at every open batch each ``reconcile_interval_s``
  (asking the provider through the API module's ``poll``), reconciles those that ended and
  renews the leases of the others before they run out.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import anyio

from comptroller.batch_config import BatchSection
from comptroller.domain.batch_results import LineResult, Unreturned, reconcile
from comptroller.domain.caps import NoOutputCapError
from comptroller.domain.codes import Code
from comptroller.domain.ledger import Event, Reservation, ReservationState, SettleResult
from comptroller.domain.pricing import cost_mc
from comptroller.domain.scopes import Attribution, scope_key
from comptroller.domain.state import StateKey
from comptroller.domain.usage import Usage
from comptroller.domain.usage_checks import UsageAnomaly, check_usage
from comptroller.engine import Admission, CallRequest, Engine
from comptroller.gateway.batches.provider import BatchUpstream
from comptroller.gateway.batches.records import BATCH, BATCH_LINES, BatchRecord, lines_from_state
from comptroller.gateway.errors import GatewayError
from comptroller.gateway.runtime import Gateway
from comptroller.prices import UnknownModelError
from comptroller.prices.batch import BatchPrices

__all__ = ["BatchService", "PlannedLine", "Poll"]

log = logging.getLogger("comptroller.gateway.batches")
_LIST_MAX = 1000  # custom_ids listed per kind in a report (the counts are complete)


@dataclass(frozen=True, slots=True)
class PlannedLine:
    """A line to reserve: its id, model and bounds (``max_tokens`` per choice; None: the cap decides)."""

    custom_id: str
    model: str
    input_tokens_max: int
    max_tokens: int | None
    choices: int = 1


Poll = Callable[["BatchService", BatchRecord], Awaitable[tuple[list[LineResult], Unreturned, str] | None]]
"""An API's look at a batch: its results, what to do with unreturned lines, and the
provider's status, when the batch has ended (None while it runs)."""


def _ledger_unavailable() -> GatewayError:
    return GatewayError(503, "the ledger cannot be reached, so the batch is refused rather than sent unmetered; "
                        "retry shortly", type_="api_error", code="ledger_unavailable", headers={"Retry-After": "1"})


class BatchService:
    """Batch reservations and reconciliation for one worker.

    Args:
        gw: the worker's gateway (engine, config, ledger runner).
        section: the policy's ``[batch]`` section.
        polls: api name -> its :data:`Poll` (for the background reconciler).
    """

    def __init__(self, gw: Gateway, section: BatchSection, polls: dict[str, Poll] | None = None) -> None:
        base = gw.engine
        self.gw = gw
        self.section = section
        self.engine = Engine(store=base.store, prices=BatchPrices(base.prices, section), clock=base.clock,
                             caps=base.caps, ttl_s=section.lease_s, defenses=base.defenses, sinks=[base.sinks],
                             on_settled=base.on_settled, limits=base.limits)
        self.upstream = BatchUpstream(gw.config)
        self.polls = dict(polls or {})
        self._locks: dict[str, asyncio.Lock] = {}
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Start the background reconciler (in the worker's event loop)."""
        self._task = asyncio.create_task(self._reconciler(), name="comptroller-batch-reconciler")

    async def aclose(self) -> None:
        """Stop the reconciler and close the provider pool (batch leases stay: they outlive the worker)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.upstream.aclose()

    async def ledger(self, operation: Callable[..., Any], *args: Any) -> Any:
        """Run a ledger operation through the gateway's runner, fail-closed (503 on any failure)."""
        try:
            return await self.gw.run(operation, *args)
        except GatewayError:
            raise
        except Exception:
            log.exception("batch ledger operation %s failed", getattr(operation, "__name__", operation))
            raise _ledger_unavailable() from None

    async def reserve(self, lines: Sequence[PlannedLine], attribution: Attribution,
                      key_prefix: str) -> dict[str, Admission] | tuple[str, Admission]:
        """Admit every line, or none.

        Returns:
            custom_id -> admission when all were admitted; else ``(custom_id, admission)`` of
            the first refused line (the holds already taken are released).

        Raises:
            GatewayError: 400 for a model without a price or an output bound, or a line the
                engine would move to another model (a batch cannot be rerouted); 503 when the
                ledger fails. Holds already taken are released first.
        """
        taken: dict[str, Admission] = {}
        try:
            for line in lines:
                call = CallRequest(attribution=attribution, model=line.model, input_tokens_max=line.input_tokens_max,
                                   max_tokens=line.max_tokens, idempotency_key=f"{key_prefix}|{line.custom_id}",
                                   ttl_s=self.section.lease_s, sends=True, choices=line.choices)
                admission = await self.ledger(self._admit, call)
                if admission.reservation is None:
                    await self.release(taken.values())
                    return line.custom_id, admission
                taken[line.custom_id] = admission
                self._check_admitted(line, admission)
        except BaseException:
            with anyio.CancelScope(shield=True):  # a cancelled create still returns its holds
                await self.release(taken.values())
            raise
        return taken

    def _admit(self, call: CallRequest) -> Admission:
        try:
            return self.engine.admit(call)
        except UnknownModelError as exc:
            raise GatewayError(400, str(exc), code="model_not_found", param="model") from None
        except NoOutputCapError as exc:
            raise GatewayError(400, f"{exc}; send max_tokens", code="invalid_request", param="max_tokens") from None

    @staticmethod
    def _check_admitted(line: PlannedLine, admission: Admission) -> None:
        reservation = admission.reservation
        assert reservation is not None
        if admission.code is Code.ALREADY_RESERVED and reservation.state is not ReservationState.PENDING:
            raise GatewayError(409, f"line {line.custom_id!r}: its hold from an earlier attempt is "
                               f"{reservation.state}; retry the create with a new Idempotency-Key",
                               code="idempotency_conflict")
        route = admission.route
        if route is not None and route.model != route.requested_model:
            raise GatewayError(400, f"line {line.custom_id!r}: {route.detail}; a batch cannot be moved to another "
                               "model, so send it on an allowed model", code="model_not_allowed", param="model")

    async def release(self, admissions: Any) -> None:
        """Return the holds of admissions (or reservations); a ledger failure is logged (leases expire)."""
        for item in list(admissions):
            reservation = item.reservation if isinstance(item, Admission) else item
            if reservation is None:
                continue
            try:
                await self.gw.run(self.engine.release, reservation)
            except Exception:
                log.exception("release of batch line %s failed; its hold returns at lease expiry", reservation.id)

    def record(self, batch_id: str) -> tuple[BatchRecord, int] | None:
        """The batch's row and version, or None (ledger read: call through :meth:`ledger`)."""
        stored = self.engine.store.state(StateKey(BATCH, batch_id))
        return None if stored is None else (BatchRecord.from_state(stored), stored.version)

    async def reconcile(self, batch_id: str, results: list[LineResult], unreturned: Unreturned,
                        provider_status: str) -> dict[str, Any]:
        """Settle and release a finished batch's lines once; the report (stored, so a repeat answers it).

        Raises:
            GatewayError: 503 when the ledger fails (nothing is marked reconciled; the next pass redoes it).
        """
        lock = self._locks.setdefault(batch_id, asyncio.Lock())
        async with lock:
            found = await self.ledger(self.record, batch_id)
            if found is None:
                raise GatewayError(404, f"no batch {batch_id!r}", code="not_found")
            record, version = found
            if record.status == "reconciled":
                done: dict[str, Any] = record.reconciliation
                return done
            stored = await self.ledger(self.engine.store.state, StateKey(BATCH_LINES, batch_id))
            lines = lines_from_state(stored) if stored is not None else {}
            plan = reconcile(lines, results, unreturned=unreturned)
            cost, anomalies = 0, []
            for custom_id, usage in plan.settle.items():
                line_cost, seen = await self._settle(lines[custom_id], usage, plan.served.get(custom_id))
                cost += line_cost
                anomalies += [{"custom_id": custom_id, "bucket": a.bucket, "bound_tokens": a.bound_tokens,
                               "reported_tokens": a.reported_tokens} for a in seen]
            await self.release([r for r in [await self.ledger(self.engine.store.reservation, lines[c])
                                            for c in plan.release] if r is not None])
            report = {"status": "reconciled", "batch_status": provider_status, "lines": len(lines),
                      "ceiling_mc": record.ceiling_mc, "settled": len(plan.settle), "cost_mc": cost,
                      "released": len(plan.release), "missing": len(plan.missing),
                      "duplicate": len(plan.duplicate), "unexpected": len(plan.unexpected),
                      "usage_anomalies": anomalies[:_LIST_MAX],
                      "missing_custom_ids": plan.missing[:_LIST_MAX],
                      "duplicate_custom_ids": plan.duplicate[:_LIST_MAX],
                      "unexpected_custom_ids": plan.unexpected[:_LIST_MAX]}
            return await self._mark(record, version, report)

    async def _settle(self, reservation_id: str, usage: Usage | None,
                      served_model: str | None) -> tuple[int, tuple[UsageAnomaly, ...]]:
        """Settle one line (its bound when usage is None) at the batch price of the model served.

        Returns:
            What it charged (millicents; 0 on a repeat) and its usage above the line's bounds
            (charged in full: the provider bills it; reported).
        """
        reservation: Reservation | None = await self.ledger(self.engine.store.reservation, reservation_id)
        if reservation is None:
            log.error("batch line reservation %s is not in the ledger; nothing to settle", reservation_id)
            return 0, ()
        anomalies = () if usage is None else check_usage(usage, input_tokens_max=reservation.input_tokens_max,
                                                         output_tokens_max=reservation.output_tokens_max)
        usage = usage or Usage(input_tokens=reservation.input_tokens_max, output_tokens=reservation.output_tokens_max)
        result = await self.ledger(self._settle_served, reservation, usage, served_model)
        if result.record is None:  # settled by an earlier pass cut short: its cost at the admitted model's price
            return cost_mc(self.engine.prices.price(reservation.model, reservation.created_at), usage), anomalies
        return result.record.cost_mc, anomalies

    def _settle_served(self, reservation: Reservation, usage: Usage, served_model: str | None) -> SettleResult:
        return self.engine.settle(reservation, usage, served_model=served_model)

    async def _mark(self, record: BatchRecord, version: int, report: dict[str, Any]) -> dict[str, Any]:
        """Write the report by compare-and-set with its event; a lost race answers the winner's report."""
        done = dataclasses.replace(record, status="reconciled", reconciliation=report)
        gaps = report["missing"] or report["duplicate"] or report["unexpected"]
        detail = {k: v[:100] if isinstance(v, list) else v for k, v in report.items()}
        event = Event(ts=self.engine.clock.now(), kind="batch", code="batch_mismatch" if gaps else "batch_reconciled",
                      level="tenant", scope=scope_key(self.gw.namespace, record.tenant),
                      detail={"batch_id": record.batch_id, "api": record.api, **detail})
        if await self.ledger(self.engine.store.put_state, done.state(version + 1), version, [event]):
            self.engine.sinks.publish([event])
            return report
        found = await self.ledger(self.record, record.batch_id)
        return report if found is None else found[0].reconciliation

    async def _reconciler(self) -> None:
        while True:
            await asyncio.sleep(self.section.reconcile_interval_s)
            try:
                await self.reconcile_open()
            except Exception:
                log.exception("batch reconciler pass failed; retrying in %g s", self.section.reconcile_interval_s)

    async def reconcile_open(self) -> int:
        """One pass over every open batch: reconcile those that ended, renew the others' leases.

        Returns:
            The number of batches reconciled in this pass.
        """
        done = 0
        for stored in await self.ledger(self.engine.store.states, BATCH):
            record = BatchRecord.from_state(stored)
            poll = self.polls.get(record.api)
            if record.status != "open" or poll is None:
                continue
            try:
                ended = await poll(self, record)
                if ended is None:
                    await self._renew(record)
                else:
                    await self.reconcile(record.batch_id, *ended)
                    done += 1
            except Exception:
                log.exception("reconciling batch %s failed; the next pass retries", record.batch_id)
        return done

    async def _renew(self, record: BatchRecord) -> None:
        """Extend the line leases of an open batch that would run out before two more passes.

        A lease that ran out anyway (the gateway was down) was charged its ceiling as
        ``unknown_outcome`` (the lines are sent); the reconcile corrects it to the real cost.
        """
        stored = await self.ledger(self.engine.store.state, StateKey(BATCH_LINES, record.batch_id))
        ids = list(lines_from_state(stored).values()) if stored is not None else []
        first = await self.ledger(self.engine.store.reservation, ids[0]) if ids else None
        margin = timedelta(seconds=2 * self.section.reconcile_interval_s + 600)
        if first is None or first.expires_at - self.engine.clock.now() > margin:
            return
        for reservation_id in ids:
            reservation = await self.ledger(self.engine.store.reservation, reservation_id)
            if reservation is not None:
                await self.ledger(self.engine.renew, reservation, self.section.lease_s)

