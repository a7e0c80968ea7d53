"""A refusal: why a call was not admitted, with the numbers people need to act."""

from __future__ import annotations

from dataclasses import dataclass

from comptroller.domain.codes import Code
from comptroller.domain.money import format_usd
from comptroller.domain.scopes import Level

__all__ = ["Refusal"]


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a call was not admitted.

    Attributes:
        code: the result code (``budget_exceeded`` here; later issues add more).
        level: the level that refused.
        scope: the scope key that refused.
        limit_mc, settled_mc, reserved_mc: that account's state, millicents.
        requested_mc: the ceiling the call asked to hold, millicents.
        budget_id: the refusing budget's id.
        retry_after_s: seconds until waiting could help (the period rolls over), if known.
    """

    code: Code
    level: Level
    scope: str
    limit_mc: int
    settled_mc: int
    reserved_mc: int
    requested_mc: int
    budget_id: str = ""
    retry_after_s: float | None = None

    @property
    def remaining_mc(self) -> int:
        """Money left on the refusing account, millicents."""
        return self.limit_mc - self.settled_mc - self.reserved_mc

    @property
    def message(self) -> str:
        """One sentence for people: what refused, its limit, what was seen, what to do."""
        return (
            f"{self.code}: the {self.level} budget {self.budget_id!r} on {self.scope!r} has "
            f"limit {format_usd(self.limit_mc)}, settled {format_usd(self.settled_mc)}, "
            f"reserved {format_usd(self.reserved_mc)}, remaining {format_usd(self.remaining_mc)}; "
            f"this call needs {format_usd(self.requested_mc)} (its ceiling). Lower max_tokens, "
            + ("" if self.retry_after_s is None else
               f"wait {self.retry_after_s:.0f} s for the period to roll over, ")
            + "or raise the limit."
        )
