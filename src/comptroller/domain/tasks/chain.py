"""Who may assign work to whom: a chain of command.

Each agent names its direct reports; an agent may assign a task to itself, to a report, or to
anyone below a report (transitively). An agent outside the chain may assign only to itself.
After the 6-agent setup of "Running 6 AI Agents in Production": a lead hands work to writers
and a publisher, never the other way round.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

__all__ = ["ChainOfCommand"]


@dataclass(frozen=True, slots=True)
class ChainOfCommand:
    """Direct reports per agent (``{"lead": ("writer", "publisher"), "writer": ("researcher",)}``)."""

    reports: Mapping[str, Sequence[str]] = field(default_factory=dict)

    def below(self, agent: str) -> set[str]:
        """Every agent under ``agent`` (reports, their reports, ...), cycles cut."""
        seen: set[str] = set()
        todo = list(self.reports.get(agent, ()))
        while todo:
            nxt = todo.pop()
            if nxt not in seen and nxt != agent:
                seen.add(nxt)
                todo.extend(self.reports.get(nxt, ()))
        return seen

    def may_assign(self, assigner: str, assignee: str) -> bool:
        """True if ``assigner`` may give work to ``assignee`` (itself, or anyone below it)."""
        return assigner == assignee or assignee in self.below(assigner)
