"""LiteLLM proxy spend logs (a CSV or JSON dump of ``LiteLLM_SpendLogs``) -> normalised trace records.

Source: the ``LiteLLM_SpendLogs`` model of LiteLLM's proxy schema
(``litellm/proxy/schema.prisma``, BerriAI/litellm: ``request_id``, ``call_type``, ``spend``,
``total_tokens``, ``prompt_tokens``, ``completion_tokens``, ``startTime``, ``endTime``, ``model``,
``model_group``, ``custom_llm_provider``, ``user``, ``metadata`` (JSON), ``cache_hit``,
``team_id``, ``end_user``, ``session_id``, ``agent_id`` (added by the 2025-12-10 migration),
``status``) and the proxy's cost-tracking docs (docs.litellm.ai/docs/proxy/cost_tracking).
LiteLLM reports usage in OpenAI's shape whatever the provider: ``prompt_tokens`` includes
cache reads and writes, and ``metadata.usage_object`` keeps the details
(``cache_read_input_tokens`` or ``prompt_tokens_details.cached_tokens``,
``cache_creation_input_tokens``, ``completion_tokens_details.reasoning_tokens``).

| record field | column |
|---|---|
| tenant (``run_id`` before ``/``) | ``team_id``, else ``user`` (the key's internal user), else ``litellm`` |
| conversation (``run_id`` after ``/``) | ``session_id``, else ``request_id`` (a call of its own) |
| ``agent`` | ``agent_id``, else ``end_user`` (the ``user`` a client passed), else ``litellm`` |
| ``phase`` | ``call_type`` (``acompletion``, ``aembedding`` ...) |
| ``key_id`` | ``api_key``: the proxy stores the key's hash there, never the key |
| ``model`` / ``x_model_group`` | ``model`` (its ``provider/`` prefix dropped) / ``model_group`` |
| ``x_logged_cost_usd`` | ``spend``: LiteLLM's own cost, for reconciliation |
| ``ts`` | ``endTime`` |

Rows LiteLLM answered from its own cache (``cache_hit`` true) and failed calls
(``status = failure``) reached no provider and are passed over.
"""

from __future__ import annotations

from typing import Any

from comptroller.replay.importers.rows import (
    Row,
    as_int,
    as_json,
    as_str,
    as_usd,
    first,
    input_tokens_total,
    iso_utc,
    run_id,
)

__all__ = ["calls", "looks_like"]


def looks_like(row: Row) -> bool:
    """True for a ``LiteLLM_SpendLogs`` row (``request_id``, ``spend`` and ``call_type``)."""
    return {"request_id", "spend", "call_type"} <= row.keys()


def _truthy(value: Any) -> bool:
    return str(value).strip().lower() in ("true", "1", "yes")


def _model(row: Row) -> str | None:
    model, provider = as_str(row.get("model")), as_str(row.get("custom_llm_provider"))
    if model is not None and provider is not None and model.startswith(provider + "/"):
        return model[len(provider) + 1:]
    return model


def calls(row: Row) -> list[Row]:
    """The normalised record of one spend-log row (none for a cache hit or a failure).

    Raises:
        RowError: naming the column that cannot be read.
    """
    if _truthy(row.get("cache_hit")) or str(row.get("status") or "").lower() == "failure":
        return []
    metadata = as_json(row.get("metadata"), "metadata") or {}
    usage = (metadata.get("usage_object") if isinstance(metadata, dict) else None) or {}
    details = usage.get("prompt_tokens_details") or {}
    cache_read = as_int(first(usage, "cache_read_input_tokens") or details.get("cached_tokens"),
                        "metadata.usage_object.cache_read_input_tokens") or 0
    cache_write = as_int(usage.get("cache_creation_input_tokens"),
                         "metadata.usage_object.cache_creation_input_tokens") or 0
    prompt = as_int(row.get("prompt_tokens"), "prompt_tokens") or 0
    reasoning = (usage.get("completion_tokens_details") or {}).get("reasoning_tokens")
    tenant = as_str(row.get("team_id")) or as_str(row.get("user")) or "litellm"
    request = as_str(row.get("request_id")) or "-"
    return [{
        "run_id": run_id(tenant, as_str(row.get("session_id")) or request),
        "ts": iso_utc(first(row, "endTime", "startTime"), "endTime"),
        "agent": as_str(row.get("agent_id")) or as_str(row.get("end_user")) or "litellm",
        "phase": as_str(row.get("call_type")),
        "key_id": as_str(row.get("api_key")),
        "model": _model(row),
        "input_tokens": input_tokens_total(prompt, cache_read, cache_write, excludes_cache=False),
        "output_tokens": as_int(row.get("completion_tokens"), "completion_tokens") or 0,
        "cache_read_tokens": cache_read,
        "cache_write_tokens": cache_write,
        "x_reasoning_tokens": as_int(reasoning, "metadata.usage_object.completion_tokens_details"),
        "x_logged_cost_usd": as_usd(row.get("spend"), "spend"),
        "x_model_group": as_str(row.get("model_group")),
        "x_provider": as_str(row.get("custom_llm_provider")),
        "x_source_id": request,
    }]
