"""The five layers of cost defense and the fixed order of admission checks (DESIGN.md rules 5 and 6).

Sources: "Multi-Agent Mesh Economics" (the five layers), KinthAI "Your AI Agent
Needs a Wallet" (the spend-rate breaker, :mod:`comptroller.domain.breaker`),
"Running 6 AI Agents in Production" and "What 221 AI Agents in One Chat Taught Us"
(loops, heartbeats, near-duplicates).

* layer 1, :mod:`.deadline`: ``deadline_exceeded``; a store keeps one ``ScheduledRun`` per run.
* layer 2, :mod:`.retries`: ``retry_limit``; one ``RetryState`` per task.
* layer 2, :mod:`.loops` (:mod:`.similarity`): ``loop_detected``; one ``LoopHistory`` per
  conversation (else agent).
* layer 3, :mod:`.killswitch`: ``kill_switch``; one ``KillSwitchState`` per scope.
* layer 4, :mod:`.pinning`: ``model_not_allowed``; configuration only.
* layer 5, :mod:`.pacing`: ``pace_exceeded``; reads the budget accounts.
* the spend-rate breaker, :mod:`comptroller.domain.breaker` (:mod:`.breaker_policy`):
  ``circuit_open``; one ``BreakerState`` per agent and per conversation.

:mod:`.order` fixes the order of checks (kill switch, pinning, deadline, loop,
breaker, pacing, budgets), so a refusal always names the first rule that applies.
Every refusal is a :class:`.verdict.Verdict`; mistakes are
:mod:`.errors` exceptions. Like the rest of the domain, nothing here performs I/O
or reads a clock: time is the ``now`` argument, and stateful checks return a new
state with a ``version`` for the store's compare-and-set.

This package re-exports nothing; import from the modules.
"""
