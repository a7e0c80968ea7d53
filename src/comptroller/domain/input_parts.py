"""Non-text parts of a request: images bounded by documented rules, the rest refused.

:func:`comptroller.domain.tokens.request_input_tokens_max` counts a request's JSON bytes.
That over-counts text, but neither bytes nor a tokenizer say what an image, an audio clip, a
PDF or a reference to provider-side state costs. This module corrects the byte count:

* images (Chat ``image_url``, Responses ``input_image`` and ``computer_screenshot``,
  Anthropic ``image``): their base64 payload is taken out of the byte count and the
  documented bound (:mod:`comptroller.domain.image_tokens`) is added; an image by URL or
  file id gets the rule's maximum;
* audio, files and PDFs, video, item references, Anthropic ``container_upload`` and PDF
  documents: no documented upper bound, so :class:`UnboundableInputError` names the part;
* state the provider keeps and bills as input (``previous_response_id``, ``conversation``,
  stored ``prompt``, MCP servers) and server-side tools whose results are billed as input
  (web search, web fetch, file search, code execution): refused the same way.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any, Final

from comptroller.domain.image_tokens import anthropic_image_tokens_max, image_size_px, openai_image_tokens_max

__all__ = ["UnboundableInputError", "parts_adjustment", "refuse_unbounded_state"]


class UnboundableInputError(ValueError):
    """A request part whose input tokens no documented rule bounds.

    Attributes:
        param: where the part is, as a JSONPath-like string (``messages[0].content[1]``),
            or ``""`` for the whole request; the edge reports it as the error's ``param``.
    """

    def __init__(self, message: str, *, param: str) -> None:
        super().__init__(message)
        self.param = param


_IMAGE_TYPES: Final = frozenset({"image_url", "input_image", "computer_screenshot", "image"})
_REFUSED_TYPES: Final = frozenset({"input_audio", "audio", "audio_url", "file", "input_file", "video",
                                   "video_url", "input_video", "item_reference", "container_upload"})
_TEXT_DOCUMENT_SOURCES: Final = frozenset({"text", "content"})
_DETAILS: Final = frozenset({"low", "high", "auto"})
# Any non-text part shows one of these in compact JSON; a request without them skips the walk (one regex pass).
_MARKERS: Final = re.compile("|".join(re.escape(marker) for marker in (
    *(f'"type":"{kind}"' for kind in sorted(_IMAGE_TYPES | _REFUSED_TYPES | {"document"})),
    '"url":', '"data":', '"file_id":', '"file_data":')))
_STATE_FIELDS: Final[Mapping[str, tuple[str, ...]]] = {
    "responses": ("previous_response_id", "conversation", "prompt"),
    "messages": ("mcp_servers",),
    "chat": ("web_search_options",),
}
_FUNCTION_TOOL_TYPES: Final = frozenset({"function", "custom"})
_ANTHROPIC_CLIENT_TOOLS: Final = ("custom", "bash_", "text_editor_", "computer_", "memory_")


def refuse_unbounded_state(body: Mapping[str, Any], *, api: str) -> None:
    """Refuse fields whose billed input lives at the provider or in a server-side tool's results.

    Raises:
        UnboundableInputError: naming the field or tool (e.g. ``tools[2]``).
    """
    for field in _STATE_FIELDS.get(api, ()):
        if body.get(field) is not None:
            raise UnboundableInputError(
                f"'{field}' makes the provider add input the gateway cannot see or bound; send the "
                "whole input in the request instead", param=field)
    messages = body.get("messages")
    if api == "chat" and isinstance(messages, Sequence):
        for index, message in enumerate(messages):
            if isinstance(message, Mapping) and message.get("audio") is not None:
                raise UnboundableInputError(
                    "an assistant message's 'audio' replays a previous audio answer, billed as audio input "
                    "with no documented bound; send its transcript as content instead",
                    param=f"messages[{index}].audio")
    tools = body.get("tools")
    if not isinstance(tools, Sequence) or isinstance(tools, str):
        return
    for index, tool in enumerate(tools):
        kind = tool.get("type") if isinstance(tool, Mapping) else None
        if api == "messages":
            allowed = kind is None or (isinstance(kind, str) and kind.startswith(_ANTHROPIC_CLIENT_TOOLS))
        else:
            allowed = isinstance(kind, str) and kind in _FUNCTION_TOOL_TYPES
        if not allowed:
            raise UnboundableInputError(
                f"tool type {kind!r} runs at the provider and bills its results as input, which the "
                "gateway cannot bound; only function (client) tools are metered", param=f"tools[{index}]")


def parts_adjustment(text: str, *, api: str, model: str) -> int:
    """Tokens to add to the byte count of ``text`` (a request's compact JSON) for its non-text parts.

    Args:
        text: the compact JSON the byte count was taken of.
        api: the request shape (``chat``, ``responses``, ``messages``, ...).
        model: the requested model, which picks OpenAI's image rule.

    Returns:
        For every image: its documented bound minus the bytes of its base64 payload (so the
        total can fall below the byte count, never below the billed tokens); 0 for a request
        with no non-text part.

    Raises:
        UnboundableInputError: for a part no documented rule bounds (module docstring).
    """
    if _MARKERS.search(text) is None:
        return 0
    adjustment = 0
    stack: list[tuple[Any, str]] = [(json.loads(text), "")]
    while stack:
        node, path = stack.pop()
        if isinstance(node, Mapping):
            kind = node.get("type")
            if isinstance(kind, str) and _is_part(node, kind, path):
                if kind in _IMAGE_TYPES:
                    adjustment += _image(node, kind, api=api, model=model, path=path)
                    continue
                if kind == "document" and not _text_document(node, path):
                    continue
            stack.extend((value, f"{path}.{key}" if path else str(key)) for key, value in node.items())
        elif isinstance(node, list):
            stack.extend((value, f"{path}[{index}]") for index, value in enumerate(node))
    return adjustment


def _is_part(node: Mapping[str, Any], kind: str, path: str) -> bool:
    """True for a part this module handles; raises for parts it refuses."""
    if kind in _REFUSED_TYPES:
        raise UnboundableInputError(
            f"cannot bound the input tokens of a {kind!r} part: the provider documents no upper bound; "
            "send its text instead", param=path)
    media = node.get(kind)
    if kind not in _IMAGE_TYPES and kind != "document" and isinstance(media, Mapping) and (
            "url" in media or "data" in media):
        raise UnboundableInputError(
            f"cannot bound the input tokens of a {kind!r} part: no documented rule for this media type",
            param=path)
    return kind in _IMAGE_TYPES or kind == "document"


def _text_document(node: Mapping[str, Any], path: str) -> bool:
    source = node.get("source")
    kind = source.get("type") if isinstance(source, Mapping) else None
    if isinstance(kind, str) and kind in _TEXT_DOCUMENT_SOURCES:
        return True
    raise UnboundableInputError(
        f"cannot bound the input tokens of a document with source type {kind!r} (PDFs cost text plus an "
        "image per page, with no documented upper bound); send a text document instead", param=path)


def _payload(node: Mapping[str, Any], kind: str) -> tuple[str | None, str]:
    """The image's (base64 payload or None, detail) in each API's shape."""
    if kind == "image":
        source = node.get("source")
        if isinstance(source, Mapping) and source.get("type") == "base64" and isinstance(source.get("data"), str):
            return source["data"], "high"
        return None, "high"
    inner = node.get("image_url")
    detail = node.get("detail")
    if isinstance(inner, Mapping):
        detail = inner.get("detail", detail)
        inner = inner.get("url")
    data = inner if isinstance(inner, str) and inner.startswith("data:") else None
    return data, detail if isinstance(detail, str) else "auto"


def _image(node: Mapping[str, Any], kind: str, *, api: str, model: str, path: str) -> int:
    if kind == "image" and not isinstance(node.get("source"), Mapping):
        raise UnboundableInputError("an 'image' part needs a 'source' (base64, url or file)", param=path)
    data, detail = _payload(node, kind)
    if detail not in _DETAILS:
        raise UnboundableInputError(
            f"image detail {detail!r} has no documented token rule here; use 'low', 'high' or 'auto'", param=path)
    size = image_size_px(data) if data is not None else None
    bound = (anthropic_image_tokens_max(size) if api == "messages"
             else openai_image_tokens_max(model, detail=detail, size=size))
    return bound - (len(data.encode("utf-8", "surrogatepass")) if data is not None else 0)
