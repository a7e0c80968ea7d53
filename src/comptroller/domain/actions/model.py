"""An action an agent wants to take, the guard's reasons, and the life of one action.

Statuses (TigerBeetle-style: each transition resolves once; a repeat answers the stored state)::

    check -> refused                                  (a rule said no; nothing happens)
          -> pending_approval -> approved | rejected | expired
          -> allowed / approved -> unverified -> done (a verifier confirmed it)
                                -> failed             (the agent reported that it did not happen)

``allowed`` and ``approved`` mean "go ahead"; after the side effect the agent records the
outcome and the action is ``unverified`` until a verifier confirms it, then ``done``.
A pending action past ``expires_at`` reads as ``expired`` (no writer is needed for that).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import StrEnum
from typing import Any

__all__ = ["ACTIVE", "Action", "ActionRecord", "ActionStatus", "Reason", "TransitionError"]

JsonScalar = str | int | float | bool | None


class ActionStatus(StrEnum):
    """Where one action is in its life (see the module docstring)."""

    REFUSED = "refused"
    PENDING_APPROVAL = "pending_approval"
    APPROVED = "approved"
    REJECTED = "rejected"
    EXPIRED = "expired"
    ALLOWED = "allowed"
    UNVERIFIED = "unverified"
    DONE = "done"
    FAILED = "failed"


ACTIVE = frozenset({ActionStatus.ALLOWED, ActionStatus.APPROVED})
"""Statuses in which the agent may perform the side effect and then record its outcome."""


class TransitionError(ValueError):
    """A transition the action's status does not allow (approving a rejected action...)."""


