"""OpenAI Embeddings, ``POST /v1/embeddings`` (API reference, "Create embeddings"): input only.

Checked: ``model``; ``input`` a non-empty string, a non-empty array of strings, an array of
token ids or an array of such arrays. There is no output: the output bound is 0, so the
ceiling is the input bound priced (:func:`~comptroller.domain.tokens.request_input_tokens_max`:
a token id takes at least two bytes of the body, so token arrays are bounded too). Usage is
``usage.prompt_tokens``. Embeddings do not stream.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from comptroller.domain.usage import Usage, UsageError
from comptroller.gateway.apis.base import ApiRequest, Family, bad_request, input_bound, require_model
from comptroller.gateway.config import ProviderConfig
from comptroller.gateway.errors import ErrorShape

__all__ = ["EmbeddingsApi"]


def _check_input(value: Any) -> None:
    if isinstance(value, str) and value:
        return
    if isinstance(value, list) and value and (all(isinstance(v, str) for v in value)
                                              or all(type(v) is int for v in value)
                                              or all(isinstance(v, list) and all(type(t) is int for t in v)
                                                     for v in value)):
        return
    raise bad_request("input must be a non-empty string, an array of strings, an array of token ids, "
                      "or an array of token-id arrays", "input")


class _NoStream:
    """Embeddings never stream (``parse`` gives ``stream`` False); a tally that sees nothing."""

    usage: Usage | None = None
    served_model: str | None = None

    def observe(self, event: str | None, data: dict[str, Any]) -> bool:
        return True

    def final(self, event: str | None, data: dict[str, Any] | None) -> bool:
        return data is None

    def output_tokens_seen(self) -> int:
        return 0


class EmbeddingsApi:
    """The embeddings adapter (see the module docstring)."""

    name = "embeddings"
    path = "/embeddings"
    family = Family.OPENAI
    shape = ErrorShape.OPENAI

    def parse(self, body: dict[str, Any], raw_bytes: int) -> ApiRequest:
        """Check an embeddings body.

        Raises:
            GatewayError: 400 naming the parameter at fault.
        """
        model = require_model(body)
        if "input" not in body:
            raise bad_request("input is required: the text (or token ids) to embed", "input")
        _check_input(body["input"])
        return ApiRequest(body=body, model=model, stream=False, max_tokens=0,
                          input_tokens_max=input_bound(body, "embeddings"))

    def forward_body(self, request: ApiRequest, output_tokens_max: int, provider: ProviderConfig) -> dict[str, Any]:
        """The client's body as it came (there is no output to cap)."""
        return dict(request.body)

    def usage(self, answer: dict[str, Any]) -> Usage | None:
        """``usage.prompt_tokens`` (no output)."""
        value = answer.get("usage")
        if not isinstance(value, Mapping):
            return None
        try:
            return Usage(input_tokens=value["prompt_tokens"], output_tokens=0)
        except (KeyError, UsageError):
            return None

    def tally(self, request: ApiRequest) -> _NoStream:
        """Never used: embeddings do not stream."""
        return _NoStream()
