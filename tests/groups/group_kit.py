"""A small studio group and message builders shared by the group tests."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

from comptroller.domain.dispatch import DispatchConfig, Dispatcher, Flag, Group, Kind, Member, Message, RoleRule

T0 = datetime(2025, 6, 2, 9, 0, tzinfo=UTC)

MEMBERS = (
    Member("ana", "writer", "python backend api database"),
    Member("ben", "writer", "css html frontend design layout"),
    Member("cy", "critic", "code review bugs security"),
    Member("dee", "judge", "final decision release ship", frozenset({Flag.DECIDES})),
    Member("eve", "researcher", "literature papers benchmarks data"),
)
RULES = {
    "writer": RoleRule("writer", answers=frozenset({Kind.CHAT, Kind.DRAFT})),
    "critic": RoleRule("critic", answers=frozenset({Kind.DRAFT}), isolated=True),
    "judge": RoleRule("judge", answers=frozenset({Kind.DRAFT}), after=("critic",), isolated=True),
}


def studio(**config: object) -> Dispatcher:
    """The studio group (writers ana and ben, critic cy, judge dee who decides, researcher eve)."""
    return Dispatcher(Group("studio", MEMBERS, RULES), DispatchConfig(**config))  # type: ignore[arg-type]


def msg(n: int, author: str, text: str, kind: Kind = Kind.CHAT, *, mentions: Iterable[str] = (),
        at: datetime | None = None) -> Message:
    """Message ``m{n}`` posted ``n`` seconds after T0 unless ``at`` is given."""
    return Message(f"m{n}", author, text, at or T0 + timedelta(seconds=n), kind, tuple(mentions))