@dataclass(frozen=True, slots=True)
class Action:
    """One side effect an agent asks to take.

    Attributes:
        id: the caller's id for it (an idempotency key: checking an id twice answers the stored action).
        tenant: whose action (walls: rule 13).
        agent: which agent.
        platform: where (``writeas``, ``tumblr``, ...), as named in the policy's ``[actions.PLATFORM]``.
        kind: what (``post``, ``reply``, ``message``...), ``[actions.PLATFORM.KIND]``.
        text: the content the quality and near-duplicate rules read.
        task: the task it serves, if any.
        fields: extra JSON scalars (a quality ``score`` field, a ``url`` to verify...).
    """

    id: str
    tenant: str
    agent: str
    platform: str
    kind: str
    text: str
    task: str | None = None
    fields: Mapping[str, JsonScalar] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Reason:
    """Why a rule refused: a machine ``code``, one sentence for people, and what was seen.

    Attributes:
        code: ``rate_limit`` | ``min_gap`` | ``near_duplicate`` | ``too_short`` | ``too_long`` |
            ``prohibited_word`` | ``missing_element`` | ``score_below`` | ``unknown_platform``.
        message: what failed, the limit, what was seen and what to do.
        retry_after_s: seconds until waiting could help (rate rules), else None.
        evidence: JSON scalars (limit, seen, the similar action's id...).
    """

    code: str
    message: str
    retry_after_s: float | None = None
    evidence: Mapping[str, JsonScalar] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The reason as a JSON object."""
        return {"code": self.code, "message": self.message, "retry_after_s": self.retry_after_s,
                "evidence": dict(self.evidence)}


@dataclass(frozen=True, slots=True)
class ActionRecord:
    """The stored state of one action (state row ``("action", "tenant|id")``).

    Attributes:
        action: what was asked.
        status: where it is.
        created_at: when it was checked.
        reasons: why it was refused (empty otherwise).
        expires_at: when a pending approval lapses (None when no approval is needed).
        decided_by: who approved or rejected it.
        outcome_url: where the agent says the side effect landed (what the verifier fetches).
        verify_attempts: verifications tried so far.
        verified_at: when a verifier confirmed it.
        published_at: when the agent recorded that it happened (re-verification's horizon counts from it).
        verify_next_at: when an ``unverified`` action's next check is due (the durable schedule of
            :mod:`.schedule`); None when none is due (not unverified, or past the horizon).
        updated_at: the last transition.
        version: the compare-and-set token of the row.
    """

    action: Action
    status: ActionStatus
    created_at: datetime
    reasons: tuple[Reason, ...] = ()
    expires_at: datetime | None = None
    decided_by: str | None = None
    outcome_url: str | None = None
    verify_attempts: int = 0
    verified_at: datetime | None = None
    updated_at: datetime | None = None
    version: int = 0
    published_at: datetime | None = None
    verify_next_at: datetime | None = None

    def at(self, now: datetime) -> ActionRecord:
        """This record as it reads at ``now``: a pending approval past its expiry is ``expired``."""
        if self.status is ActionStatus.PENDING_APPROVAL and self.expires_at is not None and now >= self.expires_at:
            return replace(self, status=ActionStatus.EXPIRED, updated_at=self.expires_at)
        return self

    def moved(self, status: ActionStatus, now: datetime, **changes: Any) -> ActionRecord:
        """The next version in ``status`` at ``now``."""
        return replace(self, status=status, updated_at=now, version=self.version + 1, **changes)

    def decide(self, approve: bool, now: datetime, *, by: str) -> ActionRecord:
        """Approve or reject a pending action.

        Raises:
            TransitionError: if it is not pending at ``now`` (decided already, expired, never held).
        """
        current = self.at(now)
        if current.status is not ActionStatus.PENDING_APPROVAL:
            raise TransitionError(f"action {self.action.id!r} is {current.status}, not pending_approval; "
                                  "only a pending action can be approved or rejected")
        if not by:
            raise TransitionError("say who decides (by=...)")
        return current.moved(ActionStatus.APPROVED if approve else ActionStatus.REJECTED, now, decided_by=by)

    def to_record(self) -> dict[str, JsonScalar]:
        """The flat JSON record of the state row."""
        a = self.action
        return {"id": a.id, "tenant": a.tenant, "agent": a.agent, "platform": a.platform, "kind": a.kind,
                "text": a.text, "task": a.task, "fields": json.dumps(dict(a.fields), sort_keys=True),
                "status": str(self.status), "created_at": self.created_at.isoformat(),
                "reasons": json.dumps([r.to_json() for r in self.reasons]),
                "expires_at": _iso(self.expires_at), "decided_by": self.decided_by, "outcome_url": self.outcome_url,
                "verify_attempts": self.verify_attempts, "verified_at": _iso(self.verified_at),
                "updated_at": _iso(self.updated_at), "version": self.version,
                "published_at": _iso(self.published_at), "verify_next_at": _iso(self.verify_next_at)}

    @classmethod
    def from_record(cls, r: Mapping[str, JsonScalar]) -> ActionRecord:
        """Parse :meth:`to_record`'s output."""
        action = Action(id=str(r["id"]), tenant=str(r["tenant"]), agent=str(r["agent"]), platform=str(r["platform"]),
                        kind=str(r["kind"]), text=str(r["text"]), task=None if r["task"] is None else str(r["task"]),
                        fields=json.loads(str(r["fields"])))
        reasons = tuple(Reason(x["code"], x["message"], x["retry_after_s"], x["evidence"])
                        for x in json.loads(str(r["reasons"])))
        return cls(action=action, status=ActionStatus(str(r["status"])), created_at=_dt(r["created_at"]),
                   reasons=reasons, expires_at=_opt_dt(r["expires_at"]),
                   decided_by=None if r["decided_by"] is None else str(r["decided_by"]),
                   outcome_url=None if r["outcome_url"] is None else str(r["outcome_url"]),
                   verify_attempts=int(str(r["verify_attempts"])), verified_at=_opt_dt(r["verified_at"]),
                   updated_at=_opt_dt(r["updated_at"]), version=int(str(r["version"])),
                   published_at=_opt_dt(r.get("published_at")), verify_next_at=_next_at(r))

    def to_json(self, now: datetime) -> dict[str, Any]:
        """The action as an API answers it (its status as read at ``now``)."""
        current = self.at(now)
        body: dict[str, Any] = {**current.to_record(), "fields": dict(self.action.fields),
                                "reasons": [r.to_json() for r in current.reasons]}
        return body


def _next_at(r: Mapping[str, JsonScalar]) -> datetime | None:
    if "verify_next_at" in r:
        return _opt_dt(r["verify_next_at"])
    # a row written before the schedule existed: an unverified one is due now, so it is not forgotten
    return _opt_dt(r["updated_at"] or r["created_at"]) if r["status"] == ActionStatus.UNVERIFIED else None


def _iso(at: datetime | None) -> str | None:
    return None if at is None else at.isoformat()


def _dt(value: JsonScalar) -> datetime:
    return datetime.fromisoformat(str(value))


def _opt_dt(value: JsonScalar) -> datetime | None:
    return None if value is None else _dt(value)
