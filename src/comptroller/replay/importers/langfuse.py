"""Langfuse observations (an export of ``GET /api/public/v2/observations``) -> normalised trace records.

Source: Langfuse's public API, ``ObservationsView`` / observations v2 (the OpenAPI document at
cloud.langfuse.com/generated/api/openapi.yml: ``id``, ``traceId``, ``type``, ``name``,
``startTime``, ``endTime``, ``model``, ``providedModelName``, ``modelParameters``,
``usageDetails``, ``costDetails``, ``sessionId``, ``userId``, ``environment``), and
"Model Usage & Cost Tracking" (langfuse.com/docs/observability/features/token-and-cost-tracking):
usage types are arbitrary keys; "all usage types that include the string input" are input
types and those with ``output`` output types; without a ``total`` the total is their sum,
so the keys are disjoint buckets (``input``, ``input_cached_tokens``,
``cache_read_input_tokens``, ``cache_creation_input_tokens``, ``output``,
``output_reasoning_tokens`` ...).

| record field | field |
|---|---|
| ``input_tokens`` | sum of ``usageDetails`` keys containing ``input`` |
| ``output_tokens`` | sum of keys containing ``output`` |
| ``cache_read_tokens`` | keys containing ``cache_read`` or ``cached`` |
| ``cache_write_tokens`` | keys containing ``cache_creation`` or ``cache_write`` |
| ``model`` / ``x_model_resolved`` | ``providedModelName`` (as the caller named it) / ``model`` (Langfuse's match) |
| tenant / conversation | ``userId`` (else ``environment``, else ``langfuse``) / ``sessionId``, else ``traceId`` |
| ``agent`` | the observation's ``name`` |
| ``x_logged_cost_usd`` | ``costDetails.total``, else the sum of ``costDetails`` |
| ``x_max_output_tokens`` | ``modelParameters.max_tokens`` (or ``max_completion_tokens``, ``max_output_tokens``) |

A file may be the API's page (``{"data": [...]}``), a JSON array or JSON Lines. Observations
without usage (spans, events) are not calls and are passed over.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from comptroller.replay.importers.rows import Row, RowError, as_int, as_json, as_str, as_usd, first, iso_utc, run_id

__all__ = ["calls", "looks_like"]

_MAX_TOKENS = ("max_tokens", "max_completion_tokens", "max_output_tokens", "maxTokens")


def looks_like(row: Row) -> bool:
    """True for a Langfuse observation (``usageDetails`` or ``providedModelName``, or a ``traceId`` and ``type``)."""
    return "usageDetails" in row or "providedModelName" in row or {"traceId", "type", "startTime"} <= row.keys()


def _sum(usage: dict[str, Any], *parts: str, exclude: tuple[str, ...] = ()) -> int:
    total = 0
    for key, value in usage.items():
        if any(p in key for p in parts) and not any(x in key for x in exclude):
            total += as_int(value, f"usageDetails.{key}") or 0
    return total


def _cost(details: Any) -> str | None:
    if not isinstance(details, dict) or not details:
        return None
    if details.get("total") is not None:
        return as_usd(details["total"], "costDetails.total")
    return str(sum((Decimal(as_usd(v, f"costDetails.{k}") or 0) for k, v in details.items()), Decimal(0)))


def calls(row: Row) -> list[Row]:
    """The normalised record of one observation (none when it has no usage).

    Raises:
        RowError: naming the field that cannot be read.
    """
    usage = as_json(row.get("usageDetails"), "usageDetails")
    if not isinstance(usage, dict) or not any(usage.values()):
        return []
    usage = {k.lower(): v for k, v in usage.items() if k.lower() != "total"}
    params = as_json(row.get("modelParameters"), "modelParameters") or {}
    trace = as_str(row.get("traceId"))
    conversation = as_str(row.get("sessionId")) or trace
    if conversation is None:
        raise RowError("traceId", "an observation needs a sessionId or a traceId")
    tenant = as_str(row.get("userId")) or as_str(row.get("environment")) or "langfuse"
    return [{
        "run_id": run_id(tenant, conversation),
        "ts": iso_utc(first(row, "endTime", "startTime"), "endTime"),
        "agent": as_str(row.get("name")) or "langfuse",
        "phase": as_str(row.get("type")),
        "model": as_str(row.get("providedModelName")) or as_str(row.get("model")),
        "x_model_resolved": as_str(row.get("model")) if row.get("providedModelName") else None,
        "input_tokens": _sum(usage, "input"),
        "output_tokens": _sum(usage, "output"),
        "cache_read_tokens": _sum(usage, "cache_read", "cached"),
        "cache_write_tokens": _sum(usage, "cache_creation", "cache_write"),
        "x_logged_cost_usd": _cost(as_json(row.get("costDetails"), "costDetails")),
        "x_max_output_tokens": as_int(first(params, *_MAX_TOKENS), "modelParameters.max_tokens")
        if isinstance(params, dict) else None,
        "x_source_id": as_str(row.get("id")),
    }]
