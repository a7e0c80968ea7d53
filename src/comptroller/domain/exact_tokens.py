"""A tighter input bound for the models whose exact tokenizer is known (issue 14, "Ceilings").

:func:`~comptroller.domain.tokens.request_input_tokens_max` counts UTF-8 bytes: always safe, but
4-6x the billed input on English and code. For OpenAI's models the tokenizer is public (o200k_base
for gpt-4o, gpt-4.1, gpt-4.5, gpt-5 and the o-series; cl100k_base for gpt-4, gpt-3.5 and the
text-embedding models: tiktoken's ``model.py``), so the text of a message can be counted exactly.

:func:`exact_input_tokens_max` splits a request in two:

* **counted texts**: each message, input item or prompt whose only billed parts are a role and
  one text (``{"role": "user", "content": "..."}``, a single ``text``/``input_text`` part, a
  Responses ``input`` string, ``instructions``, an embeddings or completions string). The
  provider renders each between special tokens (``<|im_start|>user<|im_sep|>...<|im_end|>``;
  the harmony format's ``<|start|>``, ``<|message|>``, ``<|end|>``), so its text is tokenized
  on its own and its billed tokens are exactly ``count(role) + count(text)`` plus framing. The
  framing stays the byte rule's: :data:`~comptroller.domain.tokens.PER_MESSAGE_TOKENS` (8) per
  message and :data:`~comptroller.domain.tokens.PER_REQUEST_TOKENS` (8) per request, against the
  cookbook's 3 and 3 ("How to count tokens with tiktoken"), a margin of 5 tokens per message (the
  cookbook's rule is the same for gpt-5 and the o-series as for gpt-4o, openai-cookbook PR #2515;
  one gpt-5 call measured 109 billed prompt tokens against the rule's 110, pydantic-ai PR #3447);
* **the rest** (tools, ``tool_calls``, names, images, several text parts in one message, texts
  the counter refuses): the byte bound, with its image rules and refusals, of the request with
  the counted texts taken out.

The sum is an upper bound whenever the byte bound is one: nothing billed is left out, and
nothing is counted below its exact token count. Several text parts of one message are not
counted exactly because the provider joins them before tokenizing, and BPE is not subadditive
(the tokens of a joined text can exceed the sum of its parts' tokens).

Pure: the tokenizer is injected as a :data:`TextCounter` (:mod:`comptroller.exact_input` loads
``bpe-openai``, whose vocabularies ship inside its wheel; nothing is downloaded).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

from comptroller.domain.tokens import PER_MESSAGE_TOKENS, Api, request_input_tokens_max

__all__ = ["CL100K", "O200K", "TextCounter", "encoding_for_model", "exact_input_tokens_max"]

O200K: Final = "o200k_base"
CL100K: Final = "cl100k_base"

TextCounter = Callable[[str, str], int | None]
"""``count(encoding, text)``: the exact number of tokens of ``text`` in ``encoding`` (``o200k_base``
or ``cl100k_base``), or None when it cannot count that text (then it is byte-counted)."""

# tiktoken's model.py (MODEL_PREFIX_TO_ENCODING), restricted to the two encodings counted here.
_O200K_MODELS: Final = re.compile(r"(gpt-4o|chatgpt-4o|gpt-4\.1|gpt-4\.5|gpt-5|o1|o3|o4)(\b|-|$)")
_CL100K_MODELS: Final = re.compile(r"(gpt-4|gpt-3\.5|gpt-35|text-embedding-ada-002|text-embedding-3-)")
_PROVIDER_PREFIXES: Final = ("openai/", "azure/", "ft:")
_CHAT_TEXT_PARTS: Final = frozenset({"text"})
_RESPONSES_TEXT_PARTS: Final = frozenset({"input_text", "output_text"})
_INSTRUCTIONS_ROLE: Final = "developer"
_USER_ROLE: Final = "user"


def encoding_for_model(model: str) -> str | None:
    """The exact tokenizer of an OpenAI model, by tiktoken's model prefixes; None for any other model.

    Args:
        model: a model id (``gpt-4o-mini-2024-07-18``, ``openai/gpt-4.1``, ``ft:gpt-4o-mini:org::id``).

    Returns:
        ``"o200k_base"``, ``"cl100k_base"``, or None (Claude, Llama, Mistral..., older OpenAI
        models on p50k/r50k): their input keeps the byte bound.
    """
    name = model.strip().lower()
    for prefix in _PROVIDER_PREFIXES:
        name = name.removeprefix(prefix)
    if _O200K_MODELS.match(name):
        return O200K
    if _CL100K_MODELS.match(name):
        return CL100K
    return None


def _one_text(content: Any, kinds: frozenset[str]) -> str | None:
    """The text of a content that is one string or exactly one text part (nothing else), else None."""
    if isinstance(content, str):
        return content
    if isinstance(content, Sequence) and len(content) == 1 and isinstance(content[0], Mapping):
        part = content[0]
        if part.keys() <= {"type", "text"} and part.get("type") in kinds and isinstance(part.get("text"), str):
            return str(part["text"])
    return None


def _message_texts(item: Any, *, kinds: frozenset[str], responses: bool) -> tuple[str, str] | None:
    """(role, text) of a message whose only billed parts are a role and one text, else None."""
    if not isinstance(item, Mapping):
        return None
    allowed = {"role", "content", "type"} if responses else {"role", "content"}
    if not item.keys() <= allowed or (responses and item.get("type", "message") != "message"):
        return None
    role, text = item.get("role"), _one_text(item.get("content"), kinds)
    return (role, text) if isinstance(role, str) and text is not None else None


class _Split:
    """The texts counted exactly so far (tokens) and the request left for the byte bound."""

    def __init__(self, body: Mapping[str, Any], encoding: str, count: TextCounter) -> None:
        self.residual = dict(body)
        self.tokens = 0
        self.counted = 0
        self._encoding = encoding
        self._count = count

    def take(self, *texts: str) -> bool:
        """Count one message's texts (with its framing); False, counting nothing, if any is refused."""
        counts = [self._count(self._encoding, text) for text in texts]
        if any(c is None for c in counts):
            return False
        self.tokens += PER_MESSAGE_TOKENS + sum(c for c in counts if c is not None)
        self.counted += 1
        return True

    def messages(self, field: str, *, kinds: frozenset[str], responses: bool) -> None:
        """Count the plain messages of a list field; the others stay in the residual."""
        items = self.residual.get(field)
        if isinstance(items, str) and responses:
            if self.take(_USER_ROLE, items):
                del self.residual[field]
            return
        if not isinstance(items, Sequence) or isinstance(items, str):
            return
        kept = []
        for item in items:
            texts = _message_texts(item, kinds=kinds, responses=responses)
            if texts is None or not self.take(*texts):
                kept.append(item)
        self.residual[field] = kept

    def strings(self, field: str) -> None:
        """Count an embeddings input or completions prompt: a string or a list of strings."""
        value = self.residual.get(field)
        if isinstance(value, str):
            if self.take(value):
                del self.residual[field]
            return
        if isinstance(value, Sequence) and value and all(isinstance(v, str) for v in value):
            kept = [v for v in value if not self.take(v)]
            if kept:
                self.residual[field] = kept
            else:
                del self.residual[field]


