"""Which methods of the ``openai`` and ``anthropic`` clients the SDK meters, lets through free, or refuses.

The one place the three lists live (DESIGN.md rule 11: every paid call is governed, or
refused). A wrapped client looks every method it is asked for up here by its dotted name
on the client (``chat.completions.create``, ``messages.batches.create``, ``post``):

* **metered**: admitted against the budgets before the request and settled from its usage
  (:mod:`comptroller.sdk.openai`, :mod:`comptroller.sdk.anthropic` implement each one);
* **free**: known not to bill (reads, deletes, token counting, organisation admin, file
  storage): passed through unchanged;
* **refused**: may bill and is not metered (images, audio, realtime, assistants runs,
  fine-tuning, the raw ``post``/``request`` escape hatches...): raises
  :class:`~comptroller.sdk.errors.UnmeteredCallError` unless the user allows it by name.

A name in none of the lists is refused too (fail closed); ``tests/sdk/test_sdk_coverage.py``
walks the installed packages and fails on any such name, so a new SDK release is
classified by a person, never by accident. Patterns use :mod:`fnmatch` (``*`` matches dots
too). Precedence: metered, then free, then refused, so the free patterns are narrow
(verbs that never bill) and the refused ones may be broad.

Batches are metered (:mod:`comptroller.sdk.batch_methods`): every line is reserved at
``create`` at the batch price, and the batch is reconciled by ``custom_id`` on the first
``retrieve`` (or Anthropic ``results``) that sees it ended; ``list``, ``cancel`` and
``delete`` are free.
"""

from __future__ import annotations

from enum import StrEnum
from fnmatch import fnmatchcase
from functools import lru_cache

__all__ = ["FREE", "METERED", "RAW_VARIANTS", "REFUSED", "Kind", "classify"]


class Kind(StrEnum):
    """What a wrapped client does with a method."""

    METERED = "metered"
    FREE = "free"
    REFUSED = "refused"


RAW_VARIANTS = ("with_raw_response", "with_streaming_response")
"""Path segments of the clients' raw-response variants: free methods stay free under them, metered
ones are refused (the raw response is not settled)."""

_CLIENT_LOCAL = ("close", "is_closed", "platform_headers", "copy", "with_options", "with_middleware")
_CLIENT_HTTP = ("get", "post", "put", "patch", "delete", "request", "get_api_list")
_FREE_VERBS = ("*.list", "*.list_*", "*.retrieve", "*.retrieve_*", "*.delete", "*.archive", "*.cancel",
               "*.content", "*.download", "*.download_*", "*.results", "*.count", "*.count_tokens")

METERED: dict[str, frozenset[str]] = {
    "openai": frozenset({
        "chat.completions.create", "chat.completions.parse", "chat.completions.stream",
        "beta.chat.completions.create", "beta.chat.completions.parse", "beta.chat.completions.stream",
        "responses.create", "responses.parse", "responses.stream",
        "embeddings.create", "completions.create",
        "batches.create", "batches.retrieve",           # comptroller.sdk.batch_methods
    }),
    "anthropic": frozenset({
        "messages.create", "messages.parse", "messages.stream",
        "beta.messages.create", "beta.messages.parse", "beta.messages.stream",
        "messages.batches.create", "messages.batches.retrieve", "messages.batches.results",  # batch_methods
        "beta.messages.batches.create", "beta.messages.batches.retrieve", "beta.messages.batches.results",
    }),
}
"""Exact names, implemented by the provider modules."""

FREE: dict[str, tuple[str, ...]] = {
    "openai": (*_CLIENT_LOCAL, *_FREE_VERBS,
               "models.*", "files.*", "uploads.*", "admin.*", "webhooks.*", "conversations.*", "skills.*",
               "moderations.create",            # the moderation endpoint is free (OpenAI pricing page)
               "chat.completions.update", "beta.chat.completions.update",  # stored completion metadata
               "responses.input_tokens.count", "beta.responses.input_tokens.count",
               "containers.files.*"),
    "anthropic": (*_CLIENT_LOCAL, *_FREE_VERBS,
                  "models.*", "files.*", "beta.files.*", "beta.models.*", "organization.*", "beta.organization.*",
                  "beta.webhooks.*", "skills.*", "beta.skills.*", "user_profiles.*", "beta.user_profiles.*",
                  "beta.compliance.*", "beta.vaults.*", "beta.tunnels.*"),
}
"""Patterns of methods that never bill tokens or per-call fees."""

REFUSED: dict[str, tuple[str, ...]] = {
    "openai": (*_CLIENT_HTTP,
               "batches.*",                     # any other batch method (create and retrieve are metered)
               "responses.compact", "responses.connect", "beta.responses.*",
               "audio.*", "images.*", "videos.*", "realtime.*", "beta.realtime.*", "live.*",
               "beta.assistants.*", "beta.threads.*", "beta.agents.*", "beta.chatkit.*",
               "fine_tuning.*", "evals.*", "containers.*", "vector_stores.*",
               "decisions.*", "content_provenance_checks.*", "safety.*"),
    "anthropic": (*_CLIENT_HTTP,
                  "messages.batches.*", "beta.messages.batches.*",  # any other batch method
                  "beta.messages.tool_runner", "beta.messages.thread",  # loops that call the unwrapped client
                  "beta.agents.*", "beta.sessions.*", "beta.deployments.*", "beta.deployment_runs.*",
                  "beta.dreams.*", "beta.environments.*", "beta.memory_stores.*"),
}
"""Patterns of methods that may bill and are not metered (raise unless allowed by name)."""


@lru_cache(maxsize=4096)
def classify(package: str, method: str) -> Kind | None:
    """The kind of a client method, or None when no list names it (the wrapper then refuses it).

    Memoised: a wrapped client decides each name on every attribute read, and the lists are constants.

    Args:
        package: ``openai`` or ``anthropic``.
        method: the dotted name on the client, e.g. ``chat.completions.create``.
    """
    if method in METERED[package]:
        return Kind.METERED
    if any(fnmatchcase(method, pattern) for pattern in FREE[package]):
        return Kind.FREE
    if any(fnmatchcase(method, pattern) for pattern in REFUSED[package]):
        return Kind.REFUSED
    return None
