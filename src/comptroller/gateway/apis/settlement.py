"""Settling an answered call: usage checked before it is believed, priced as the model served.

* **Usage anomalies.** Reported input above the input bound reserved, or output above the
  output bound sent upstream (x ``n``), is charged in full (the provider bills it) and
  recorded: a ``usage_anomaly`` event in the ledger (code ``input_above_bound`` or
  ``output_above_bound``, with the numbers), the counter ``comptroller_usage_anomalies_total``
  and the header ``X-Comptroller-Usage-Anomaly`` (an SSE comment in streams, whose headers
  are gone by then). The check is :func:`comptroller.domain.usage_checks.check_usage`.
* **Served model.** An answer whose ``model`` is another model than the admitted one (a dated
  snapshot of it is the same: :func:`~comptroller.domain.usage_checks.check_served_model`)
  and resolves to another priced model settles at the served model's price
  (:meth:`Engine.settle`, ``served_model``; unpriced: the higher of cost and ceiling), with a
  ``served_model`` event and the header ``X-Comptroller-Served-Model``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from comptroller.domain.ledger import Event, Reservation
from comptroller.domain.usage import Usage
from comptroller.domain.usage_checks import check_served_model, check_usage
from comptroller.engine import Admission
from comptroller.gateway.errors import GatewayError
from comptroller.gateway.runtime import Gateway, Settled

__all__ = ["Outcome", "bound_usage", "call_headers", "settle_answer"]

log = logging.getLogger("comptroller.gateway")


@dataclass(frozen=True, slots=True)
class Outcome:
    """What settling an answer did.

    Attributes:
        settled: the charge (``cost_mc`` None: the ledger failed; the hold waits for its lease).
        anomalies: the codes of the usage checks that failed (empty: usage within the bounds).
        served_model: the model served, when it is priced differently from the admitted one.
    """

    settled: Settled
    anomalies: tuple[str, ...] = ()
    served_model: str | None = None


def bound_usage(reservation: Reservation, output_tokens: int | None = None) -> Usage:
    """The reserved bounds as usage (output: ``output_tokens`` if given, at most the bound)."""
    out = reservation.output_tokens_max if output_tokens is None else min(output_tokens,
                                                                          reservation.output_tokens_max)
    return Usage(input_tokens=reservation.input_tokens_max, output_tokens=out)


def _served(gw: Gateway, admission: Admission, served_model: str | None) -> str | None:
    """``served_model`` when it is another priced model than the admitted one (or unpriced), else None."""
    if check_served_model(admission.model, served_model) is None:
        return None
    assert served_model is not None
    try:
        return None if gw.engine.prices.resolve(served_model) == admission.model else served_model
    except LookupError:  # UnknownModelError: Engine.settle charges it conservatively
        return served_model


def _record(gw: Gateway, event: Event) -> None:
    try:
        gw.engine.store.record_event(event)
    except Exception:
        log.exception("could not record a %s event: %s", event.kind, event.detail)


async def settle_answer(gw: Gateway, admission: Admission, usage: Usage, served_model: str | None,
                        api: str) -> Outcome:
    """Check ``usage``, record anomalies, and settle the call at the served model's price.

    Args:
        api: the endpoint label (metrics and the event's detail).
    """
    reservation = admission.reservation
    assert reservation is not None
    anomalies = check_usage(usage, input_tokens_max=reservation.input_tokens_max,
                            output_tokens_max=reservation.output_tokens_max)
    served = _served(gw, admission, served_model)
    settled = await gw.run(gw.settle, reservation, usage, served)
    for anomaly in anomalies:
        gw.metrics.usage_anomalies.labels(api, anomaly.code).inc()
        detail = {"reservation": reservation.id, "api": api, "model": reservation.model,
                  "tenant": reservation.attribution.tenant, "agent": reservation.attribution.agent,
                  "bucket": anomaly.bucket,
                  "reported_tokens": anomaly.reported_tokens, "bound_tokens": anomaly.bound_tokens,
                  "message": anomaly.describe()}
        event = Event(gw.engine.clock.now(), "usage_anomaly", anomaly.code, scope=None, detail=detail)
        try:
            await gw.run(_record, gw, event)
        except GatewayError:
            log.error("usage anomaly of reservation %s not recorded (the ledger is slow): %s", reservation.id,
                      anomaly.describe())
    return Outcome(settled, tuple(a.code for a in anomalies), served)


def call_headers(admission: Admission, outcome: Outcome | None = None) -> dict[str, str]:
    """The ``X-Comptroller-*`` headers of an admitted call (before settling: model, ceiling, remaining)."""
    headers = {"X-Comptroller-Model": admission.model, "X-Comptroller-Ceiling-Mc": str(admission.ceiling_mc)}
    remaining = admission.remaining_mc  # with the ceiling held: a stream's headers go before its settle
    if outcome is not None and outcome.settled.cost_mc is not None:
        headers["X-Comptroller-Cost-Mc"] = str(outcome.settled.cost_mc)
        remaining = None if remaining is None else remaining + admission.ceiling_mc - outcome.settled.cost_mc
    if outcome is not None and outcome.anomalies:
        headers["X-Comptroller-Usage-Anomaly"] = ",".join(outcome.anomalies)
    if outcome is not None and outcome.served_model is not None:
        headers["X-Comptroller-Served-Model"] = outcome.served_model
    if remaining is not None:
        headers["X-Comptroller-Budget-Remaining-Mc"] = str(remaining)
    return headers
