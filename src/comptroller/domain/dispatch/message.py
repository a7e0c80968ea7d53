"""A message posted to a group: who wrote it, what it says, whom it mentions, what kind it is."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from comptroller.domain.dispatch.errors import MessageError
from comptroller.domain.dispatch.group import Kind

__all__ = ["Message", "mentions_in"]

_MENTION = re.compile(r"(?<![\w@])@([\w][\w.\-]*\w|\w)")
_TEXT_CHARS_MAX = 1_000_000


def mentions_in(text: str) -> tuple[str, ...]:
    """The ``@agent`` ids written in ``text``, in order of first appearance, without repeats.

    An id is letters, digits, ``_``, ``.`` and ``-`` (not ending in ``.`` or ``-``, so
    ``@critic.`` at the end of a sentence names ``critic``); ``a@b`` (an e-mail) is not a mention.
    """
    return tuple(dict.fromkeys(_MENTION.findall(text)))


@dataclass(frozen=True, slots=True)
class Message:
    """One message in a group.

    Attributes:
        id: the caller's id for the message (unique within the group).
        author: who wrote it: a member's agent id, or anyone else (a person, a tool).
        text: what it says.
        at: when it was posted (aware UTC).
        kind: chat, draft (work to review) or verdict (a final decision; deciders only).
        mentions: agent ids it addresses, in order, without repeats (see :func:`mentions_in`).

    Raises:
        MessageError: on an empty id or author, text that is not a string or too long, a naive time.
    """

    id: str
    author: str
    text: str
    at: datetime
    kind: Kind = Kind.CHAT
    mentions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in ("id", "author"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise MessageError(f"message {name} must be a non-empty string, got {value!r}")
        if not isinstance(self.text, str) or len(self.text) > _TEXT_CHARS_MAX:
            raise MessageError(f"message {self.id!r}: text must be a string of at most {_TEXT_CHARS_MAX:,} "
                               f"characters")
        if not isinstance(self.at, datetime) or self.at.tzinfo is None:
            raise MessageError(f"message {self.id!r}: `at` must be an aware datetime (UTC), got {self.at!r}")
        try:
            object.__setattr__(self, "kind", Kind(str(self.kind)))
        except ValueError:
            raise MessageError(f"message {self.id!r}: unknown kind {self.kind!r}; use one of: "
                               f"{', '.join(Kind)}") from None
        if isinstance(self.mentions, str) or not all(isinstance(m, str) for m in self.mentions):
            raise MessageError(f"message {self.id!r}: mentions must be a list of agent ids, got {self.mentions!r}")
        object.__setattr__(self, "mentions", tuple(dict.fromkeys(self.mentions)))
