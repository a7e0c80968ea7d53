"""Run recorded calls through admit -> settle in virtual time.

Each record becomes one call attributed to:

* namespace: the policy's ``namespace`` (default ``replay``);
* tenant: the part of ``run_id`` before the first ``/`` (``chatdev``), else ``default``;
* agent: the record's ``agent``; phase: its ``phase`` (each mapped through the policy's
  ``[label_aliases.agent]`` / ``[label_aliases.phase]``, so ``CODING`` can be ``Coding``);
* conversation and task: its ``run_id`` (one multi-agent run is one task, in one room).

The model is the record's label mapped by the policy's aliases; else its
``x_model_resolved``; else the label itself; a record with neither uses the
policy's ``default_model``. The ceiling is the recorded input tokens plus the
requested ``max_tokens`` (lowered to the policy's cap for the agent), else the cap,
else the model's maximum output (:mod:`comptroller.domain.caps`), else
:data:`DEFAULT_OUTPUT_TOKENS_MAX` (4,096 tokens: the default ``max_tokens`` of
Anthropic's SDK examples and the cap the shipped policies use). A replay only prices
and bounds recorded calls, so it never stops for want of a cap: calls bounded by the
default are flagged (:attr:`CallOutcome.default_output_bound`) and the report names them.
A recorded output above that default is a ceiling miss in the report, not an error.

The virtual clock is set to each record's timestamp, the call admitted and, if
admitted, settled with its recorded usage at the same instant. The idempotency
key is ``attempt_id:seq``, so replaying a file twice into one ledger counts nothing twice.

Every runtime defense of the policy applies (kill switch, pinning, deadline, loop,
breaker, pacing, budgets). Each run attempt (the recorded run, or a re-attempt
injected by :mod:`comptroller.replay.inject`) is one scheduled run and one task
attempt: with a ``[runs]`` section it is opened at its first call with that maximum
duration, and each new attempt of a task counts against ``[retries]``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from comptroller.clock import VirtualClock
from comptroller.config import Policy
from comptroller.domain.caps import NoOutputCapError
from comptroller.domain.codes import Code
from comptroller.domain.pricing import cost_mc
from comptroller.domain.scopes import Attribution
from comptroller.domain.usage import Usage
from comptroller.engine import Admission, CallRequest, Engine
from comptroller.replay.trace import TraceRecord

__all__ = ["DEFAULT_OUTPUT_TOKENS_MAX", "CallOutcome", "MissingModelError", "ReplayResult", "attribution_for",
           "model_for", "replay"]

DEFAULT_OUTPUT_TOKENS_MAX = 4096
"""Replay's output bound for a call with no max_tokens, no cap and no known maximum output, tokens."""


class MissingModelError(ValueError):
    """A record has no model label and the policy names no default model."""


@dataclass(frozen=True, slots=True)
class CallOutcome:
    """What happened to one replayed call.

    Attributes:
        record: the recorded call.
        attribution: who it was attributed to.
        model: the priced model id.
        code: ``settled`` / ``already_settled`` when admitted, else the refusal code.
        refused_level: the level that refused, if refused.
        refused_rule, detector: the rule and detector that refused (``budgets``/``budget``,
            ``loop``/``retries_per_day``, ``breaker``/``open``...), if refused.
        ceiling_mc: the amount reserved (or asked for), millicents.
        cost_mc: the call's cost at its time (settled; or prevented when refused), millicents.
        output_tokens_max: the output bound used for the ceiling, tokens.
        default_output_bound: True when that bound is :data:`DEFAULT_OUTPUT_TOKENS_MAX`
            (no max_tokens, no cap, no known maximum output).
        ceiling_over_remaining: refused by a budget whose remaining money would have paid
            the call's recorded cost, but not its ceiling (the reservation, not the spend,
            was too large: lower max_tokens or cap the agent).
    """

    record: TraceRecord
    attribution: Attribution
    model: str
    code: Code
    refused_level: str | None
    ceiling_mc: int
    cost_mc: int
    output_tokens_max: int
    refused_rule: str | None = None
    detector: str | None = None
    default_output_bound: bool = False
    ceiling_over_remaining: bool = False

    @property
    def admitted(self) -> bool:
        """True unless a rule refused the call."""
        return self.refused_level is None


@dataclass(frozen=True, slots=True)
class ReplayResult:
    """Every call's outcome, in replay order, and the number of skipped input lines."""

    outcomes: list[CallOutcome]
    skipped: int = 0


def model_for(record: TraceRecord, policy: Policy) -> str:
    """The model label a record is priced as (see the module docstring).

    Raises:
        MissingModelError: when the record has no label and the policy no default_model.
    """
    if record.model is not None and record.model in policy.aliases:
        return record.model
    if record.model_resolved is not None and record.model_resolved in policy.aliases:
        return record.model_resolved
    if record.model_resolved is not None:
        return record.model_resolved
    if record.model is not None:
        return record.model
    if policy.default_model is not None:
        return policy.default_model
    raise MissingModelError(
        f"{record.path}:{record.line}: the record has no model label; set default_model in the policy "
        "or pass --default-model"
    )


