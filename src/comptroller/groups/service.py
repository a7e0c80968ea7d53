"""The group service: the Python API an edge (the gateway's group routes, the SDK, the simulator) calls.

One :class:`GroupService` holds a registry of groups (:class:`~.config.GroupDefinition`)
and the ledger engine; the rooms, the dispatch gates and the groups created at run time
live in the ledger (:mod:`.rows`), so every worker and replica sees the same. For each message it

1. reads the group budget (the conversation budget, :func:`~.budget.group_budget_remaining`)
   from the engine's store at the engine's clock,
2. reads the room's tail from the ledger and asks the group's
   :class:`~comptroller.domain.dispatch.Dispatcher` who answers,
3. appends the message to the room by compare-and-set, with the decision and every reason
   as a ledger event of kind ``dispatch`` (level ``conversation``, the conversation's scope
   key) in the same write; a lost race reads the room again and decides again,
4. adds the responders to the conversation's dispatch gate, which the admit guard reads
   (a ``strict`` group refuses its other members' calls: ``not_dispatched``),
5. answers the :class:`~comptroller.domain.dispatch.Dispatch`.

Dispatched agents then make their LLM calls through :meth:`GroupService.call` (a
:class:`~comptroller.engine.CallRequest` attributed to the group's conversation) and
``engine.admit``, so the group budget that drove ``k`` also refuses their calls once spent.

The room keeps its last ``history_max`` messages (:mod:`comptroller.domain.dispatch.room`).
Posting a message id again (among the room's last 1,024) answers the first decision (kept
for the last 16 dispatches) and changes nothing: a safe retry; the same id with other
content is an error.

Groups given at start (the policy's) are registered as given; a group put or removed with
``persist=True`` (the admin API) is kept in the ledger and wins over the policy's on the
next start. Every worker reloads the ledger's groups when asked for one it does not know,
and at most every ``sync_s`` seconds when listing them.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from typing import Any

from comptroller.domain.defenses.dispatch_rule import GroupMode
from comptroller.domain.dispatch import Dispatch, GroupError, Message, MessageError, visible_history
from comptroller.domain.ledger import Event
from comptroller.domain.scopes import Attribution, Level, scope_key
from comptroller.engine import Admission, CallRequest, Engine
from comptroller.groups.budget import group_budget_remaining
from comptroller.groups.config import GroupDefinition
from comptroller.groups.rows import CAS_TRIES, GroupContentionError, GroupRows

__all__ = ["GroupService", "UnknownGroupError"]


class UnknownGroupError(GroupError):
    """No group with this id is registered."""


class GroupService:
    """Groups, their rooms in the ledger, and dispatch against the ledger.

    Args:
        engine: the ledger engine (its store holds the group budgets, rooms and gates; its clock is the time).
        namespace: the namespace of the groups' calls (the conversation budget's scope is
            ``namespace|conversation``).
        groups: the initial groups (e.g. ``load_groups(path).values()``); a group the ledger
            holds (created, changed or removed through the admin API) replaces its namesake.
        history_max: messages kept per room (1..10,000; default 64: the dispatcher reads
            ``cooldown_messages`` and the loop detectors' tail, 9 by default).
        log_decisions: append each decision to the ledger's events (kind ``dispatch``).
        sync_s: the longest a listing of groups may lag the ledger's groups, seconds.
    """

    def __init__(self, *, engine: Engine, namespace: str = "default", groups: Iterable[GroupDefinition] = (),
                 history_max: int = 64, log_decisions: bool = True, sync_s: float = 1.0) -> None:
        if type(history_max) is not int or not 1 <= history_max <= 10_000:
            raise ValueError(f"history_max must be an integer in 1..10000, got {history_max!r}")
        self.engine = engine
        self.namespace = namespace
        self.history_max = history_max
        self.log_decisions = log_decisions
        self.sync_s = sync_s
        self.rows = GroupRows(engine.store, namespace)
        self._lock = threading.Lock()
        self._groups: dict[str, GroupDefinition] = {}
        self._versions: dict[str, int] = {}
        self._synced_at = time.monotonic()
        stored = self.rows.definitions()
        for definition in groups:
            if definition.id not in stored:
                self.put_group(definition)
        self._apply(stored)

    # registry
    def put_group(self, definition: GroupDefinition, *, persist: bool = False) -> None:
        """Register or replace a group (its room is kept), and set its conversation's gate mode.

        Args:
            definition: the group.
            persist: keep it in the ledger (it survives a restart and reaches every worker);
                needs ``definition.table`` (groups parsed from a table have it).

        Raises:
            ValueError: ``persist`` for a group built in code (no table).
        """
        if persist and definition.table is None:
            raise ValueError(f"group {definition.id!r} was built in code; only a group parsed from its "
                             "[groups.NAME] table can be kept in the ledger")
        self.rows.set_gate(definition.group.conversation, definition.id, definition.mode)
        if persist:
            self.rows.put_definition(definition.id, definition.table)
        with self._lock:
            self._groups[definition.id] = definition

    def remove_group(self, group_id: str, *, persist: bool = False) -> bool:
        """Forget a group (its gate turns advisory); True if it existed. Its spend and room stay in the ledger.

        Args:
            group_id: the group.
            persist: keep the removal in the ledger (a policy's group stays removed after a restart).
        """
        if group_id not in self._groups:
            self.sync()  # created on another worker
        with self._lock:
            definition = self._groups.pop(group_id, None)
        if definition is None:
            return False
        self.rows.set_gate(definition.group.conversation, group_id, GroupMode.ADVISORY)
        if persist:
            self.rows.put_definition(group_id, None)
        return True

    def sync(self) -> None:
        """Load the groups the ledger holds that this process has not seen yet (or removed since)."""
        self._apply(self.rows.definitions())

    def _apply(self, stored: dict[str, tuple[int, dict[str, Any] | None]]) -> None:
        self._synced_at = time.monotonic()
        for group_id, (version, table) in stored.items():
            if self._versions.get(group_id) == version:
                continue
            with self._lock:
                self._versions[group_id] = version
                if table is None:
                    self._groups.pop(group_id, None)
                else:
                    self._groups[group_id] = GroupDefinition.from_mapping(group_id, table)

    def group(self, group_id: str) -> GroupDefinition:
        """The registered group (the ledger's groups are reloaded on a miss). Raises UnknownGroupError."""
        found = self._groups.get(group_id)
        if found is None:
            self.sync()
            found = self._groups.get(group_id)
        if found is None:
            known = ", ".join(sorted(self._groups)) or "none"
            raise UnknownGroupError(f"no group {group_id!r}; registered groups: {known}")
        return found

    def group_ids(self) -> list[str]:
        """Registered group ids, sorted (the ledger's groups reloaded when older than ``sync_s``)."""
        if time.monotonic() - self._synced_at >= self.sync_s:
            self.sync()
        return sorted(self._groups)

    # dispatch
    def remaining(self, group_id: str) -> float | None:
        """The group budget's remaining fraction now (None: no conversation budget)."""
        definition = self.group(group_id)
        return group_budget_remaining(self.engine.store, namespace=self.namespace,
                                      conversation=definition.group.conversation, now=self.engine.clock.now())

    def dispatch(self, group_id: str, message: Message) -> Dispatch:
        """Decide who answers ``message``, add it to the room and its gate, log the decision.

        Raises:
            UnknownGroupError: for an unregistered group.
            UnknownMemberError, MessageError: for a message the group cannot take, or a message id
                reused for another message (nothing is recorded).
            GroupContentionError: the room kept changing (more than ``CAS_TRIES`` lost races).
        """
        definition = self.group(group_id)
        remaining = self.remaining(group_id)
        for _ in range(CAS_TRIES):
            room = self.rows.room(group_id)
            seen, earlier = room.repeat(message)
            if seen and earlier is None:
                raise MessageError(f"message {message.id!r} was recorded without dispatch, or dispatched too long "
                                   "ago for its decision to be kept; post new messages with new ids")
            decision = earlier or definition.dispatcher.dispatch(message, list(room.messages), remaining)
            events = [self._event(definition, decision)] if self.log_decisions and not seen else []
            if seen or self.rows.put_room(room, room.add(message, decision, self.history_max), events):
                break
        else:
            raise GroupContentionError(f"the room of group {group_id!r} changed {CAS_TRIES} times during one "
                                       "dispatch; retry the message")
        self.rows.gate_dispatch(definition.group.conversation, group_id, definition.mode, message.id,
                                decision.agents)
        return decision

    def record(self, group_id: str, message: Message) -> None:
        """Add ``message`` to the room without asking who answers it (a reply nobody is to answer).

        It counts for cooldowns, loops and isolation views like any message.

        Raises:
            UnknownGroupError, UnknownMemberError, MessageError: as :meth:`dispatch`.
        """
        definition = self.group(group_id)
        definition.dispatcher.check(message)
        for _ in range(CAS_TRIES):
            room = self.rows.room(group_id)
            if room.repeat(message)[0] or self.rows.put_room(room, room.add(message, None, self.history_max)):
                return
        raise GroupContentionError(f"the room of group {group_id!r} changed {CAS_TRIES} times during one "
                                   "record; retry the message")

    def history(self, group_id: str) -> list[Message]:
        """The room's kept messages (the last ``history_max``), oldest first."""
        self.group(group_id)
        return list(self.rows.room(group_id).messages)

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
             idempotency_key: str | None = None, text: str | None = None,
             message_id: str | None = None) -> CallRequest:
        """A :class:`CallRequest` for ``agent``'s LLM call in the group, attributed to its conversation.

        ``message_id`` names the message the call answers (a strict group admits only the members
        dispatched for it; None: the latest dispatched message).
        """
        return CallRequest(attribution=self.attribution(group_id, agent), model=model,
                           input_tokens_max=input_tokens_max, max_tokens=max_tokens,
                           idempotency_key=idempotency_key, text=text, message_id=message_id)

    def admit(self, group_id: str, agent: str, *, model: str, input_tokens_max: int, max_tokens: int | None = None,
              idempotency_key: str | None = None, message_id: str | None = None) -> Admission:
        """``engine.admit`` of :meth:`call`: the dispatch rule, then every budget (the group's included), or refuse."""
        return self.engine.admit(self.call(group_id, agent, model=model, input_tokens_max=input_tokens_max,
                                           max_tokens=max_tokens, idempotency_key=idempotency_key,
                                           message_id=message_id))

    def _event(self, definition: GroupDefinition, decision: Dispatch) -> Event:
        return Event(ts=self.engine.clock.now(), kind="dispatch", code=str(decision.mode),
                     level=str(Level.CONVERSATION), scope=scope_key(self.namespace, definition.group.conversation),
                     detail=decision.to_record())
