"""The dispatcher: for each new message, who may answer, in what order, and why each other member may not.

DESIGN.md rule 8 ("What 221 AI Agents in One Chat Taught Us": free-form group chat
does not scale past about 8 agents; every agent paid to read the room, 10-20 % did
the work, and "thundering herds" answered one message at once). Pure: no I/O, no
clock; the edge passes the room's history and the group budget's remaining fraction.

Each member gets the first rule below that applies to it (the precedence):

====  ===================  =====================================================================
 #    rule                 effect
====  ===================  =====================================================================
 1    own message          the author never answers itself (so a judge is never dispatched by
                           its own verdict): ``author``
 2    budget spent         (:mod:`.budget` mode ``wrap_up``) the decider is asked to close
                           (``wrap_up``); everyone else ``budget_spent``
 3    loop cut-off         (:mod:`.loops`) members caught in the loop: ``loop_cut_off``; the
                           decider is asked to decide (``decide_loop``) unless it is caught
                           itself; everyone else ``loop_escalated``
 4    mention              ``@agent`` always answers: ``mentioned``
 5    budget low           (mode ``mentions_and_decider``) only the decider goes on to rules
                           6-7; everyone else ``budget_low``
 6    role rule            the member's role does not answer this kind of message: ``role_rule``
 7    cooldown             it wrote one of the last ``cooldown_messages`` messages, or within
                           ``cooldown_s`` seconds: ``cooldown``
 8    relevance            a ``chat`` message scores no more than ``relevance_min`` against the
                           member's role and description (BM25, :mod:`.relevance`):
                           ``not_relevant``; drafts and verdicts are gated by role rules alone
 9    at most k            the rest are ranked by relevance (then member order); mentions count
                           toward k and the ranked fill the free places (``ranked``), the
                           others are ``over_k``; the decider near the cap takes one place
====  ===================  =====================================================================

A message may mention at most k members (so rule 9 holds: never more than k answer).
Rule 3 outranks mentions: a ping-pong carried by mentions must still end. Responders
come in the order of their roles' ``after`` rules, then as chosen (mentions first).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from enum import StrEnum
from typing import Any

from comptroller.domain.dispatch.budget import BudgetMode, BudgetStep, Mode, budget_mode, check_k, check_steps
from comptroller.domain.dispatch.budget import default_steps as _default_steps
from comptroller.domain.dispatch.errors import GroupConfigError, MessageError, NoDeciderError
from comptroller.domain.dispatch.group import Group, Kind, Member
from comptroller.domain.dispatch.loops import LoopConfig, LoopFinding, detect_loop
from comptroller.domain.dispatch.message import Message
from comptroller.domain.dispatch.relevance import Bm25Relevance, Relevance

__all__ = ["Dispatch", "DispatchConfig", "Dispatcher", "LeftOut", "Pick", "Reason"]


class Reason(StrEnum):
    """Why a member was dispatched (the first four) or left out (the rest)."""

    MENTIONED = "mentioned"
    RANKED = "ranked"
    WRAP_UP = "wrap_up"
    DECIDE_LOOP = "decide_loop"
    AUTHOR = "author"
    BUDGET_SPENT = "budget_spent"
    LOOP_CUT_OFF = "loop_cut_off"
    LOOP_ESCALATED = "loop_escalated"
    BUDGET_LOW = "budget_low"
    ROLE_RULE = "role_rule"
    COOLDOWN = "cooldown"
    NOT_RELEVANT = "not_relevant"
    OVER_K = "over_k"


@dataclass(frozen=True, slots=True)
class DispatchConfig:
    """How a group dispatches.

    Attributes:
        k: the most responders per message (>= 1; default 3).
        steps: the group-budget steps (:mod:`.budget`); None: ``default_steps(k)``.
        mentions_only_below: remaining fraction below which only mentions and the decider answer.
        cooldown_messages: a member who wrote one of the last this many messages waits (0: off; default 2).
        cooldown_s: a member who wrote within this many seconds waits (0: off; default 0).
        relevance_min: a chat message must score above this against a member (default 0: share a word).
        loops: the loop cut-off thresholds.
        wrap_up: ask the decider to close when the group budget is spent (needs a decider).
        escalate_loops: ask the decider to decide when a loop is cut off (needs a decider); if
            False, the loop's members are cut off and the others follow the usual rules.

    Raises:
        GroupConfigError: on k < 1, bad steps, a negative cooldown or a fraction out of range.
    """

    k: int = 3
    steps: tuple[BudgetStep, ...] | None = None
    mentions_only_below: float = 0.10
    cooldown_messages: int = 2
    cooldown_s: float = 0.0
    relevance_min: float = 0.0
    loops: LoopConfig = field(default_factory=LoopConfig)
    wrap_up: bool = True
    escalate_loops: bool = True

    def __post_init__(self) -> None:
        check_k(self.k)
        below = self.mentions_only_below
        if isinstance(below, bool) or not isinstance(below, int | float) or not 0 <= below < 1:
            raise GroupConfigError(f"mentions_only_below must be a fraction in [0, 1), got {below!r}")
        steps = _default_steps(self.k) if self.steps is None else self.steps
        object.__setattr__(self, "steps", check_steps(tuple(steps), self.k, float(below)))
        if type(self.cooldown_messages) is not int or not 0 <= self.cooldown_messages <= 10_000:
            raise GroupConfigError(f"cooldown_messages must be an integer in 0..10000, got {self.cooldown_messages!r}")
        for name in ("cooldown_s", "relevance_min"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < math.inf:
                raise GroupConfigError(f"{name} must be a finite number >= 0, got {value!r}")

    @property
    def needs_decider(self) -> bool:
        """True if a rule asks the decider (wrap-up or loop escalation)."""
        return self.wrap_up or self.escalate_loops

    def mode(self, remaining: float | None) -> BudgetMode:
        """The budget mode for a remaining fraction (:func:`.budget.budget_mode`)."""
        assert self.steps is not None  # set in __post_init__
        return budget_mode(remaining, k=self.k, steps=self.steps, mentions_only_below=self.mentions_only_below)


@dataclass(frozen=True, slots=True)
class Pick:
    """A member asked to answer: its agent id, why, and its relevance score (None if not computed)."""

    agent: str
    reason: Reason
    score: float | None = None


@dataclass(frozen=True, slots=True)
class LeftOut:
    """A member not asked to answer, with the rule that left it out and one sentence of detail."""

    agent: str
    reason: Reason
    detail: str


@dataclass(frozen=True, slots=True)
class Dispatch:
    """The decision for one message.

    Attributes:
        group: the group id.
        message: the message id.
        mode: the group-budget mode; ``k``: its responder limit; ``remaining``: the fraction read.
        responders: who answers, in order.
        left_out: every other member, in member order, with its reason.
        loop: the loop found in the room's tail, if any.
    """

    group: str
    message: str
    mode: Mode
    k: int
    remaining: float | None
    responders: tuple[Pick, ...]
    left_out: tuple[LeftOut, ...]
    loop: LoopFinding | None = None

    @property
    def agents(self) -> tuple[str, ...]:
        """The responders' agent ids, in order."""
        return tuple(p.agent for p in self.responders)

    def reason_of(self, agent: str) -> Reason:
        """Why ``agent`` was dispatched or left out. Raises KeyError for a non-member."""
        reasons = {p.agent: p.reason for p in self.responders} | {x.agent: x.reason for x in self.left_out}
        return reasons[agent]

    def to_record(self) -> dict[str, Any]:
        """A JSON-ready record for the decision log."""
        return {
            "group": self.group, "message": self.message, "mode": str(self.mode), "k": self.k,
            "remaining": self.remaining,
            "responders": [{"agent": p.agent, "reason": str(p.reason), "score": p.score} for p in self.responders],
            "left_out": [{"agent": x.agent, "reason": str(x.reason), "detail": x.detail} for x in self.left_out],
            "loop": None if self.loop is None else {"kind": str(self.loop.kind), "agents": list(self.loop.agents),
                                                    "detail": self.loop.detail, **self.loop.evidence},
        }


