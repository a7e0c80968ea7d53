"""Helicone request exports (``npx @helicone/export`` JSON/JSONL/CSV, or the request API) -> normalised records.

Source: Helicone's "Get Requests" API (``POST /v1/request/query-clickhouse``,
docs.helicone.ai/rest/request/post-v1requestquery-clickhouse), whose ``HeliconeRequest``
rows the export tool writes (docs.helicone.ai/guides/cookbooks/etl): ``request_id``,
``request_created_at``, ``response_created_at``, ``request_user_id``, ``request_properties`` /
``properties``, ``request_model``, ``response_model``, ``model``, ``provider``,
``prompt_tokens``, ``completion_tokens``, ``prompt_cache_read_tokens``,
``prompt_cache_write_tokens``, ``costUSD`` (or ``cost``), ``response_status``. Sessions are the
``Helicone-Session-Id`` / ``Helicone-Session-Path`` properties (docs.helicone.ai/features/sessions).

Helicone stores each provider's own counts: for ``ANTHROPIC`` ``prompt_tokens`` is Anthropic's
``input_tokens``, which excludes cache reads and writes (added back here); for OpenAI-shaped
providers it includes cached tokens.

| record field | column |
|---|---|
| tenant / conversation | ``request_user_id`` (else ``helicone``) / ``Helicone-Session-Id``, else ``request_id`` |
| ``agent`` | the last segment of ``Helicone-Session-Path``, else the ``agent`` property, else ``helicone`` |
| ``phase`` | ``Helicone-Session-Name`` |
| ``model`` | ``model``, else ``response_model``, else ``request_model`` |
| ``x_logged_cost_usd`` | ``costUSD``, else ``cost`` |
| ``ts`` | ``response_created_at``, else ``request_created_at`` |

Rows with no token counts (errors, blocked requests) are passed over.
"""

from __future__ import annotations

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
    """True for a Helicone request row (``request_created_at`` and ``prompt_tokens`` or ``costUSD``)."""
    return "request_created_at" in row and ("prompt_tokens" in row or "costUSD" in row)


def calls(row: Row) -> list[Row]:
    """The normalised record of one request (none without token counts).

    Raises:
        RowError: naming the column that cannot be read.
    """
    prompt, completion = as_int(row.get("prompt_tokens"), "prompt_tokens"), as_int(
        row.get("completion_tokens"), "completion_tokens")
    if prompt is None and completion is None:
        return []
    props = as_json(first(row, "properties", "request_properties"), "properties") or {}
    props = props if isinstance(props, dict) else {}
    cache_read = as_int(row.get("prompt_cache_read_tokens"), "prompt_cache_read_tokens") or 0
    cache_write = as_int(row.get("prompt_cache_write_tokens"), "prompt_cache_write_tokens") or 0
    provider = as_str(row.get("provider"))
    path = as_str(props.get("Helicone-Session-Path"))
    agent = (path.rstrip("/").rsplit("/", 1)[-1] or None) if path else None
    request = as_str(row.get("request_id")) or "-"
    return [{
        "run_id": run_id(as_str(row.get("request_user_id")) or "helicone",
                         as_str(props.get("Helicone-Session-Id")) or request),
        "ts": iso_utc(first(row, "response_created_at", "request_created_at"), "request_created_at"),
        "agent": agent or as_str(props.get("agent")) or "helicone",
        "phase": as_str(props.get("Helicone-Session-Name")),
        "model": as_str(first(row, "model", "response_model", "request_model")),
        "input_tokens": input_tokens_total(prompt or 0, cache_read, cache_write,
                                           excludes_cache=(provider or "").upper() == "ANTHROPIC"),
        "output_tokens": completion or 0,
        "cache_read_tokens": cache_read,
        "cache_write_tokens": cache_write,
        "x_logged_cost_usd": as_usd(first(row, "costUSD", "cost"), "costUSD"),
        "x_provider": provider,
        "x_source_id": request,
    }]
