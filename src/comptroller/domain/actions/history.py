"""The accepted actions a tenant's rate and near-duplicate rules look back on.

One state row per tenant, ``("action_history", tenant)``, so one compare-and-set covers
every rule of a check (the rate limits of the platform, the near-duplicates on the platform
and by the agent): two workers or replicas checking at once cannot both take the last slot.
An action enters the history when it is allowed or approved (it holds its slot from then on,
like a reservation), and leaves it if its outcome says it failed.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from comptroller.domain.actions.model import Action, JsonScalar

__all__ = ["HISTORY", "History", "HistoryEntry"]

HISTORY = "action_history"
"""The state kind of a tenant's history row."""


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """One accepted action: its id, agent, platform, kind, when it took its slot, and its text."""

    id: str
    agent: str
    platform: str
    kind: str
    at: datetime
    text: str

    @classmethod
    def of(cls, action: Action, at: datetime) -> HistoryEntry:
        """The entry for ``action`` accepted at ``at``."""
        return cls(action.id, action.agent, action.platform, action.kind, at, action.text)


@dataclass(frozen=True, slots=True)
class History:
    """A tenant's accepted actions, oldest first, and the row's version."""

    tenant: str
    entries: tuple[HistoryEntry, ...] = ()
    version: int = 0

    def on(self, platform: str, kind: str | None = None) -> list[HistoryEntry]:
        """Entries on ``platform`` (and of ``kind`` when given), oldest first."""
        return [e for e in self.entries if e.platform == platform and (kind is None or e.kind == kind)]

    def by(self, agent: str) -> list[HistoryEntry]:
        """Entries by ``agent`` on any platform, oldest first."""
        return [e for e in self.entries if e.agent == agent]

    def added(self, entry: HistoryEntry, now: datetime, *, keep_s: float, keep_n: int) -> History:
        """The next version with ``entry`` appended and what no rule can look at any more pruned.

        Args:
            entry: the accepted action.
            now: the check's time.
            keep_s: the longest window or gap any rule looks back on, in seconds.
            keep_n: the longest near-duplicate look-back (entries per platform and per agent).
        """
        entries = (*self.entries, entry)
        cutoff = now - timedelta(seconds=keep_s)
        kept: list[HistoryEntry] = []
        for i, e in enumerate(entries):
            later = entries[i + 1:]
            recent_on_platform = sum(1 for x in later if x.platform == e.platform) < keep_n
            recent_by_agent = sum(1 for x in later if x.agent == e.agent) < keep_n
            if e.at > cutoff or recent_on_platform or recent_by_agent:
                kept.append(e)
        return replace(self, entries=tuple(kept), version=self.version + 1)

    def without(self, action_id: str) -> History:
        """The next version without the entry of ``action_id`` (its outcome failed: the slot returns)."""
        return replace(self, entries=tuple(e for e in self.entries if e.id != action_id), version=self.version + 1)

    def to_record(self) -> dict[str, JsonScalar]:
        """The flat JSON record of the row (entries as one JSON string)."""
        return {"tenant": self.tenant, "version": self.version, "entries": json.dumps(
            [[e.id, e.agent, e.platform, e.kind, e.at.isoformat(), e.text] for e in self.entries])}

    @classmethod
    def from_record(cls, r: Mapping[str, JsonScalar]) -> History:
        """Parse :meth:`to_record`'s output."""
        rows: Iterable[list[str]] = json.loads(str(r["entries"]))
        entries = tuple(HistoryEntry(i, a, p, k, datetime.fromisoformat(at), t) for i, a, p, k, at, t in rows)
        return cls(tenant=str(r["tenant"]), entries=entries, version=int(str(r["version"])))