def _cooled(history: Sequence[Message], message: Message, config: DispatchConfig) -> dict[str, str]:
    """Agents in cooldown, each with why."""
    cutoff = message.at - timedelta(seconds=config.cooldown_s)
    out: dict[str, str] = {}
    for ago, earlier in enumerate(reversed(history), start=1):
        by_count = ago <= config.cooldown_messages
        by_time = config.cooldown_s > 0 and earlier.at >= cutoff
        if not (by_count or by_time):
            break
        if earlier.author not in out:
            out[earlier.author] = (f"wrote message {earlier.id} {ago} message(s) ago (cooldown "
                                   f"{config.cooldown_messages} messages, {config.cooldown_s:g} s)")
    return out


class _Decision:
    """Collects picks and left-outs for one message (private)."""

    def __init__(self) -> None:
        self.picks: list[Pick] = []
        self.left: list[LeftOut] = []

    def pick(self, agent: str, reason: Reason, score: float | None = None) -> None:
        self.picks.append(Pick(agent, reason, score))

    def leave(self, agent: str, reason: Reason, detail: str) -> None:
        self.left.append(LeftOut(agent, reason, detail))


class Dispatcher:
    """Decides who answers each message of one group.

    Args:
        group: the room.
        config: the dispatch settings.
        relevance: a scorer over the members' ``"role description"`` texts, in member order
            (default: :class:`~.relevance.Bm25Relevance`).

    Raises:
        NoDeciderError: if the config needs a decider (wrap-up, loop escalation) and no member decides.
    """

    def __init__(self, group: Group, config: DispatchConfig | None = None, relevance: Relevance | None = None) -> None:
        self.group = group
        self.config = config or DispatchConfig()
        if self.config.needs_decider and not group.deciders:
            needs = [n for n, on in (("wrap_up", self.config.wrap_up), ("escalate_loops", self.config.escalate_loops))
                     if on]
            raise NoDeciderError(f"group {group.id!r} has no member with `decides`, and {' and '.join(needs)} "
                                 f"ask(s) the decider; flag one member `decides = true` or set "
                                 f"{' and '.join(f'{n} = false' for n in needs)}")
        self.decider: Member | None = group.deciders[0] if group.deciders else None
        self.relevance = relevance or Bm25Relevance([f"{m.role} {m.description}" for m in group.members])

    def check(self, message: Message) -> None:
        """Raise if the group cannot take ``message``.

        Raises:
            UnknownMemberError: a mention names a non-member.
            MessageError: more than k mentions, or a verdict from a member who does not decide.
        """
        for agent in message.mentions:
            self.group.member(agent)
        if len(message.mentions) > self.config.k:
            raise MessageError(f"message {message.id!r} mentions {len(message.mentions)} members; at most k = "
                               f"{self.config.k} may be asked to answer one message: mention fewer")
        if message.kind is Kind.VERDICT and not (self.group.has(message.author)
                                                 and self.group.member(message.author).decides):
            raise MessageError(f"{message.author!r} may not post a verdict in group {self.group.id!r}: only members "
                               f"who decide ({', '.join(m.agent for m in self.group.deciders) or 'none'}) ship a "
                               f"final decision; post it as chat or draft")

    def dispatch(self, message: Message, history: Sequence[Message], remaining: float | None) -> Dispatch:
        """Who answers ``message``, in order, and why each other member does not.

        Args:
            message: the new message (not in ``history``).
            history: the room's earlier messages, oldest first.
            remaining: the group budget's remaining fraction (None: no conversation budget).

        Raises:
            UnknownMemberError, MessageError: see :meth:`check`.
        """
        self.check(message)
        mode = self.config.mode(remaining)
        loop = detect_loop(history, message, self.group, self.config.loops)
        decision = _Decision()
        rest = list(self._structural(message, mode, loop, decision))
        fill = self._fill_places(mode, decision)
        self._rank(message, history, mode=mode, rest=rest, fill=fill, decision=decision)
        order = self.group.in_order(p.agent for p in decision.picks)
        by_agent = {p.agent: p for p in decision.picks}
        left_out = {x.agent: x for x in decision.left}
        return Dispatch(group=self.group.id, message=message.id, mode=mode.mode, k=mode.k, remaining=remaining,
                        responders=tuple(by_agent[a] for a in order),
                        left_out=tuple(left_out[m.agent] for m in self.group.members if m.agent in left_out),
                        loop=loop)

    def _structural(self, message: Message, mode: BudgetMode, loop: LoopFinding | None,
                    decision: _Decision) -> Iterator[Member]:
        """Rules 1-5; yields the members left for role, cooldown, relevance and k."""
        decider = self.decider.agent if self.decider else None
        mentioned = set(message.mentions)
        for member in self.group.members:
            agent = member.agent
            if agent == message.author:
                decision.leave(agent, Reason.AUTHOR, "wrote this message")
            elif mode.mode is Mode.WRAP_UP:
                if agent == decider and self.config.wrap_up:
                    decision.pick(agent, Reason.WRAP_UP)
                else:
                    decision.leave(agent, Reason.BUDGET_SPENT, f"the group budget is spent ({mode.remaining:.3f} left)")
            elif loop is not None and agent in loop.agents:
                decision.leave(agent, Reason.LOOP_CUT_OFF, loop.detail)
            elif loop is not None and self.config.escalate_loops:
                if agent == decider and decider not in loop.agents:
                    decision.pick(agent, Reason.DECIDE_LOOP)
                else:
                    decision.leave(agent, Reason.LOOP_ESCALATED, f"loop escalated to the decider: {loop.detail}")
            elif agent in mentioned:
                decision.pick(agent, Reason.MENTIONED)
            elif mode.mode is Mode.MENTIONS_AND_DECIDER and agent != decider:
                decision.leave(agent, Reason.BUDGET_LOW, f"only mentions and the decider answer with "
                               f"{mode.remaining:.3f} of the group budget left")
            else:
                yield member

    def _fill_places(self, mode: BudgetMode, decision: _Decision) -> int:
        """Places left for ranked members after the mentions (rule 9)."""
        if mode.mode is Mode.WRAP_UP or any(p.reason is not Reason.MENTIONED for p in decision.picks):
            return 0
        if mode.mode is Mode.MENTIONS_AND_DECIDER:
            return 1 if len(decision.picks) < self.config.k else 0
        return max(0, mode.k - len(decision.picks))

    def _rank(self, message: Message, history: Sequence[Message], *, mode: BudgetMode, rest: list[Member],
              fill: int, decision: _Decision) -> None:
        """Rules 6-9 over the members the structural rules left."""
        if not rest:
            return
        cooled = _cooled(history, message, self.config)
        scores: Sequence[float] | None = None
        index = {m.agent: i for i, m in enumerate(self.group.members)}
        ranked: list[tuple[float, int, str]] = []
        for member in rest:
            agent = member.agent
            if message.kind not in self.group.rule(member.role).answers:
                decision.leave(agent, Reason.ROLE_RULE, f"role {member.role!r} does not answer {message.kind} messages")
                continue
            if agent in cooled:
                decision.leave(agent, Reason.COOLDOWN, cooled[agent])
                continue
            if scores is None:
                scores = self.relevance.scores(message.text)
            score = scores[index[agent]]
            gated = message.kind is Kind.CHAT and mode.mode is not Mode.MENTIONS_AND_DECIDER
            if gated and score <= self.config.relevance_min:
                decision.leave(agent, Reason.NOT_RELEVANT, f"relevance {score:.3f} <= {self.config.relevance_min:g} "
                               f"to role {member.role!r} and its description")
                continue
            ranked.append((-score, index[agent], agent))
        ranked.sort()
        for place, (neg_score, _, agent) in enumerate(ranked):
            if place < fill:
                decision.pick(agent, Reason.RANKED, -neg_score)
            else:
                decision.leave(agent, Reason.OVER_K, f"ranked {place + 1} by relevance ({-neg_score:.3f}); "
                               f"{fill} place(s) were left after mentions (k = {mode.k}, mode {mode.mode})")