def attribution_for(record: TraceRecord, policy: Policy) -> Attribution:
    """The attribution of a replayed call (see the module docstring)."""
    tenant = record.run_id.split("/", 1)[0] if "/" in record.run_id else "default"
    agents, phases = policy.label_aliases.get("agent", {}), policy.label_aliases.get("phase", {})
    phase = None if record.phase is None else phases.get(record.phase, record.phase)
    return Attribution(namespace=policy.namespace, tenant=tenant, agent=agents.get(record.agent, record.agent),
                       conversation=record.run_id, task=record.run_id, phase=phase, key_id=record.key_id)


def _usage(record: TraceRecord) -> Usage:
    return Usage(input_tokens=record.input_tokens, output_tokens=record.output_tokens,
                 cache_read_tokens=record.cache_read_tokens, cache_write_tokens=record.cache_write_tokens)


def _replay_one(record: TraceRecord, engine: Engine, clock: VirtualClock, policy: Policy,
                opened: set[str], *, unbounded: set[tuple[str, str]]) -> CallOutcome:
    clock.set(record.ts)
    attribution = attribution_for(record, policy)
    model = model_for(record, policy)
    default_bound = record.max_output_tokens is None and (model, attribution.agent) in unbounded
    max_tokens = DEFAULT_OUTPUT_TOKENS_MAX if default_bound else record.max_output_tokens
    run = record.attempt_id
    if policy.runs is not None and run not in opened:
        engine.open_run(run, policy.runs.duration_s_max, attribution=attribution)
        opened.add(run)
    admission: Admission = engine.admit(CallRequest(
        attribution=attribution, model=model, input_tokens_max=record.input_tokens,
        max_tokens=max_tokens, idempotency_key=f"{run}:{record.seq}",
        run_id=run if policy.runs is not None else None, attempt_id=run))  # a run without [runs] is not opened
    usage = _usage(record)
    if admission.reservation is None:
        verdict = admission.verdict
        assert verdict is not None, f"admit refused without a verdict for {record.path}:{record.line}"
        prevented = cost_mc(engine.prices.price(admission.model, record.ts), usage)
        refusal = admission.refusal
        over = refusal is not None and prevented <= refusal.remaining_mc
        return CallOutcome(record, attribution, admission.model, admission.code, str(verdict.level or "-"),
                           admission.ceiling_mc, prevented, admission.output_tokens_max,
                           refused_rule=str(verdict.rule), detector=verdict.detector,
                           default_output_bound=default_bound, ceiling_over_remaining=over)
    settled = engine.settle(admission.reservation, usage)
    assert settled.record is not None, f"settle answered {settled.code} for {record.path}:{record.line}"
    return CallOutcome(record, attribution, admission.model, settled.code, None,
                       settled.record.ceiling_mc, settled.record.cost_mc, admission.output_tokens_max,
                       default_output_bound=default_bound)


def preflight(records: Sequence[TraceRecord], *, engine: Engine, policy: Policy) -> set[tuple[str, str]]:
    """Check that every record can be priced before anything is written; find the unbounded ones.

    Returns:
        The (model, agent) pairs whose calls without max_tokens have no cap and no known
        maximum output: replay bounds them at :data:`DEFAULT_OUTPUT_TOKENS_MAX`.

    Raises:
        MissingModelError, UnknownModelError: for the first record that cannot be priced.
    """
    checked: set[tuple[str, str, int | None]] = set()
    unbounded: set[tuple[str, str]] = set()
    for record in records:
        model = model_for(record, policy)
        agent = attribution_for(record, policy).agent
        key = (model, agent, record.max_output_tokens)
        if key in checked:
            continue
        price = engine.prices.price(model, record.ts)
        try:
            engine.caps.output_tokens_max(agent=agent, requested=record.max_output_tokens, price=price,
                                          input_tokens_max=record.input_tokens)
        except NoOutputCapError:
            unbounded.add((model, agent))
        checked.add(key)
    return unbounded


def replay(records: Sequence[TraceRecord], *, engine: Engine, clock: VirtualClock, policy: Policy,
           on_progress: Callable[[int], None] | None = None) -> ReplayResult:
    """Replay records (already in time order) through the engine.

    Args:
        records: from :func:`read_traces` (sorted by time).
        engine: an engine whose clock is ``clock``.
        clock: the virtual clock to move to each record's timestamp.
        policy: attribution defaults and model mapping.
        on_progress: called with the number of calls done, every 256 calls and at the end.

    Raises:
        MissingModelError, UnknownModelError: when a record cannot be priced; checked for
            every record first (:func:`preflight`), so nothing is written.
    """
    unbounded = preflight(records, engine=engine, policy=policy)
    outcomes: list[CallOutcome] = []
    opened: set[str] = set()
    for i, record in enumerate(records, start=1):
        outcomes.append(_replay_one(record, engine, clock, policy, opened, unbounded=unbounded))
        if on_progress is not None and (i % 256 == 0 or i == len(records)):
            on_progress(i)
    return ReplayResult(outcomes)
