"""The storm: a room of N agents answering M input messages, under three ways of choosing who answers.

"What 221 AI Agents in One Chat Taught Us" (KinthAI): with everyone free to answer, every
agent paid to read the growing room on every message, a few did the work, and the cost
curve did not flatten. This simulator replays that room in virtual time:

* N members (agent ``a000`` leads and decides); each has a topic among ``topics`` and a
  description of a few of that topic's words; its prompt size is drawn from the real traces
  (:class:`~.sizes.TokenSizes`);
* M input messages from a person, one a minute, each on a random topic; a share of them
  ``@mentions`` one member of that topic;
* a strategy picks who answers each input: ``everyone`` (no dispatch), ``mentions`` (only
  the mentioned member: OpenClaw's gate) or ``dispatch`` (our
  :class:`~comptroller.groups.GroupService`, the same code a gateway route calls);
* each responder reads its prompt and the whole room so far (capped by the model's context
  window), writes a reply whose size is drawn from the traces, and makes that call through
  the real :class:`~comptroller.engine.Engine` on an in-memory ledger, attributed to the
  group's conversation; with ``budget_usd`` the conversation budget applies (and drives
  ``k`` under ``dispatch``);
* replies join the room (everyone reads them next time) but are not answered themselves:
  one round per input, a lower bound for ``everyone``, whose real cascades are worse.

Every number comes from the ledger's usage log (cost) and the calls made (tokens).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from comptroller.clock import VirtualClock
from comptroller.domain.budgets import Budget
from comptroller.domain.caps import OutputCaps
from comptroller.domain.dispatch import DispatchConfig, Flag, Group, Member, Message
from comptroller.domain.money import usd_to_mc_half_up
from comptroller.domain.scopes import Level, scope_key
from comptroller.domain.usage import Usage
from comptroller.engine import Engine
from comptroller.groups import GroupDefinition, GroupService
from comptroller.ports import LedgerStore, PriceSource
from comptroller.simulate.sizes import TokenSizes
from comptroller.storage.memory import MemoryStore

__all__ = ["STRATEGIES", "StormConfig", "StormRow", "by_strategy", "run_storm"]

STRATEGIES: tuple[str, ...] = ("everyone", "mentions", "dispatch")
START = datetime(2025, 1, 6, 9, 0, tzinfo=UTC)
_NAMESPACE, _GROUP = "storm", "storm"
_TOPIC_WORDS = 12
_DESCRIPTION_WORDS = 5
_MESSAGE_WORDS = 5


@dataclass(frozen=True, slots=True)
class StormConfig:
    """What to simulate.

    Attributes:
        agents: room sizes N to run (each 2..1000).
        messages: input messages M per room (1..100,000).
        k: the dispatcher's most responders per message.
        topics: topics the members' domains and the messages spread over (1..1000).
        mention_share: share of input messages that mention one member (0..1).
        model: the model every call uses (it needs a price and a context window).
        seed: the random seed (same seed, same rooms and messages for every strategy).
        budget_usd: the group (conversation) budget, or None for none.
        strategies: which of :data:`STRATEGIES` to run.

    Raises:
        ValueError: on a value out of range.
    """

    agents: tuple[int, ...] = (5, 8, 13, 21, 34, 55, 89, 144, 221)
    messages: int = 40
    k: int = 3
    topics: int = 8
    mention_share: float = 0.3
    model: str = "gpt-4o-mini"
    seed: int = 7
    budget_usd: Decimal | None = None
    strategies: tuple[str, ...] = STRATEGIES

    def __post_init__(self) -> None:
        if not self.agents or any(type(n) is not int or not 2 <= n <= 1000 for n in self.agents):
            raise ValueError(f"agents must be room sizes in 2..1000, got {self.agents!r}")
        if type(self.messages) is not int or not 1 <= self.messages <= 100_000:
            raise ValueError(f"messages must be an integer in 1..100000, got {self.messages!r}")
        if type(self.topics) is not int or not 1 <= self.topics <= 1000:
            raise ValueError(f"topics must be an integer in 1..1000, got {self.topics!r}")
        if not 0 <= self.mention_share <= 1:
            raise ValueError(f"mention_share must be a fraction in [0, 1], got {self.mention_share!r}")
        unknown = set(self.strategies) - set(STRATEGIES)
        if unknown or not self.strategies:
            raise ValueError(f"strategies must be among {', '.join(STRATEGIES)}, got {self.strategies!r}")
        if self.budget_usd is not None and self.budget_usd < 0:
            raise ValueError(f"budget_usd must be >= 0, got {self.budget_usd}")
        DispatchConfig(k=self.k)  # k < 1 fails here with the dispatcher's message


@dataclass(frozen=True, slots=True)
class StormRow:
    """One strategy on one room size.

    Attributes:
        strategy, agents: which run.
        inputs: input messages posted.
        replies: calls admitted (each a reply in the room).
        refused: calls the ledger refused (the group budget).
        relevant_replies: replies by members whose topic was the message's.
        input_tokens, output_tokens: tokens of the admitted calls.
        cost_mc: their settled cost, millicents (the ledger's usage log).
    """

    strategy: str
    agents: int
    inputs: int
    replies: int
    refused: int
    relevant_replies: int
    input_tokens: int
    output_tokens: int
    cost_mc: int

    @property
    def replies_per_input(self) -> float:
        """Replies per input message."""
        return self.replies / self.inputs

    @property
    def tokens_per_input(self) -> float:
        """Input plus output tokens per input message."""
        return (self.input_tokens + self.output_tokens) / self.inputs

    @property
    def cost_mc_per_input(self) -> float:
        """Settled millicents per input message."""
        return self.cost_mc / self.inputs

    @property
    def relevant_share(self) -> float | None:
        """Share of replies that came from a member of the message's topic (None without replies)."""
        return self.relevant_replies / self.replies if self.replies else None

    def to_dict(self) -> dict[str, object]:
        """JSON-ready, with the per-input figures."""
        return {"strategy": self.strategy, "agents": self.agents, "inputs": self.inputs, "replies": self.replies,
                "refused": self.refused, "relevant_replies": self.relevant_replies,
                "input_tokens": self.input_tokens, "output_tokens": self.output_tokens, "cost_mc": self.cost_mc,
                "replies_per_input": self.replies_per_input, "tokens_per_input": self.tokens_per_input,
                "cost_mc_per_input": self.cost_mc_per_input, "relevant_share": self.relevant_share}


@dataclass(frozen=True, slots=True)
class _Room:
    """One room size's members, inputs and drawn sizes, shared by every strategy."""

    definition: GroupDefinition
    topic_of: dict[str, int]
    prompt_of: dict[str, int]
    inputs: list[tuple[Message, int, int]] = field(default_factory=list)  # message, topic, tokens
    reply_tokens: list[list[int]] = field(default_factory=list)  # [input][member index]


def _words(topic: int) -> list[str]:
    return [f"topic{topic}term{j}" for j in range(_TOPIC_WORDS)]


def _room(config: StormConfig, n: int, sizes: TokenSizes) -> _Room:
    rng = random.Random(f"{config.seed}:{n}")
    members, topic_of, prompt_of = [], {}, {}
    for i in range(n):
        agent, topic = f"a{i:03d}", i % config.topics
        words = rng.sample(_words(topic), _DESCRIPTION_WORDS)
        members.append(Member(agent, "lead" if i == 0 else "specialist", " ".join(words),
                              frozenset({Flag.DECIDES}) if i == 0 else frozenset()))
        topic_of[agent], prompt_of[agent] = topic, rng.choice(sizes.prompts)
    definition = GroupDefinition(Group(_GROUP, tuple(members)), DispatchConfig(k=config.k))
    room = _Room(definition, topic_of, prompt_of)
    for i in range(config.messages):
        topic = rng.randrange(config.topics)
        of_topic = [m.agent for m in members if topic_of[m.agent] == topic]
        mentions = (rng.choice(of_topic),) if of_topic and rng.random() < config.mention_share else ()
        text = " ".join([*(f"@{a}" for a in mentions), *rng.sample(_words(topic), _MESSAGE_WORDS)])
        message = Message(f"in{i}", "person", text, START + timedelta(minutes=i), mentions=mentions)
        room.inputs.append((message, topic, rng.choice(sizes.messages)))
        room.reply_tokens.append([rng.choice(sizes.messages) for _ in range(n)])
    return room


def _responders(strategy: str, service: GroupService, message: Message) -> tuple[str, ...]:
    """Who answers under each strategy; ``dispatch`` is GroupService.dispatch, the gateway's path."""
    if strategy == "dispatch":
        return service.dispatch(_GROUP, message).agents
    service.record(_GROUP, message)
    if strategy == "mentions":
        return message.mentions
    return tuple(m.agent for m in service.group(_GROUP).group.members)


def _run(strategy: str, room: _Room, config: StormConfig, prices: PriceSource, store: LedgerStore) -> StormRow:
    clock = VirtualClock(START)
    engine = Engine(store=store, prices=prices, clock=clock, caps=OutputCaps(default_tokens=1_000_000))
    model = prices.resolve(config.model)
    window = prices.price(model, START).context_window
    if window is None:
        raise ValueError(f"model {config.model!r} has no known context window; choose one that has (gpt-4o-mini)")
    if config.budget_usd is not None:
        engine.store.put_budget(Budget(Level.CONVERSATION, scope_key(_NAMESPACE, _GROUP),
                                       usd_to_mc_half_up(config.budget_usd)))
    service = GroupService(engine=engine, namespace=_NAMESPACE, groups=[room.definition])
    index = {m.agent: i for i, m in enumerate(room.definition.group.members)}
    room_tokens = replies = refused = relevant = input_tokens = output_tokens = 0
    for i, (message, topic, size) in enumerate(room.inputs):
        clock.set(message.at)
        room_tokens += size
        written: list[Message] = []
        for agent in _responders(strategy, service, message):
            output = room.reply_tokens[i][index[agent]]
            prompt = room.prompt_of[agent]
            read = prompt + min(room_tokens, max(0, window - prompt - output))
            admission = service.admit(_GROUP, agent, model=model, input_tokens_max=read, max_tokens=output,
                                      idempotency_key=f"{i}:{agent}")
            if admission.reservation is None:
                refused += 1
                continue
            engine.settle(admission.reservation, Usage(input_tokens=read, output_tokens=output))
            replies, input_tokens, output_tokens = replies + 1, input_tokens + read, output_tokens + output
            relevant += room.topic_of[agent] == topic
            written.append(Message(f"re{i}:{agent}", agent, room.definition.group.member(agent).description,
                                   message.at + timedelta(seconds=30)))
            room_tokens += output
        for reply in written:
            service.record(_GROUP, reply)
    cost = sum(r.cost_mc for r in engine.store.usage_records())
    return StormRow(strategy, len(index), len(room.inputs), replies, refused, relevant, input_tokens,
                    output_tokens, cost)


def run_storm(config: StormConfig, sizes: TokenSizes, prices: PriceSource,
              on_progress: Callable[[str, int], None] | None = None,
              store_for: Callable[[str, int], LedgerStore] | None = None) -> list[StormRow]:
    """Run every strategy on every room size; rows ordered by strategy, then N.

    Args:
        config: what to simulate.
        sizes: token pools from the real traces.
        prices: the price source (e.g. ``comptroller.bootstrap.price_book(policy)``).
        on_progress: called with (strategy, N) after each run.
        store_for: opens the empty ledger of one run (strategy, N); default a new in-memory store.

    Raises:
        UnknownModelError: for a model without a price; ValueError for one without a context window.
    """
    rooms = {n: _room(config, n, sizes) for n in config.agents}
    rows: list[StormRow] = []
    for strategy in config.strategies:
        for n in config.agents:
            store = store_for(strategy, n) if store_for is not None else MemoryStore()
            rows.append(_run(strategy, rooms[n], config, prices, store))
            if on_progress is not None:
                on_progress(strategy, n)
    return rows


def by_strategy(rows: Sequence[StormRow]) -> dict[str, list[StormRow]]:
    """Rows grouped by strategy, each list ordered by N."""
    out: dict[str, list[StormRow]] = {}
    for row in rows:
        out.setdefault(row.strategy, []).append(row)
    return {s: sorted(r, key=lambda x: x.agents) for s, r in out.items()}
