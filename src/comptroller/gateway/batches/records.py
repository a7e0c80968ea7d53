"""What the gateway keeps about batches, as ledger state rows (``LedgerStore.put_state``).

Every row is a flat JSON record under ``(kind, key)`` with a compare-and-set version, so
every worker and replica sees one truth and a retried step never doubles:

===============  ====================  ========================================================
kind             key                   record
===============  ====================  ========================================================
``batch_file``   the provider's file   the tenant that may read it; for an input file, its
                 id                    model, endpoint and per-line plan (custom_id, input and
                                       output bounds, tokens)
``batch``        the provider's batch  tenant, API, provider, status (``open`` |
                 id                    ``reconciled``), the reconciliation once done
``batch_lines``  the batch id          custom_id -> the reservation id holding its ceiling
``batch_create`` ``tenant|key``        one create attempt per Idempotency-Key: ``creating``,
                                       ``failed`` (the next attempt reserves afresh) or
                                       ``created`` (a retry answers that batch)
===============  ====================  ========================================================
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from comptroller.domain.state import StateKey, StoredState

__all__ = ["BATCH", "BATCH_CREATE", "BATCH_FILE", "BATCH_LINES", "BatchRecord", "CreateRecord", "FileRecord",
           "LinePlan", "lines_from_state", "lines_state"]

BATCH_FILE, BATCH, BATCH_LINES, BATCH_CREATE = "batch_file", "batch", "batch_lines", "batch_create"


@dataclass(frozen=True, slots=True)
class LinePlan:
    """One line of an input file as bounded at upload: its id, token bounds (output per choice), choices (``n``)."""

    custom_id: str
    input_tokens_max: int
    output_tokens_max: int
    choices: int = 1


@dataclass(frozen=True, slots=True)
class FileRecord:
    """A file the gateway uploaded or saw a batch produce, and who may read it.

    Attributes:
        file_id: the provider's id.
        tenant: the tenant whose batch it belongs to.
        provider: the upstream holding it.
        role: ``input``, ``output`` or ``error``.
        agent: input files: the agent whose output cap bounded the lines.
        model: input files: the model of every line.
        endpoint: input files: the url of every line.
        plan: input files: the lines' bounds.
    """

    file_id: str
    tenant: str
    provider: str
    role: str
    agent: str = ""
    model: str = ""
    endpoint: str = ""
    plan: tuple[LinePlan, ...] = ()

    def state(self, version: int) -> StoredState:
        """The state row at ``version``."""
        record = {"tenant": self.tenant, "provider": self.provider, "role": self.role, "agent": self.agent,
                  "model": self.model, "endpoint": self.endpoint,
                  "plan": json.dumps([[p.custom_id, p.input_tokens_max, p.output_tokens_max, p.choices]
                                      for p in self.plan])}
        return StoredState(StateKey(BATCH_FILE, self.file_id), version, record)

    @classmethod
    def from_state(cls, stored: StoredState) -> FileRecord:
        """Read a row back."""
        r = stored.record
        plan = tuple(LinePlan(str(c), int(i), int(o), int(n)) for c, i, o, n in json.loads(str(r.get("plan") or "[]")))
        return cls(file_id=stored.key.key, tenant=str(r["tenant"]), provider=str(r["provider"]), role=str(r["role"]),
                   agent=str(r.get("agent") or ""), model=str(r.get("model") or ""),
                   endpoint=str(r.get("endpoint") or ""), plan=plan)


@dataclass(frozen=True, slots=True)
class BatchRecord:
    """A batch created through the gateway.

    Attributes:
        batch_id: the provider's id.
        tenant: whose it is (only that tenant's keys can see it).
        api: ``openai`` or ``anthropic``.
        provider: the upstream running it.
        lines: requests reserved.
        ceiling_mc: the money held at create, millicents.
        status: ``open`` until reconciled, then ``reconciled``.
        reconciliation: the report once reconciled (:meth:`BatchService.reconcile`).
        input_file_id: OpenAI: the input file.
    """

    batch_id: str
    tenant: str
    api: str
    provider: str
    lines: int
    ceiling_mc: int
    status: str = "open"
    reconciliation: dict[str, Any] = field(default_factory=dict)
    input_file_id: str = ""

    def state(self, version: int) -> StoredState:
        """The state row at ``version``."""
        record = {**asdict(self), "reconciliation": json.dumps(self.reconciliation)}
        del record["batch_id"]
        return StoredState(StateKey(BATCH, self.batch_id), version, record)

    @classmethod
    def from_state(cls, stored: StoredState) -> BatchRecord:
        """Read a row back."""
        r = stored.record
        return cls(batch_id=stored.key.key, tenant=str(r["tenant"]), api=str(r["api"]), provider=str(r["provider"]),
                   lines=int(str(r["lines"])), ceiling_mc=int(str(r["ceiling_mc"])), status=str(r["status"]),
                   reconciliation=json.loads(str(r.get("reconciliation") or "{}")),
                   input_file_id=str(r.get("input_file_id") or ""))


def lines_state(batch_id: str, reservations: dict[str, str]) -> StoredState:
    """The ``batch_lines`` row: custom_id -> reservation id."""
    return StoredState(StateKey(BATCH_LINES, batch_id), 1, {"reservations": json.dumps(reservations)})


def lines_from_state(stored: StoredState) -> dict[str, str]:
    """custom_id -> reservation id, from a ``batch_lines`` row."""
    value: dict[str, str] = json.loads(str(stored.record["reservations"]))
    return value


@dataclass(frozen=True, slots=True)
class CreateRecord:
    """One create key's create: ``creating`` | ``failed`` | ``created`` (with the batch id).

    ``request`` identifies what was asked (the input file id, or the body's digest): the same
    key with another request is refused, never answered with the first batch.
    """

    status: str
    attempt: int
    batch_id: str = ""
    started_at: str = ""
    request: str = ""

    def state(self, key: str, version: int) -> StoredState:
        """The state row at ``version``."""
        return StoredState(StateKey(BATCH_CREATE, key), version, asdict(self))

    @classmethod
    def from_state(cls, stored: StoredState) -> CreateRecord:
        """Read a row back."""
        r = stored.record
        return cls(status=str(r["status"]), attempt=int(str(r["attempt"])), batch_id=str(r.get("batch_id") or ""),
                   started_at=str(r.get("started_at") or ""), request=str(r.get("request") or ""))
