"""The gateway's per-process parts, and the ledger calls made fail-closed.

One :class:`Gateway` per worker process: the engine (on the shared ledger), the key
store, the upstream pools, the metrics and the set of calls between admit and
settle/release (released when the worker shuts down).

Ledger calls run on the event loop's thread by default: a SQLite reserve or settle is one
short ``BEGIN IMMEDIATE`` transaction, cheaper than a hop to a worker thread and back, and
while one runs the loop waits, as it would for the write lock anyway. For a networked
ledger (PostgreSQL) ``[gateway] ledger_threads`` moves them to worker threads, so a
database round trip stalls only its own call. Either way a ledger call, once started, runs
to its end even if the request is cancelled (client gone, shutdown), so every admitted
call is settled or released exactly once. Any exception from the ledger other than a bad request
(unknown model, no output bound) refuses the call with 503 ``ledger_unavailable``:
the gateway never forwards a call it could not meter.

Cascades (``cascade/<name>`` models) are run by :mod:`comptroller.routing.runner`, which
admits, settles and releases each tier attempt itself; it is handed a
:class:`MeteredEngine`, so those attempts go through the same fail-closed admit, in-flight
tracking (released at shutdown) and metrics as a plain call.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import anyio
import anyio.to_thread

from comptroller.domain.caps import NoOutputCapError
from comptroller.domain.ledger import ReleaseResult, Reservation, SettleResult
from comptroller.domain.usage import Usage
from comptroller.engine import Admission, CallRequest, Engine
from comptroller.gateway.config import GatewayConfig
from comptroller.gateway.errors import GatewayError
from comptroller.gateway.identity import Identity
from comptroller.gateway.metrics import GatewayMetrics
from comptroller.gateway.upstream import Upstreams
from comptroller.groups import GroupService
from comptroller.prices import UnknownModelError
from comptroller.routing import RoutingConfig

__all__ = ["Gateway", "MeteredEngine", "Settled"]

log = logging.getLogger("comptroller.gateway")
_T = TypeVar("_T")


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
        inflight: reservations admitted and not yet settled or released, by id.
        closing: set by :meth:`release_all` (shutdown): a call admitted later is released at once.
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
    closing: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    async def run(self, operation: Callable[..., _T], *args: Any) -> _T:
        """Run a ledger operation: on the loop, or in a worker thread with ``ledger_threads``."""
        if not self.config.ledger_threads:
            return operation(*args)
        with anyio.CancelScope(shield=True):
            result = await anyio.to_thread.run_sync(operation, *args)
        return result

    def admit(self, call: CallRequest) -> Admission:
        """Admit a call, fail-closed; an admitted call is tracked until settled or released.

        Raises:
            GatewayError: 400 for a model without a price or without an output bound;
                503 ``ledger_unavailable`` for any ledger failure.
        """
        try:
            admission = self.engine.admit(call)
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
                log.exception("release of reservation %s failed; its hold returns at lease expiry", reservation.id)
            raise GatewayError(503, "this gateway worker is shutting down; retry", type_="api_error",
                               code="shutting_down", headers={"Retry-After": "1"})

    def _done(self, reservation: Reservation) -> bool:
        with self._lock:
            if self.inflight.pop(reservation.id, None) is None:
                return False
        self.metrics.inflight.dec()
        return True

    def settle_result(self, reservation: Reservation, usage: Usage) -> SettleResult:
        """Charge what the call used and count it in the metrics.

        Raises:
            GatewayError: 503 ``ledger_unavailable`` when the ledger fails (logged; the hold
                stays until its lease expires: money over-held for a while, never under-counted).
        """
        self._done(reservation)
        try:
            result = self.engine.settle(reservation, usage)
        except Exception:
            log.exception("settle of reservation %s failed; its hold returns at lease expiry", reservation.id)
            self.metrics.ledger_errors.labels("settle").inc()
            raise _ledger_unavailable("the call was made but could not be charged yet") from None
        if result.record is not None:
            self.metrics.cost_mc.labels(reservation.model).inc(result.record.cost_mc)
            self.metrics.tokens.labels(reservation.model, "input").inc(usage.input_tokens)
            self.metrics.tokens.labels(reservation.model, "output").inc(usage.output_tokens)
        return result

    def settle(self, reservation: Reservation, usage: Usage) -> Settled:
        """:meth:`settle_result` for the plain call path: a ledger failure gives ``Settled(None)``."""
        try:
            result = self.settle_result(reservation, usage)
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
            log.exception("release of reservation %s failed; its hold returns at lease expiry", reservation.id)
            self.metrics.ledger_errors.labels("release").inc()
            raise _ledger_unavailable("a hold could not be returned") from None

    def release(self, reservation: Reservation) -> None:
        """:meth:`release_result` for the plain call path: a ledger failure is logged, not raised."""
        with contextlib.suppress(GatewayError):
            self.release_result(reservation)

    def release_all(self) -> int:
        """Release every call still in flight (worker shutdown); later admissions are released at once.

        Returns:
            The number released.
        """
        with self._lock:
            self.closing = True
            pending = list(self.inflight.values())
        for reservation in pending:
            self.release(reservation)
        return len(pending)


class MeteredEngine(Engine):
    """The engine as the cascade runner sees it inside the gateway, for one request.

    The same ledger, prices, clock and defenses as ``gateway.engine`` (its parts are
    shared, not copied), but :meth:`admit`, :meth:`settle` and :meth:`release` go through
    the :class:`Gateway`: fail-closed admission (``GatewayError`` 400/503), in-flight
    tracking (a tier attempt cut short by shutdown is released by ``release_all``) and the
    cost and token metrics. Ledger failures raise ``GatewayError`` 503.

    Attributes:
        current: the hold of the attempt admitted last (the runner admits, calls, then settles
            or releases one attempt at a time), for the tier call's own exits.
    """

    def __init__(self, gateway: Gateway) -> None:  # the base engine is already built: share its parts
        vars(self).update(vars(gateway.engine))
        self.gateway = gateway
        self.current: Reservation | None = None

    def admit(self, call: CallRequest) -> Admission:
        """:meth:`Gateway.admit`; an admitted attempt becomes :attr:`current`."""
        admission = self.gateway.admit(call)
        self.current = admission.reservation
        return admission

    def settle(self, reservation: Reservation, usage: Usage) -> SettleResult:
        """:meth:`Gateway.settle_result`."""
        return self.gateway.settle_result(reservation, usage)

    def release(self, reservation: Reservation) -> ReleaseResult:
        """:meth:`Gateway.release_result`."""
        return self.gateway.release_result(reservation)
