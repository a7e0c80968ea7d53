"""The group service: the Python API an edge (the gateway's group routes, the SDK, the simulator) calls.

One :class:`GroupService` holds a registry of groups (:class:`~.config.GroupDefinition`),
each room's history, and the ledger engine. For each message it

1. reads the group budget (the conversation budget, :func:`~.budget.group_budget_remaining`)
   from the engine's store at the engine's clock,
2. asks the group's :class:`~comptroller.domain.dispatch.Dispatcher` who answers,
3. appends the message to the room and logs the decision with every reason as a ledger
   event of kind ``dispatch`` (level ``conversation``, the conversation's scope key),
4. answers the :class:`~comptroller.domain.dispatch.Dispatch`.

Dispatched agents then make their LLM calls through :meth:`GroupService.call` (a
:class:`~comptroller.engine.CallRequest` attributed to the group's conversation) and
``engine.admit``, so the group budget that drove ``k`` also refuses their calls once spent.

Rooms live in process memory (at most ``history_max`` messages each, oldest dropped);
a restart starts each room empty (cooldowns and loop tails begin anew), while spend
stays in the ledger. Posting a message id again (among the room's last 1,024) answers
the first decision and changes nothing (a safe retry); the same id with other content is
an error.
"""

from __future__ import annotations

import threading
from collections import OrderedDict, deque
from collections.abc import Iterable
from dataclasses import replace

from comptroller.domain.dispatch import Dispatch, GroupError, Message, MessageError, visible_history
from comptroller.domain.ledger import Event
from comptroller.domain.scopes import Attribution, Level, scope_key
from comptroller.engine import Admission, CallRequest, Engine
from comptroller.groups.budget import group_budget_remaining
from comptroller.groups.config import GroupDefinition

__all__ = ["GroupService", "UnknownGroupError"]

_IDS_KEPT = 1_024


class UnknownGroupError(GroupError):
    """No group with this id is registered."""


class _Room:
    """A room's history and its last message ids, each with the message and its decision (None: recorded)."""

    def __init__(self, history_max: int) -> None:
        self.history: deque[Message] = deque(maxlen=history_max)
        self.seen: OrderedDict[str, tuple[Message, Dispatch | None]] = OrderedDict()

    def repeat(self, message: Message) -> tuple[bool, Dispatch | None]:
        """(True, the first answer) if this message id was taken before; raises if its content differs.

        Only the content counts (author, text, kind, mentions): a retried request may be stamped
        with another time and still gets the first decision.
        """
        earlier = self.seen.get(message.id)
        if earlier is None:
            return False, None
        if replace(earlier[0], at=message.at) != message:  # a retry may carry another time
            raise MessageError(f"message id {message.id!r} was already used for another message in this group; "
                               f"give each message its own id")
        return True, earlier[1]

    def add(self, message: Message, decision: Dispatch | None) -> None:
        self.history.append(message)
        self.seen[message.id] = (message, decision)
        if len(self.seen) > _IDS_KEPT:
            self.seen.popitem(last=False)


