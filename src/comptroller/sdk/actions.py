"""Guarded side effects in-process: ``with comptroller.action(platform=..., kind=..., text=...) as act:``.

::

    with comptroller.action(platform="tumblr", kind="post", text=draft, task="digest-47") as act:
        url = tumblr.create_post(draft)     # runs only if the guard allowed it
        act.published(url)                  # where it landed (what the verifier fetches)

Entering the block checks the action (:meth:`~comptroller.engine.actions.ActionService.check`):
a refusal raises :class:`ActionRefusedError` (with every reason), an action held for approval raises
:class:`ActionHeldError` (check its id again later). Leaving the block records the outcome:
``published`` (then the verifier checks it once; an action still ``unverified`` is re-checked on its
durable schedule by any gateway worker on the same ledger, or ``comptroller action reverify``) or,
when the block raised, ``failed`` (its rate slot returns).
Tenant, agent and task come from the Comptroller's attribution (``with comptroller.attribution(...)``)
unless given. The rules are the ``[actions]`` sections of :func:`use_actions`'s policy, else of the
``COMPTROLLER_CONFIG`` file; with neither, every action is refused (``unknown_platform``).
"""

from __future__ import annotations

import os
import uuid
import weakref
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol

from comptroller.actions_config import ActionPolicy
from comptroller.config import load_policy
from comptroller.domain.actions import Action, ActionRecord, ActionStatus
from comptroller.engine import Engine
from comptroller.engine.actions import ActionService
from comptroller.sdk.context import CallContext

__all__ = ["Act", "ActionHeldError", "ActionRefusedError", "guarded_action", "use_actions"]

JsonScalar = str | int | float | bool | None


class Comptroller(Protocol):
    """What the guard needs of :class:`comptroller.sdk.Comptroller`: its engine and its attribution."""

    engine: Engine

    def context(self, wrapper: CallContext | None = None, call: CallContext | None = None) -> CallContext:
        """The effective attribution."""
        ...

_SERVICES: weakref.WeakKeyDictionary[Comptroller, ActionService] = weakref.WeakKeyDictionary()


class ActionRefusedError(Exception):
    """The action guard refused the action; nothing was done.

    Attributes:
        record: the stored action (``record.reasons``: every rule that refused).
        codes: the reason codes (``rate_limit``, ``near_duplicate``, ...).
        retry_after_s: the longest wait that clears the rate reasons, or None when waiting does not help.
    """

    def __init__(self, record: ActionRecord) -> None:
        super().__init__(" ".join(r.message for r in record.reasons) or str(record.status))
        self.record = record
        self.codes = tuple(r.code for r in record.reasons)
        waits = [r.retry_after_s for r in record.reasons]
        self.retry_after_s = max(w for w in waits if w is not None) if waits and None not in waits else None


class ActionHeldError(ActionRefusedError):
    """The action waits for approval (``pending_approval``); do it once it reads ``approved``."""


class Act:
    """The action inside the block: its stored record, and what the block says happened."""

    def __init__(self, record: ActionRecord) -> None:
        self.record = record
        self.id = record.action.id
        self.url: str | None = None

    def published(self, url: str | None = None) -> None:
        """Say where the side effect landed (the verifier's ``{url}``)."""
        self.url = url


def use_actions(comptroller: Comptroller, policy: ActionPolicy | str | Path) -> ActionService:
    """Give ``comptroller`` the action guard of ``policy`` (an ActionPolicy or a policy file).

    Raises:
        ConfigError: for an invalid policy file.
    """
    rules = policy if isinstance(policy, ActionPolicy) else load_policy(policy).action_policy()
    engine = comptroller.engine
    service = ActionService(engine.store, engine.clock, rules, sinks=engine.sinks)
    _SERVICES[comptroller] = service
    return service


def _service(comptroller: Comptroller) -> ActionService:
    service = _SERVICES.get(comptroller)
    if service is None:
        service = use_actions(comptroller, load_policy(os.environ.get("COMPTROLLER_CONFIG") or None).action_policy())
    return service


@contextmanager
def guarded_action(comptroller: Comptroller, *, platform: str, kind: str, text: str, task: str | None = None,
                   action_id: str | None = None, fields: Mapping[str, JsonScalar] | None = None,
                   tenant: str | None = None, agent: str | None = None, verify: bool = True) -> Iterator[Act]:
    """Check an action, run the block, record its outcome (see the module docstring).

    Raises:
        ActionRefusedError: the guard refused it (the block does not run).
        ActionHeldError: it waits for approval (the block does not run).
        ValueError: no tenant in the attribution nor given.
    """
    context = comptroller.context()
    who = tenant or context.tenant
    if not who:
        raise ValueError("an action needs a tenant: Comptroller(tenant=...), attribution(tenant=...) or tenant=")
    service = _service(comptroller)
    action = Action(id=action_id or uuid.uuid4().hex, tenant=who, agent=agent or context.agent or "default",
                    platform=platform, kind=kind, text=text, task=task or context.task, fields=dict(fields or {}))
    record = service.check(action)
    if record.status is ActionStatus.PENDING_APPROVAL:
        raise ActionHeldError(record)
    if record.status not in (ActionStatus.ALLOWED, ActionStatus.APPROVED):
        raise ActionRefusedError(record)
    act = Act(record)
    try:
        yield act
    except BaseException:
        act.record = service.record_outcome(who, action.id, published=False)
        raise
    act.record = service.record_outcome(who, action.id, published=True, url=act.url)
    if verify:
        act.record = service.check_once(who, action.id)