def exact_input_tokens_max(body: Mapping[str, Any], *, api: Api, encoding: str, count: TextCounter) -> int | None:
    """An upper bound on the billed input tokens, with the plain texts counted exactly (module docstring).

    Args:
        body: the request body as parsed JSON (what
            :func:`~comptroller.domain.tokens.request_input_tokens_max` takes).
        api: the request shape; ``"messages"`` (Anthropic) has no exact tokenizer and gives None.
        encoding: the model's tokenizer (:func:`encoding_for_model`).
        count: the exact counter (:data:`TextCounter`).

    Returns:
        Tokens: the exact counts of the plain texts with their framing, plus the byte bound of the
        rest; None when no text could be counted exactly (the byte bound stands).

    Raises:
        UnboundableInputError: as :func:`~comptroller.domain.tokens.request_input_tokens_max`
            does, for a part no rule bounds (a request the byte bound refused is refused here too).
    """
    split = _Split(body, encoding, count)
    if api == "chat":
        split.messages("messages", kinds=_CHAT_TEXT_PARTS, responses=False)
    elif api == "responses":
        split.messages("input", kinds=_RESPONSES_TEXT_PARTS, responses=True)
        instructions = split.residual.get("instructions")
        if isinstance(instructions, str) and instructions and split.take(_INSTRUCTIONS_ROLE, instructions):
            del split.residual["instructions"]
    elif api == "embeddings":
        split.strings("input")
    elif api == "completions":
        split.strings("prompt")
    if split.counted == 0:
        return None
    return split.tokens + request_input_tokens_max(split.residual, api=api)
