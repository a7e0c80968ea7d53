"""Prometheus metrics of the gateway (``GET /metrics``).

=========================================  =========  =========================================
name                                       type       labels
=========================================  =========  =========================================
``comptroller_requests_total``             counter    ``endpoint``, ``status``
``comptroller_tokens_total``               counter    ``model``, ``kind`` (input / output)
``comptroller_cost_mc_total``              counter    ``model`` (settled millicents)
``comptroller_refusals_total``             counter    ``code``, ``level``
``comptroller_ledger_errors_total``        counter    ``op`` (admit, settle, release, dispatch)
``comptroller_breaker_open``               gauge      ``scope`` (1 open or half-open, 0 closed)
``comptroller_gateway_overhead_seconds``   histogram  (time in the gateway, upstream excluded)
``comptroller_upstream_seconds``           histogram  ``provider`` (request sent to last byte)
``comptroller_usage_anomalies_total``      counter    ``api``, ``code`` (usage above its bound)
``comptroller_outbox_pending``             gauge      (outcomes waiting for the ledger)
``comptroller_outbox_delivered_total``     counter    (outcomes the ledger took from the outbox)
=========================================  =========  =========================================

``comptroller_outbox_oldest_pending_age_seconds`` (gauge) is the age of the oldest outcome
waiting in the outbox (0 when none waits). The outbox gauges are read from the outbox file at
scrape time (every worker shares it, so they agree); an outbox that cannot be read is left out
of the scrape rather than failing it.

``GET /metrics`` shows tenant and agent names, so it is closed: it answers only the admin key
(``Authorization: Bearer <admin key>``) or the scrape token named by ``[gateway]
metrics_token_env`` (:func:`authorize_scrape`); anything else gets 401.

With several worker processes (``comptroller serve --workers N``) set
``PROMETHEUS_MULTIPROC_DIR`` (``serve`` does) and every worker writes its samples
there; ``/metrics`` then sums all workers (prometheus_client docs, "Multiprocess Mode").
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Callable, Iterable, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from comptroller.gateway.errors import GatewayError
from comptroller.gateway.identity import Identity

__all__ = ["GatewayMetrics", "authorize_scrape"]

_OVERHEAD_BUCKETS_S = (0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
_UPSTREAM_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class _Breakers(Collector):
    """Reads the breaker states at scrape time (not a per-process gauge, so workers agree)."""

    def __init__(self, states: Callable[[], Iterable[tuple[str, bool]]]) -> None:
        self._states = states

    def collect(self) -> Iterable[Metric]:
        family = GaugeMetricFamily("comptroller_breaker_open", "1 if the spend-rate breaker is open or half-open",
                                   labels=["scope"])
        for scope, tripped in self._states():
            family.add_metric([scope], 1.0 if tripped else 0.0)
        yield family


class _Outbox(Collector):
    """Reads the shared outbox at scrape time: ``(pending, oldest pending age in s or None)``."""

    def __init__(self, stats: Callable[[], tuple[int, float | None]]) -> None:
        self._stats = stats

    def collect(self) -> Iterable[Metric]:
        try:
            pending, age_s = self._stats()
        except Exception:  # a locked or closed outbox file: no sample this scrape
            return
        yield GaugeMetricFamily("comptroller_outbox_pending", "Call outcomes waiting for the ledger in the outbox",
                                value=pending)
        yield GaugeMetricFamily("comptroller_outbox_oldest_pending_age_seconds",
                                "Age of the oldest outcome waiting for the ledger (0 when none waits)",
                                value=age_s or 0.0)


class GatewayMetrics:
    """The gateway's metrics in their own registry (one per app, so tests can build many apps).

    Args:
        breaker_states: yields ``(scope, open_or_half_open)`` for the breaker gauge.
    """

    def __init__(self, breaker_states: Callable[[], Iterable[tuple[str, bool]]] = lambda: ()) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("comptroller_requests", "HTTP requests answered", ["endpoint", "status"], registry=r)
        self.tokens = Counter("comptroller_tokens", "Tokens settled", ["model", "kind"], registry=r)
        self.cost_mc = Counter("comptroller_cost_mc", "Settled cost, millicents", ["model"], registry=r)
        self.refusals = Counter("comptroller_refusals", "Calls refused", ["code", "level"], registry=r)
        self.ledger_errors = Counter("comptroller_ledger_errors", "Ledger operations that failed", ["op"], registry=r)
        self.usage_anomalies = Counter("comptroller_usage_anomalies", "Answers whose usage exceeds its bound",
                                       ["api", "code"], registry=r)
        self.overhead_s = Histogram("comptroller_gateway_overhead_seconds",
                                    "Time spent in the gateway per call, upstream excluded",
                                    buckets=_OVERHEAD_BUCKETS_S, registry=r)
        self.upstream_s = Histogram("comptroller_upstream_seconds", "Upstream time, request sent to last byte",
                                    ["provider"], buckets=_UPSTREAM_BUCKETS_S, registry=r)
        self._breakers = _Breakers(breaker_states)
        r.register(self._breakers)
        self.inflight = Gauge("comptroller_inflight_calls", "Calls between admit and settle/release",
                              registry=r, multiprocess_mode="livesum")
        self.outbox_delivered = Counter("comptroller_outbox_delivered", "Call outcomes delivered from the outbox",
                                        registry=r)
        self._outbox: _Outbox | None = None

    def watch_outbox(self, stats: Callable[[], tuple[int, float | None]]) -> None:
        """Expose the outbox gauges, read by ``stats`` at scrape time: ``(pending, oldest pending age s | None)``."""
        if self._outbox is not None:
            self.registry.unregister(self._outbox)
        self._outbox = _Outbox(stats)
        self.registry.register(self._outbox)

    def exposition(self) -> bytes:
        """The text exposition format; every worker's samples in multiprocess mode."""
        if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            registry.register(self._breakers)
            if self._outbox is not None:
                registry.register(self._outbox)
            return generate_latest(registry)
        return generate_latest(self.registry)


def authorize_scrape(identity: Identity, headers: Mapping[str, str], token: str | None) -> None:
    """Let a scrape through with the scrape token or an admin key.

    Args:
        identity: authenticates admin keys.
        headers: the request headers (``Authorization: Bearer ...``).
        token: the configured scrape token (None: admin keys only).

    Raises:
        GatewayError: 401 ``invalid_api_key`` for anything else (no key, a tenant key, a wrong token).
    """
    header = headers.get("authorization") or ""
    scheme, _, given = header.partition(" ")
    given = given.strip()
    if token is not None and given and hmac.compare_digest(given.encode(), token.encode()):
        return
    refused = GatewayError(401, "/metrics needs the admin key or the scrape token ([gateway] metrics_token_env) "
                           "as 'Authorization: Bearer ...'", type_="authentication_error", code="invalid_api_key",
                           headers={"WWW-Authenticate": "Bearer"})
    if scheme.lower() != "bearer" or not given:
        raise refused
    try:
        caller = identity.authenticate(headers)
    except GatewayError:
        raise refused from None
    if not caller.admin:
        raise refused
