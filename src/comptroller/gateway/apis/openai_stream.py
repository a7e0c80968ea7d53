"""The stream tally shared by OpenAI's Chat Completions and legacy Completions streams.

Both stream ``data:`` chunks with ``choices`` and, when ``stream_options.include_usage``
is on, a last chunk with ``usage`` and empty ``choices``, then ``data: [DONE]`` (API
reference, "The chat completion chunk object" and "The completion object"). Only what a
choice carries differs, so an adapter gives :class:`OpenAIStreamTally` one function that
measures a choice.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from comptroller.domain.usage import Usage, from_openai_usage

__all__ = ["ChoiceBytes", "OpenAIStreamTally"]

ChoiceBytes = Callable[[dict[str, Any]], int | None]
"""The UTF-8 bytes of generated text one streamed choice carries, or None if it carries no generation."""


class OpenAIStreamTally:
    """What an OpenAI-shaped stream has generated so far (a :class:`~.base.StreamTally`).

    Args:
        include_usage: the client asked for the usage chunk itself (else it is read, then dropped).
        choice_bytes: measures one choice object of a chunk (see :data:`ChoiceBytes`).
    """

    def __init__(self, include_usage: bool, choice_bytes: ChoiceBytes) -> None:
        self.include_usage = include_usage
        self.usage: Usage | None = None
        self.served_model: str | None = None
        self.chunks = 0
        self.text_bytes = 0
        self._choice_bytes = choice_bytes

    def observe(self, event: str | None, data: dict[str, Any]) -> bool:
        """Read one chunk; False for the usage chunk the client did not ask for (it is not forwarded)."""
        usage = from_openai_usage(data.get("usage"))
        if usage is not None:
            self.usage = usage
        if isinstance(data.get("model"), str):
            self.served_model = data["model"]
        for choice in data.get("choices") or ():
            size = self._choice_bytes(choice) if isinstance(choice, dict) else None
            if size is not None:
                self.chunks += 1
                self.text_bytes += size
        return self.include_usage or bool(data.get("choices")) or not data.get("usage")

    def final(self, event: str | None, data: dict[str, Any] | None) -> bool:
        """True at ``data: [DONE]`` (``data`` None)."""
        return data is None

    def output_tokens_seen(self) -> int:
        """An upper bound on the output tokens so far: one per chunk or per UTF-8 byte, whichever is more."""
        return max(self.chunks, self.text_bytes)
