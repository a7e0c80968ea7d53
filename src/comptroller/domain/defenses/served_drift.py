"""Layer 4, after the answer: a response served by a model the agent's pin does not allow.

Source: "Multi-Agent Mesh Economics" (layer 4: no fallback silently drifts to a pricier
model); issue 11, item 4 ("pinning refuses the next call if the served model is not
allowed").

Pinning (:mod:`.pinning`) checks the model a call *asks* for. A provider may still answer
with another model (a silent fallback, an alias moved to a new model). The call is
already made and billed, so it settles at the served model's price
(:meth:`comptroller.engine.Engine.settle`); and, when the served model is outside the
agent's pin, the settle writes a :class:`ServedDrift` state row for the agent in the same
transaction (:func:`record_served`), so every worker sees it. From then on the agent's
calls are refused at admit, rank 2 with pinning (:func:`check_served_drift`: code
``model_not_allowed``, detector ``served_not_pinned``, the served model named), until

* an admin resets the row (:func:`reset_served_drift`, ``comptroller pin reset``), or
* the pin is changed to allow the served model (the check reads the current pin).

Waiting alone never helps (no ``retry_after_s``): the provider that drifted once will
likely drift again, and a pin is a promise the operator made.

Pure: no I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime

from comptroller.domain.codes import Code
from comptroller.domain.defenses import _records as rec
from comptroller.domain.defenses.pinning import PinningPolicy
from comptroller.domain.defenses.verdict import JsonScalar, Rule, Verdict
from comptroller.domain.ledger import Event
from comptroller.domain.scopes import Level

__all__ = ["ServedDrift", "ServedDriftStep", "check_served_drift", "record_served", "reset_served_drift"]


@dataclass(frozen=True, slots=True)
class ServedDrift:
    """One agent's served-model drift: the last response served by a model its pin does not allow.

    Attributes:
        scope: the agent's scope key.
        agent: the agent's name.
        served_model: the model the provider served ("" once reset: no drift).
        admitted_model: the model the call was admitted for.
        reservation: the id of the call that drifted.
        at: when it was settled (aware UTC), None once reset.
        version: the row's version (every change adds one).
    """

    scope: str
    agent: str
    served_model: str = ""
    admitted_model: str = ""
    reservation: str = ""
    at: datetime | None = None
    version: int = 0

    @property
    def drifted(self) -> bool:
        """True while the agent's calls are refused."""
        return bool(self.served_model)

    def to_record(self) -> dict[str, JsonScalar]:
        """A flat JSON record of this state."""
        return {"scope": self.scope, "agent": self.agent, "served_model": self.served_model,
                "admitted_model": self.admitted_model, "reservation": self.reservation, "at": rec.iso(self.at),
                "version": self.version}

    @classmethod
    def from_record(cls, record: Mapping[str, JsonScalar]) -> ServedDrift:
        """Read a record written by :meth:`to_record`. Raises ValueError on a missing or mistyped field."""
        return cls(scope=rec.get_str(record, "scope"), agent=rec.get_str(record, "agent"),
                   served_model=rec.get_str(record, "served_model"),
                   admitted_model=rec.get_str(record, "admitted_model"),
                   reservation=rec.get_str(record, "reservation"), at=rec.get_opt_dt(record, "at"),
                   version=rec.get_int(record, "version"))


@dataclass(frozen=True, slots=True)
class ServedDriftStep:
    """The new state and the ``pinning`` events to append (``served_model_not_allowed`` or ``drift_reset``)."""

    state: ServedDrift
    events: tuple[Event, ...] = ()


def record_served(policy: PinningPolicy, state: ServedDrift, *, admitted_model: str, served_model: str,
                  reservation: str, now: datetime) -> ServedDriftStep:
    """Record a settled call's served model: a drift when the agent's pin does not allow it.

    Args:
        policy: the pins.
        state: the agent's current drift state.
        admitted_model: the model the call was admitted for.
        served_model: the model the provider served (resolved id when priced, else as answered).
        reservation: the call's reservation id.
        now: the settle time (aware UTC).

    Returns:
        The state unchanged when the pin allows ``served_model`` (or the agent is unpinned),
        else the drift and one ``pinning`` event (code ``served_model_not_allowed``).
    """
    if policy.allows(state.agent, served_model):
        return ServedDriftStep(state)
    drifted = replace(state, served_model=served_model, admitted_model=admitted_model, reservation=reservation,
                      at=now, version=state.version + 1)
    event = Event(now, "pinning", "served_model_not_allowed", level=str(Level.AGENT), scope=state.scope,
                  detail={"agent": state.agent, "admitted_model": admitted_model, "served_model": served_model,
                          "reservation": reservation})
    return ServedDriftStep(drifted, (event,))


def check_served_drift(policy: PinningPolicy, state: ServedDrift) -> Verdict | None:
    """Refuse an agent whose last drift is not reset, unless its pin now allows the served model.

    Returns:
        None to go on, else ``model_not_allowed`` (detector ``served_not_pinned``) naming the
        served model, the call that drifted and how to reset.
    """
    if not state.drifted or policy.allows(state.agent, state.served_model):
        return None
    pin = policy.pin_for(state.agent)
    models, tiers = ([], []) if pin is None else (list(pin.models), list(pin.tiers))
    return Verdict(
        code=Code.MODEL_NOT_ALLOWED, rule=Rule.PINNING, detector="served_not_pinned", level=Level.AGENT,
        scope=state.scope,
        evidence={"agent": state.agent, "served_model": state.served_model, "admitted_model": state.admitted_model,
                  "reservation": state.reservation, "at": rec.iso(state.at)},
        message=(
            f"model_not_allowed: a call of agent {state.agent!r} admitted for {state.admitted_model!r} was served "
            f"by {state.served_model!r} (reservation {state.reservation}), which its pin does not allow (models "
            f"{models}, tiers {tiers}); its calls are refused until an admin resets it (`comptroller pin reset "
            f"--scope '{state.scope}'`) or the pin allows {state.served_model!r}."
        ),
    )


def reset_served_drift(state: ServedDrift, now: datetime, *, by: str) -> ServedDriftStep:
    """Clear a drift (an admin acknowledged it); a state without a drift is returned unchanged."""
    if not state.drifted:
        return ServedDriftStep(state)
    cleared = replace(state, served_model="", admitted_model="", reservation="", at=None, version=state.version + 1)
    event = Event(now, "pinning", "drift_reset", level=str(Level.AGENT), scope=state.scope,
                  detail={"agent": state.agent, "served_model": state.served_model, "by": by})
    return ServedDriftStep(cleared, (event,))
