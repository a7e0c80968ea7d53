"""Who a wrapped call is for: :class:`CallContext`, the attribution ids and run ids of the SDK.

A module of its own, below the governor and the provider wrappers, so that both can use it
without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from comptroller.domain.scopes import Attribution

__all__ = ["CallContext"]


@dataclass(frozen=True, slots=True)
class CallContext:
    """Attribution ids and run ids; None fields inherit from the enclosing context.

    Attributes:
        namespace, tenant, agent, conversation, task, phase: see :class:`Attribution`.
        run_id: the scheduled run the calls belong to (its deadline applies).
        attempt_id: the attempt of the task (counts against the re-attempt limit).
    """

    namespace: str | None = None
    tenant: str | None = None
    agent: str | None = None
    conversation: str | None = None
    task: str | None = None
    phase: str | None = None
    run_id: str | None = None
    attempt_id: str | None = None

    def over(self, base: CallContext) -> CallContext:
        """This context's ids where set, else ``base``'s."""
        return CallContext(**{f.name: getattr(self, f.name) if getattr(self, f.name) is not None
                              else getattr(base, f.name) for f in fields(self)})

    def attribution(self) -> Attribution:
        """The attribution (``default`` for an unset namespace, tenant or agent).

        Raises:
            AttributionError: on an empty or over-long id.
        """
        return Attribution(namespace=self.namespace or "default", tenant=self.tenant or "default",
                           agent=self.agent or "default", conversation=self.conversation, task=self.task,
                           phase=self.phase)
