"""The exact input recount of a request, with ``bpe-openai`` when it is installed (the ``exact`` extra).

The admission path reserves on the byte bound
(:func:`~comptroller.domain.tokens.request_input_tokens_max`); near a budget's edge, the engine
asks the call's :func:`input_recount` for a tighter bound on the model it prices
(:mod:`comptroller.domain.exact_tokens`) and reserves on that instead
(:mod:`comptroller.engine.recount`).

``bpe-openai`` (a Rust BPE with tiktoken's cl100k_base and o200k_base vocabularies inside its
wheel) is optional: ``pip install 'comptroller[exact]'``. Without it :func:`input_recount` answers
None and every call keeps the byte bound. Nothing is downloaded: the vocabulary is read from the
installed package the first time a recount needs it (measured once per process: 0.1-0.2 s; resident
memory grows by about 63 MB for the library, 34 MB for cl100k, 76 MB for o200k).
"""

from __future__ import annotations

import importlib.util
import threading
from collections.abc import Mapping
from typing import Any, Final

from comptroller.domain.exact_tokens import TextCounter, encoding_for_model, exact_input_tokens_max
from comptroller.domain.tokens import Api

__all__ = ["TEXT_CHARS_MAX", "ExactRecount", "available", "count_tokens", "input_recount"]

TEXT_CHARS_MAX: Final = 500_000
"""Longer texts are byte-counted: ``bpe-openai`` refuses 1,000,000 characters or 200,000 tokens."""

_COUNTED_APIS: Final[Mapping[str, Api]] = {"chat": "chat", "responses": "responses", "embeddings": "embeddings",
                                            "completions": "completions"}
_LOCK = threading.Lock()
_ENCODINGS: dict[str, Any] = {}


def available() -> bool:
    """True when ``bpe-openai`` is installed (the ``exact`` extra), so OpenAI models' input can be recounted."""
    try:
        return importlib.util.find_spec("bpe_openai") is not None
    except ImportError:  # a meta-path finder that refuses the name (an import blocker): absent, as for replay
        return False


def _encoding(name: str) -> Any:
    encoding = _ENCODINGS.get(name)
    if encoding is None:
        with _LOCK:  # one load per process (about 0.2 s and up to 76 MB), not one per racing thread
            encoding = _ENCODINGS.get(name)
            if encoding is None:
                import bpe_openai  # type: ignore[import-untyped]  # noqa: PLC0415 (optional extra; no py.typed marker)

                encoding = _ENCODINGS[name] = bpe_openai.get_encoding(name)
    return encoding


def count_tokens(encoding: str, text: str) -> int | None:
    """The exact tokens of ``text`` in ``encoding`` (``o200k_base``, ``cl100k_base``): a :data:`TextCounter`.

    Returns:
        The count, or None for a text it does not count exactly (byte-counted instead): longer than
        :data:`TEXT_CHARS_MAX` characters, not encodable as UTF-8 (a lone surrogate, which
        ``bpe-openai`` would silently replace), refused by the tokenizer, or when the installed
        package cannot load (the byte bound is the safe answer).
    """
    if len(text) > TEXT_CHARS_MAX:
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return None
    try:
        return len(_encoding(encoding).encode_ordinary(text))
    except (RuntimeError, ValueError):  # bpe_openai.TokenizerError (a token limit), "Input too long"
        return None
    except (ImportError, OSError):  # a broken install (its library or vocabulary missing): the byte bound stays
        return None


class ExactRecount:
    """A request's recount: its input bound with the plain texts counted exactly, per priced model.

    An :class:`~comptroller.engine.recount.InputRecount`; build it with :func:`input_recount`.
    """

    def __init__(self, body: Mapping[str, Any], api: Api, count: TextCounter) -> None:
        self.body, self.api, self.count = body, api, count

    def covers(self, model: str) -> bool:
        """True for a model with an exact tokenizer (:func:`~comptroller.domain.exact_tokens.encoding_for_model`)."""
        return encoding_for_model(model) is not None

    def __call__(self, model: str) -> int | None:
        """The bound for ``model``, or None (no tokenizer, or no text counted exactly).

        Raises:
            UnboundableInputError: as :func:`~comptroller.domain.exact_tokens.exact_input_tokens_max`.
        """
        encoding = encoding_for_model(model)
        if encoding is None:
            return None
        return exact_input_tokens_max(self.body, api=self.api, encoding=encoding, count=self.count)


def input_recount(body: Mapping[str, Any], *, api: str, count: TextCounter | None = None) -> ExactRecount | None:
    """The recount a :class:`~comptroller.engine.CallRequest` carries, or None without a tokenizer.

    Args:
        body: the request body, as its byte bound was taken.
        api: the request shape (:data:`~comptroller.domain.tokens.Api`); Anthropic ``messages`` and
            any other name give None.
        count: the exact counter (default: :func:`count_tokens` when ``bpe-openai`` is installed).

    Returns:
        The :class:`ExactRecount` of ``body``, or None (no tokenizer installed, or an API without one).
    """
    counter = count if count is not None else (count_tokens if _AVAILABLE else None)
    shape = _COUNTED_APIS.get(api)
    if counter is None or shape is None:
        return None
    return ExactRecount(body, shape, counter)


_AVAILABLE: Final = available()