class GroupService:
    """Groups, their rooms, and dispatch against the ledger.

    Args:
        engine: the ledger engine (its store holds the group budgets; its clock is the time).
        namespace: the namespace of the groups' calls (the conversation budget's scope is
            ``namespace|conversation``).
        groups: the initial groups (e.g. ``load_groups(path).values()``).
        history_max: messages kept per room (>= 1; default 10,000).
        log_decisions: append each decision to the ledger's events (kind ``dispatch``).
    """

    def __init__(self, *, engine: Engine, namespace: str = "default", groups: Iterable[GroupDefinition] = (),
                 history_max: int = 10_000, log_decisions: bool = True) -> None:
        if type(history_max) is not int or history_max < 1:
            raise ValueError(f"history_max must be an integer >= 1, got {history_max!r}")
        self.engine = engine
        self.namespace = namespace
        self.history_max = history_max
        self.log_decisions = log_decisions
        self._lock = threading.Lock()
        self._groups: dict[str, GroupDefinition] = {}
        self._rooms: dict[str, _Room] = {}
        for definition in groups:
            self.put_group(definition)

    # registry
    def put_group(self, definition: GroupDefinition) -> None:
        """Register or replace a group (its room's history is kept when replaced)."""
        with self._lock:
            self._groups[definition.id] = definition
            self._rooms.setdefault(definition.id, _Room(self.history_max))

    def remove_group(self, group_id: str) -> bool:
        """Forget a group and its room; True if it existed. Its spend stays in the ledger."""
        with self._lock:
            self._rooms.pop(group_id, None)
            return self._groups.pop(group_id, None) is not None

    def group(self, group_id: str) -> GroupDefinition:
        """The registered group. Raises UnknownGroupError naming the known ids."""
        found = self._groups.get(group_id)
        if found is None:
            known = ", ".join(sorted(self._groups)) or "none"
            raise UnknownGroupError(f"no group {group_id!r}; registered groups: {known}")
        return found

    def group_ids(self) -> list[str]:
        """Registered group ids, sorted."""
        return sorted(self._groups)

    # dispatch
    def remaining(self, group_id: str) -> float | None:
        """The group budget's remaining fraction now (None: no conversation budget)."""
        definition = self.group(group_id)
        return group_budget_remaining(self.engine.store, namespace=self.namespace,
                                      conversation=definition.group.conversation, now=self.engine.clock.now())

    def dispatch(self, group_id: str, message: Message) -> Dispatch:
        """Decide who answers ``message``, add it to the room, log the decision.

        Raises:
            UnknownGroupError: for an unregistered group.
            UnknownMemberError, MessageError: for a message the group cannot take, or a message id
                reused for another message (nothing is recorded).
        """
        definition = self.group(group_id)
        remaining = self.remaining(group_id)
        with self._lock:
            room = self._rooms[group_id]
            seen, earlier = room.repeat(message)
            if seen and earlier is not None:
                return earlier
            if seen:
                raise MessageError(f"message {message.id!r} was recorded without dispatch; it has no decision")
            decision = definition.dispatcher.dispatch(message, list(room.history), remaining)
            room.add(message, decision)
        if self.log_decisions:
            self.engine.store.record_event(self._event(definition, decision))
        return decision

    def record(self, group_id: str, message: Message) -> None:
        """Add ``message`` to the room without asking who answers it (a reply nobody is to answer).

        It counts for cooldowns, loops and isolation views like any message.

        Raises:
            UnknownGroupError, UnknownMemberError, MessageError: as :meth:`dispatch`.
        """
        definition = self.group(group_id)
        definition.dispatcher.check(message)
        with self._lock:
            room = self._rooms[group_id]
            if not room.repeat(message)[0]:
                room.add(message, None)

    def history(self, group_id: str) -> list[Message]:
        """The room's messages, oldest first."""
        self.group(group_id)
        with self._lock:
            return list(self._rooms[group_id].history)

    def context(self, group_id: str, agent: str) -> list[Message]:
        """What ``agent`` may read of the room (an isolated role sees drafts and verdicts only)."""
        definition = self.group(group_id)
        return visible_history(definition.group, agent, self.history(group_id))

    # calls of dispatched agents
    def attribution(self, group_id: str, agent: str, *, task: str | None = None,
                    phase: str | None = None) -> Attribution:
        """The attribution of ``agent``'s calls in the group: its tenant, the group's conversation.

        Raises:
            UnknownGroupError, UnknownMemberError.
        """
        definition = self.group(group_id)
        definition.group.member(agent)
        return Attribution(namespace=self.namespace, tenant=definition.tenants[agent], agent=agent,
                           conversation=definition.group.conversation, task=task, phase=phase,
                           conversation_shared=True)

    def call(self, group_id: str, agent: str, *, model: str, input_tokens_max: int, max_tokens: int | None = None,
             idempotency_key: str | None = None, text: str | None = None) -> CallRequest:
        """A :class:`CallRequest` for ``agent``'s LLM call in the group, attributed to its conversation."""
        return CallRequest(attribution=self.attribution(group_id, agent), model=model,
                           input_tokens_max=input_tokens_max, max_tokens=max_tokens,
                           idempotency_key=idempotency_key, text=text)

    def admit(self, group_id: str, agent: str, *, model: str, input_tokens_max: int, max_tokens: int | None = None,
              idempotency_key: str | None = None) -> Admission:
        """``engine.admit`` of :meth:`call`: reserve on every budget, the group budget included, or refuse."""
        return self.engine.admit(self.call(group_id, agent, model=model, input_tokens_max=input_tokens_max,
                                           max_tokens=max_tokens, idempotency_key=idempotency_key))

    def _event(self, definition: GroupDefinition, decision: Dispatch) -> Event:
        return Event(ts=self.engine.clock.now(), kind="dispatch", code=str(decision.mode),
                     level=str(Level.CONVERSATION), scope=scope_key(self.namespace, definition.group.conversation),
                     detail=decision.to_record())
