"""The gateway's per-process parts, and the ledger calls made fail-closed.

One :class:`Gateway` per worker process: the engine (on the shared ledger), the key
store, the upstream pools, the metrics and the set of calls between admit and
settle/release (never released to zero at shutdown: :meth:`Gateway.resolve_all`).

A ledger call never waits on the event loop (:meth:`Gateway.run`): a locked SQLite file or a lost
database stalls only its own call (a stream in flight keeps flowing), and a request waits at
most ``[gateway] ledger_timeout_s`` for one before it answers 503 ``ledger_unavailable``. On
SQLite an admit, settle or release runs on the loop when it cannot wait: the store's connection
and SQLite's write lock are both free and taken at once, without waiting
(:meth:`~comptroller.storage.sqlite.SQLiteStore.uncontended`); otherwise, and on PostgreSQL
(a network round trip per call) and for every other ledger call, it runs in a worker thread
whose wait is bounded. The hop to a thread and back was a third of a call's CPU (BENCHMARKS.md,
issue 14); the thread side is :mod:`comptroller.gateway.ledger_calls`. ``ledger_threads = false``
runs every call on the loop (unbounded). A ledger call,
once started, runs to its end even if the request is cancelled or stops waiting (client gone,
shutdown, timeout), so every admitted call is settled or released exactly once. Any exception
from the ledger other than a bad request (unknown model, no output bound) refuses the call
with 503 ``ledger_unavailable``: the gateway never forwards a call it could not meter.

Exactly-once money (DESIGN.md rule 12): every call is admitted as *sent*
(``CallRequest.sends``: it goes upstream right after), so a lease that runs out unresolved
is charged its ceiling as ``unknown_outcome``, never returned as if the call was not made.
While a call is in flight :mod:`comptroller.gateway.upkeep` renews its lease. A settle or
release the ledger cannot take (any failure, or a timeout that later fails) is kept in the
durable outbox (``Gateway.outbox``) and delivered by the upkeep task until the ledger has
it; a late delivery corrects an ``unknown_outcome`` charge to the real cost.

Cascades (``cascade/<name>`` models) are run by :mod:`comptroller.routing.runner`, which
admits, settles and releases each tier attempt itself; it is handed a
:class:`~comptroller.gateway.metered_engine.MeteredEngine`, so those attempts go through the
same fail-closed admit, in-flight tracking (resolved at shutdown) and metrics as a plain call.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar, cast

import anyio
import anyio.to_thread

from comptroller.domain.caps import NoOutputCapError
from comptroller.domain.ledger import ReleaseResult, Reservation, SettleResult, UsageRecord
from comptroller.domain.usage import Usage
from comptroller.engine import Admission, CallRequest, Engine
from comptroller.gateway.config import GatewayConfig
from comptroller.gateway.errors import GatewayError
from comptroller.gateway.identity import Identity
from comptroller.gateway.ledger_calls import BoundedCall, InlineLedger, holds_itself
from comptroller.gateway.metrics import GatewayMetrics
from comptroller.gateway.upstream import Upstreams
from comptroller.groups import GroupService
from comptroller.prices import UnknownModelError
from comptroller.routing import RoutingConfig
from comptroller.storage.outbox import Outbox

__all__ = ["BoundedCall", "Gateway", "InlineLedger", "Settled"]

log = logging.getLogger("comptroller.gateway")
_T = TypeVar("_T")
_INLINE_WAIT_S = 0.001  # a wait for a ledger thread's operation (they take well under a millisecond)
_INLINE_WAIT_MAX_S = 0.1  # then the operation goes to a thread too


def _ledger_unavailable(what: str) -> GatewayError:
    return GatewayError(503, f"the ledger cannot be reached, so {what}; retry shortly", type_="api_error",
                        code="ledger_unavailable", headers={"Retry-After": "1"})


@dataclass(frozen=True, slots=True)
class Settled:
    """What a settle charged: the cost in millicents, or None if the ledger failed."""

    cost_mc: int | None


@dataclass
class Gateway:
    """Everything one worker needs to serve calls.

    Attributes:
        engine: the one admit -> settle / release path.
        identity: API key authentication.
        upstreams: the provider pools.
        config: the ``[gateway]`` settings.
        namespace: the namespace every call is attributed to (the policy's).
        metrics: Prometheus metrics.
        routing: the policy's cascades and routing rules (checked at start-up).
        tier_models: each cascade tier model's priced id -> the name sent upstream.
        groups: the group registry and rooms (``POST /v1/groups/{id}/dispatch``, admin API).
        inflight: reservations admitted and not yet settled or released, by id (their leases
            are renewed by :mod:`comptroller.gateway.upkeep`).
        outbox: where outcomes the ledger could not take wait for delivery (set by
            :func:`comptroller.gateway.upkeep.start_upkeep`; None: not started, a failed
            outcome is only logged and its lease resolves it).
        closing: set by :meth:`resolve_all` (shutdown): a call admitted later is released at once.
    """

    engine: Engine
    identity: Identity
    upstreams: Upstreams
    config: GatewayConfig
    namespace: str
    metrics: GatewayMetrics
    routing: RoutingConfig
    groups: GroupService
    tier_models: dict[str, str] = field(default_factory=dict)
    inflight: dict[str, Reservation] = field(default_factory=dict)
    outbox: Outbox | None = None
    closing: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def _inline(self, operation: Callable[..., Any]) -> AbstractContextManager[bool] | None:
        """The store's hold for an operation that may run on the loop, or None (it goes to a thread).

        Only :meth:`admit`, :meth:`settle` and :meth:`release` (a write transaction each, two for
        an admit recounted near a budget's edge, then in-memory work), on a store that can hold
        itself without waiting; a settle only when no post-settle hook writes elsewhere
        (``Engine.on_settled``: wallet postings, their own connection and lock).
        """
        store = self.engine.store
        if not holds_itself(type(store)):
            return None
        if operation in (self.admit, self.release) or (operation == self.settle and not self.engine.on_settled):
            return cast(InlineLedger, store).uncontended()
        return None

    async def run(self, operation: Callable[..., _T], *args: Any) -> _T:
        """Run a ledger operation without waiting on the loop; a request waits at most ``ledger_timeout_s``.

        An admit, settle or release on SQLite runs at once on the loop when the store is free
        (:meth:`_inline`): it cannot wait on a lock there, and its write is a few hundred
        microseconds. A store held by another thread of this worker or by another process's
        writer is waited for on the loop, a little (:meth:`_wait_for_store`: at most a quarter of
        ``ledger_timeout_s``, 0.1 s), shielded. Anything else, or a store still held after that
        wait, runs in a worker thread. There the operation runs to its end whatever happens to the
        request (shielded from cancellation), so every admitted call is settled or released
        exactly once. Past the timeout the request stops waiting: an admission that lands later
        is released at once (its caller already answered 503, nothing went upstream); a settle
        or release goes on in its thread, and its caller gets the value its own failure would
        give (``Settled(None)``, None). With ``ledger_threads = false`` it runs on the loop,
        unbounded.

        Raises:
            GatewayError: 503 ``ledger_unavailable`` when an admission (or any other operation)
                takes longer than ``ledger_timeout_s``.
        """
        if not self.config.ledger_threads:
            return operation(*args)
        waited_s = 0.0
        hold = self._inline(operation)
        if hold is not None:
            with hold as free:  # the common case: the store is free, the operation runs here and now
                if free:
                    return operation(*args)
            started = anyio.current_time()
            deadline = started + min(_INLINE_WAIT_MAX_S, self.config.ledger_timeout_s / 4)
            with anyio.CancelScope(shield=True):  # as the thread path: a settle or release that waits still runs
                while anyio.current_time() < deadline:
                    await self._wait_for_store(deadline)
                    with cast(InlineLedger, self.engine.store).uncontended() as free:
                        if free:
                            return operation(*args)
            waited_s = anyio.current_time() - started
        call = BoundedCall(operation, args, late=self._late)
        with anyio.CancelScope(shield=True), anyio.move_on_after(self.config.ledger_timeout_s - waited_s):
            await anyio.to_thread.run_sync(call.run, abandon_on_cancel=True)
        if call.finish():
            result: _T = call.result()
            return result
        self.metrics.ledger_errors.labels("timeout").inc()
        log.error("ledger call %s took longer than %g s; the request stops waiting (it runs on in its thread)",
                  getattr(operation, "__name__", operation), self.config.ledger_timeout_s)
        if operation in (self.settle, self.release):
            if call.claim():  # still waiting for a thread: it must run all the same (the call was made)
                threading.Thread(target=call.execute, daemon=True, name="ledger-after-timeout").start()
            return None if operation == self.release else Settled(None)  # type: ignore[return-value]
        raise _ledger_unavailable(f"no answer came within {self.config.ledger_timeout_s:g} s")

    async def _wait_for_store(self, deadline: float) -> None:
        """Wait on the loop for a held store, until ``deadline`` (anyio's clock) at the latest.

        Another thread of this worker holding it (an operation sent to a thread earlier, the
        ledger probe) is waited for ``_INLINE_WAIT_S`` at a time until it lets go; another
        process's writer (SQLITE_BUSY) one step of ``_INLINE_WAIT_S`` (writers hold SQLite's lock
        well under a millisecond). Then the caller tries the loop again; past the deadline the
        operation goes to a thread, with the rest of ``ledger_timeout_s``.

        Without the wait, one operation in a thread made every call arriving meanwhile find the
        store held and go to a thread as well, which kept it held: at 32 concurrent calls about
        a quarter of the ledger calls went to threads (about 0.5 ms of CPU each), none at 1.
        """
        store = cast(InlineLedger, self.engine.store)
        await anyio.sleep(_INLINE_WAIT_S)
        while store.held_here() and anyio.current_time() < deadline:
            await anyio.sleep(_INLINE_WAIT_S)

    def _late(self, result: object) -> None:
        """An operation's result that came after its caller stopped waiting: return a late admission's hold."""
        if isinstance(result, Admission) and result.reservation is not None:
            log.warning("admission of %s came after the timeout: releasing it", result.reservation.id)
            self.release(result.reservation)

    def admit(self, call: CallRequest) -> Admission:
        """Admit a call, fail-closed; an admitted call is tracked until settled or released.

        Raises:
            GatewayError: 400 for a model without a price or without an output bound;
                503 ``ledger_unavailable`` for any ledger failure.
        """
        try:
            admission = self.engine.admit(call if call.sends else replace(call, sends=True))  # forwarded: sent
        except UnknownModelError as exc:
            raise GatewayError(400, str(exc), code="model_not_found", param="model") from None
        except NoOutputCapError as exc:
            raise GatewayError(400, f"{exc}; send max_tokens", code="invalid_request", param="max_tokens") from None
        except Exception:
            log.exception("admit failed: refusing the call (fail closed)")
            self.metrics.ledger_errors.labels("admit").inc()
            raise _ledger_unavailable("the call is refused rather than sent unmetered") from None
        if admission.reservation is not None:
            self._track(admission.reservation)
        elif admission.verdict is not None:
            level = "" if admission.verdict.level is None else str(admission.verdict.level)
            self.metrics.refusals.labels(str(admission.verdict.code), level).inc()
        return admission

    def _track(self, reservation: Reservation) -> None:
        """Track an admitted call; one admitted after shutdown began (a cascade's worker thread) is released."""
        with self._lock:
            closing = self.closing
            if not closing:
                self.inflight[reservation.id] = reservation
                self.metrics.inflight.inc()
        if closing:
            try:
                self.engine.release(reservation)
            except Exception:
                self._keep(reservation, None, None, "release")
            raise GatewayError(503, "this gateway worker is shutting down; retry", type_="api_error",
                               code="shutting_down", headers={"Retry-After": "1"})

    def _done(self, reservation: Reservation) -> bool:
        with self._lock:
            if self.inflight.pop(reservation.id, None) is None:
                return False
        self.metrics.inflight.dec()
        return True

    def settle_result(self, reservation: Reservation, usage: Usage, served_model: str | None = None) -> SettleResult:
        """Charge what the call used and count it in the metrics (``served_model``: :meth:`Engine.settle`'s).

        Raises:
            GatewayError: 503 ``ledger_unavailable`` when the ledger fails (logged; the hold
                stays until its lease expires: money over-held for a while, never under-counted).
        """
        self._done(reservation)
        try:
            result = self.engine.settle(reservation, usage, served_model=served_model)
        except Exception:
            self.metrics.ledger_errors.labels("settle").inc()
            self._keep(reservation, usage, served_model, "settle")
            raise _ledger_unavailable("the call was made; its charge is kept and delivered when the ledger "
                                      "answers") from None
        if result.record is not None:
            self._count_charge(reservation.model, reservation.attribution.tenant, result.record.cost_mc, usage)
        return result

    def count_delivered(self, record: UsageRecord) -> None:
        """Count a charge the outbox delivered (``Engine.deliver``'s ``observe``) as a settle on the call path is:
        cost and tokens by model, and the tenant's figures."""
        self._count_charge(record.model, record.attribution.tenant, record.cost_mc, record.usage)

    def _count_charge(self, model: str, tenant: str, cost_mc: int, usage: Usage) -> None:
        metrics = self.metrics
        metrics.child(metrics.cost_mc, model).inc(cost_mc)
        metrics.child(metrics.tokens, model, "input").inc(usage.input_tokens)
        metrics.child(metrics.tokens, model, "output").inc(usage.output_tokens)
        metrics.observe_settled(tenant, cost_mc=cost_mc, input_tokens=usage.input_tokens,
                                output_tokens=usage.output_tokens)

    def settle(self, reservation: Reservation, usage: Usage, served_model: str | None = None) -> Settled:
        """:meth:`settle_result` for the plain call path: a ledger failure gives ``Settled(None)``."""
        try:
            result = self.settle_result(reservation, usage, served_model)
        except GatewayError:
            return Settled(None)
        return Settled(None if result.record is None else result.record.cost_mc)

    def release_result(self, reservation: Reservation) -> ReleaseResult:
        """Return the hold of a call that was not made or failed before the provider billed it.

        Raises:
            GatewayError: 503 ``ledger_unavailable`` when the ledger fails (logged; the hold
                returns at lease expiry).
        """
        self._done(reservation)
        try:
            return self.engine.release(reservation)
        except Exception:
            self.metrics.ledger_errors.labels("release").inc()
            self._keep(reservation, None, None, "release")
            raise _ledger_unavailable("a hold could not be returned yet") from None

    def _keep(self, reservation: Reservation, usage: Usage | None, served_model: str | None, what: str) -> None:
        """Keep the outcome of a failed settle or release in the outbox (logged with the ledger's error)."""
        outbox = self.outbox
        if outbox is None:
            log.exception("%s of reservation %s failed and no outbox is open: its lease resolves it "
                          "(a sent call is charged its ceiling)", what, reservation.id)
            return
        log.exception("%s of reservation %s failed; its outcome is kept in the outbox %s until the ledger "
                      "takes it", what, reservation.id, outbox.path)
        try:
            outbox.put(self.engine.outcome(reservation, usage, served_model=served_model))
        except Exception:
            log.critical("the outbox %s cannot keep the outcome of reservation %s: its lease resolves it "
                         "(a sent call is charged its ceiling)", outbox.path, reservation.id, exc_info=True)

    def release(self, reservation: Reservation) -> None:
        """:meth:`release_result` for the plain call path: a ledger failure is logged, not raised."""
        with contextlib.suppress(GatewayError):
            self.release_result(reservation)

    def resolve_all(self) -> tuple[int, int]:
        """Resolve what is still in flight when the worker stops; later admissions are released at once.

        Each request path resolves its own call when it is cut off (a call waiting on the
        upstream is charged its reserved bound, a stream what it generated; see
        :mod:`comptroller.gateway.apis.pipeline`), and at the grace deadline
        :meth:`comptroller.gateway.lifecycle.WorkerLife.cut_off` charges the bound of every call
        in flight. What is left here may still be finishing in a thread (a cascade's runner), so
        a hold admitted as sent (every call the gateway forwards) is never released to zero
        (DESIGN.md rule 12): it is left to its owner, or, if none resolves it, to its lease,
        which charges its ceiling as ``unknown_outcome`` (reported by ``db check``). A hold not
        marked sent was never forwarded and is released.

        Returns:
            ``(sent holds left to their lease, holds released)``.
        """
        with self._lock:
            self.closing = True
            pending = list(self.inflight.values())
        left = [r for r in pending if r.sent]
        for reservation in pending:
            if not reservation.sent:
                self.release(reservation)
        for reservation in left:
            log.warning("shutdown: call %s is still in flight; unless its request settles it, its lease "
                        "charges its ceiling as unknown_outcome at %s", reservation.id,
                        reservation.expires_at.isoformat())
        return len(left), len(pending) - len(left)
