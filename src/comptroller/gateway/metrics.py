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
``comptroller_tenant_cost_mc``             gauge      ``tenant`` (top N + ``other``; settled mc)
``comptroller_tenant_calls``               gauge      ``tenant`` (top N + ``other``; settled calls)
``comptroller_tenant_tokens``              gauge      ``tenant``, ``kind`` (top N + ``other``)
=========================================  =========  =========================================

**Tenant metrics, bounded.** A label per tenant would grow without bound (a platform has
thousands), so the tenant families carry the ``[gateway] metrics_tenants_top`` tenants (N,
default 20) with the most settled cost since the workers started, each under its own label, and
every other tenant summed under ``tenant="other"``: at most N + 1 series per family (N + 1 per
``kind`` for tokens), and the sum over the labels equals the gateway's total at every scrape.
They are gauges of the running totals, not counters, because a tenant can move between its own
label and ``other`` from one scrape to the next (``other`` may then go down); use the totals by
model for rates, and ``GET /admin/usage?by=tenant&from=&to=`` for exact spend per tenant over
a range. Ties in cost are broken by tenant name; a tenant literally named ``other`` is counted
in ``other``. With several workers the running totals of all workers are summed before the top
N are chosen, so every scrape ranks the same totals.

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
import threading
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from typing import TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from comptroller.gateway.errors import GatewayError
from comptroller.gateway.identity import Identity

__all__ = ["OTHER_TENANTS", "TENANTS_TOP_DEFAULT", "GatewayMetrics", "authorize_scrape", "top_tenants"]

OTHER_TENANTS = "other"
"""The ``tenant`` label of every tenant outside the top N."""
TENANTS_TOP_DEFAULT = 20
"""Tenants with a label of their own when ``[gateway] metrics_tenants_top`` is not set."""
_RAW_COST, _RAW_CALLS, _RAW_TOKENS = ("comptroller_tenant_raw_cost_mc", "comptroller_tenant_raw_calls",
                                      "comptroller_tenant_raw_tokens")

_Labelled = TypeVar("_Labelled", Counter, Gauge, Histogram)
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


def top_tenants(cost_mc: Mapping[str, float], n: int) -> set[str]:
    """The ``n`` tenants with the most cost (ties by name), never the ``other`` label itself."""
    ranked = sorted((t for t in cost_mc if t != OTHER_TENANTS), key=lambda t: (-cost_mc[t], t))
    return set(ranked[:n])


class _TenantTotals(Collector):
    """The tenant families: the running totals read from ``raw`` at scrape time, folded to the top N + ``other``.

    Args:
        raw: yields the raw per-tenant counter families (this process's, or every worker's).
        top_n: tenants with a label of their own.
    """

    def __init__(self, raw: Callable[[], Iterable[Metric]], top_n: int) -> None:
        self._raw = raw
        self._top_n = top_n

    def collect(self) -> Iterable[Metric]:
        cost: dict[str, float] = defaultdict(float)
        calls: dict[str, float] = defaultdict(float)
        tokens: dict[tuple[str, str], float] = defaultdict(float)
        for family in self._raw():
            for sample in family.samples:
                if not sample.name.endswith("_total"):
                    continue  # the _created samples
                tenant = sample.labels["tenant"]
                if family.name == _RAW_COST:
                    cost[tenant] += sample.value
                elif family.name == _RAW_CALLS:
                    calls[tenant] += sample.value
                elif family.name == _RAW_TOKENS:
                    tokens[(tenant, sample.labels["kind"])] += sample.value
        chosen = top_tenants(cost, self._top_n)

        def label(tenant: str) -> str:
            return tenant if tenant in chosen else OTHER_TENANTS

        for name, text, values in (("comptroller_tenant_cost_mc", "Settled cost per tenant, millicents (top N + other)",
                                    cost),
                                   ("comptroller_tenant_calls", "Settled calls per tenant (top N + other)", calls)):
            family = GaugeMetricFamily(name, text, labels=["tenant"])
            folded: dict[str, float] = defaultdict(float)
            for tenant, value in values.items():
                folded[label(tenant)] += value
            for tenant in sorted(folded):
                family.add_metric([tenant], folded[tenant])
            yield family
        family = GaugeMetricFamily("comptroller_tenant_tokens", "Settled tokens per tenant (top N + other)",
                                   labels=["tenant", "kind"])
        by_kind: dict[tuple[str, str], float] = defaultdict(float)
        for (tenant, kind), value in tokens.items():
            by_kind[(label(tenant), kind)] += value
        for key in sorted(by_kind):
            family.add_metric(list(key), by_kind[key])
        yield family


class _Filtered(Collector):
    """Every worker's samples (multiprocess mode) without the raw tenant families, plus their folded form."""

    def __init__(self, top_n: int) -> None:
        self._workers = multiprocess.MultiProcessCollector(None)  # type: ignore[no-untyped-call]
        self._top_n = top_n

    def collect(self) -> Iterable[Metric]:
        raw: list[Metric] = []
        for family in self._workers.collect():  # type: ignore[no-untyped-call]
            if family.name in (_RAW_COST, _RAW_CALLS, _RAW_TOKENS):
                raw.append(family)
            else:
                yield family
        yield from _TenantTotals(lambda: raw, self._top_n).collect()


class GatewayMetrics:
    """The gateway's metrics in their own registry (one per app, so tests can build many apps).

    Args:
        breaker_states: yields ``(scope, open_or_half_open)`` for the breaker gauge.
        tenants_top: tenants with a label of their own in the tenant families (the rest are ``other``;
            ``[gateway] metrics_tenants_top``).

    Raises:
        ValueError: when ``tenants_top`` is below 1.
    """

    def __init__(self, breaker_states: Callable[[], Iterable[tuple[str, bool]]] = lambda: (), *,
                 tenants_top: int = TENANTS_TOP_DEFAULT) -> None:
        if tenants_top < 1:
            raise ValueError(f"tenants_top must be at least 1, got {tenants_top}")
        self.tenants_top = tenants_top
        self.registry = CollectorRegistry()
        r = self.registry
        # Raw per-tenant totals: registered nowhere (never exposed as they are); in multiprocess mode
        # prometheus_client still writes them to the worker's file, where every worker's are summed.
        self._tenant_cost = Counter(_RAW_COST, "Settled cost per tenant, millicents", ["tenant"], registry=None)
        self._tenant_calls = Counter(_RAW_CALLS, "Settled calls per tenant", ["tenant"], registry=None)
        self._tenant_tokens = Counter(_RAW_TOKENS, "Settled tokens per tenant", ["tenant", "kind"], registry=None)
        self._tenant_lock = threading.Lock()
        r.register(_TenantTotals(self._raw_tenants, tenants_top))
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
        self._children: dict[tuple[int, tuple[str, ...]], Counter | Gauge | Histogram] = {}

    def child(self, metric: _Labelled, *values: str) -> _Labelled:
        """``metric.labels(*values)``, kept: the same child, without ``labels``' checks on every call.

        prometheus_client gives the same child for the same values until it is removed, and no
        gateway metric removes one; the kept children are as many as the labelled series.
        """
        key = (id(metric), values)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*values)
        return found  # type: ignore[return-value]

    def observe_settled(self, tenant: str, *, cost_mc: int, input_tokens: int, output_tokens: int) -> None:
        """Count one settled call of ``tenant`` in the tenant families (thread-safe)."""
        with self._tenant_lock:
            self.child(self._tenant_cost, tenant).inc(cost_mc)
            self.child(self._tenant_calls, tenant).inc()
            self.child(self._tenant_tokens, tenant, "input").inc(input_tokens)
            self.child(self._tenant_tokens, tenant, "output").inc(output_tokens)

    def _raw_tenants(self) -> Iterable[Metric]:
        with self._tenant_lock:
            return [*self._tenant_cost.collect(), *self._tenant_calls.collect(), *self._tenant_tokens.collect()]

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
            registry.register(_Filtered(self.tenants_top))
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
