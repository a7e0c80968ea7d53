"""Admin operations on the defenses: trip and reset kill switches, list and reset breakers.

Outside the call path, so each is a compare-and-set on the state row
(:meth:`~comptroller.ports.LedgerStore.put_state`): read, apply the pure transition,
write back only if nobody changed the row meanwhile, else read again. Used by the
CLI (``comptroller kill``, ``comptroller breaker``) and the gateway's admin API.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol, TypeVar

from comptroller.domain import breaker
from comptroller.domain.breaker import BreakerState
from comptroller.domain.defenses import killswitch
from comptroller.domain.defenses.chain import BREAKER, KILL, LOOP, PIN_DRIFT, scoped_key
from comptroller.domain.defenses.errors import UnknownScopeError
from comptroller.domain.defenses.killswitch import KillSwitchState
from comptroller.domain.defenses.loops import LoopHistory, LoopStep, reset_loops
from comptroller.domain.defenses.served_drift import ServedDrift, ServedDriftStep, reset_served_drift
from comptroller.domain.defenses.verdict import JsonScalar
from comptroller.domain.ledger import Event
from comptroller.domain.scopes import Level
from comptroller.domain.state import StateKey, StoredState
from comptroller.ports import Clock, LedgerStore

__all__ = ["Admin", "ConcurrentChangeError"]

_ATTEMPTS = 16


class ConcurrentChangeError(RuntimeError):
    """A state row kept changing under an admin operation; nothing was written. Retry it."""


class _State(Protocol):
    @property
    def version(self) -> int: ...

    def to_record(self) -> dict[str, JsonScalar]: ...


_S = TypeVar("_S", bound=_State)


@dataclass(frozen=True, slots=True)
class _Step:
    state: _State
    events: tuple[Event, ...]


class Admin:
    """Admin operations over one ledger.

    Args:
        store: the ledger that keeps the defense state.
        clock: the time source (UTC).
    """

    def __init__(self, store: LedgerStore, clock: Clock) -> None:
        self.store = store
        self.clock = clock

    def kill(self, level: Level, scope: str, *, by: str, reason: str) -> KillSwitchState:
        """Trip the kill switch of ``(level, scope)``: every call under it is refused until reset.

        Raises:
            DefenseConfigError: on an empty ``by`` or ``reason``.
            ConcurrentChangeError: if the row kept changing (nothing written).
        """
        now = self.clock.now()
        return self._update(scoped_key(KILL, level, scope), KillSwitchState.from_record,
                            lambda: KillSwitchState(level, scope),
                            lambda s: _as_step(killswitch.trip(s, now, by=by, reason=reason)))

    def unkill(self, level: Level, scope: str, *, by: str) -> KillSwitchState:
        """Reset the kill switch of ``(level, scope)``.

        Raises:
            UnknownScopeError: if that switch was never tripped (nothing to reset).
            ConcurrentChangeError: if the row kept changing (nothing written).
        """
        now = self.clock.now()
        key = scoped_key(KILL, level, scope)
        if self.store.state(key) is None:
            raise UnknownScopeError(f"no kill switch was ever tripped on {level} {scope!r}; "
                                    f"`comptroller kill list` shows the switches")
        return self._update(key, KillSwitchState.from_record, lambda: KillSwitchState(level, scope),
                            lambda s: _as_step(killswitch.reset(s, now, by=by)))

    def kill_switches(self) -> list[KillSwitchState]:
        """Every kill switch that has a row (tripped now or before), ordered by key."""
        return [KillSwitchState.from_record(s.record) for s in self.store.states(KILL)]

    def breakers(self) -> list[BreakerState]:
        """Every breaker that has a row (it admitted or counted a call), ordered by key."""
        return [BreakerState.from_record(s.record) for s in self.store.states(BREAKER)]

    def reset_breaker(self, level: Level, scope: str, *, by: str) -> BreakerState:
        """Close the breaker of ``(level, scope)`` and reset its cooldown.

        Raises:
            UnknownScopeError: if that breaker does not exist (never saw a call); nothing changed.
            ConcurrentChangeError: if the row kept changing (nothing written).
        """
        now = self.clock.now()
        key = scoped_key(BREAKER, level, scope)
        if self.store.state(key) is None:
            known = ", ".join(s.key.key for s in self.store.states(BREAKER)[:5]) or "none yet"
            raise UnknownScopeError(f"no breaker on {level} {scope!r}; breakers with state: {known} "
                                    "(`comptroller breaker list` shows them all)")
        return self._update(key, BreakerState.from_record, lambda: BreakerState(level, scope),
                            lambda s: _as_step(breaker.reset(s, now, by=by)))

    def loops(self) -> list[LoopHistory]:
        """Every loop history with its lock (conversations and agents that made calls), ordered by key."""
        return [LoopHistory.from_record(s.record) for s in self.store.states(LOOP)]

    def reset_loop(self, level: Level, scope: str, *, by: str) -> LoopHistory:
        """Close the loop lock of ``(level, scope)``, forget its trips and clear its history.

        Raises:
            UnknownScopeError: if that scope has no loop history; nothing changed.
            ConcurrentChangeError: if the row kept changing (nothing written).
        """
        now = self.clock.now()
        key = scoped_key(LOOP, level, scope)
        if self.store.state(key) is None:
            known = ", ".join(s.key.key for s in self.store.states(LOOP)[:5]) or "none yet"
            raise UnknownScopeError(f"no loop history on {level} {scope!r}; scopes with one: {known} "
                                    "(`comptroller loop list` shows them all)")
        return self._update(key, LoopHistory.from_record, lambda: LoopHistory(level, scope),
                            lambda s: _as_step(reset_loops(s, now, by=by)))

    def served_drifts(self) -> list[ServedDrift]:
        """Every agent whose calls were served by a model outside its pin (reset ones too), ordered by key."""
        return [ServedDrift.from_record(s.record) for s in self.store.states(PIN_DRIFT)]

    def reset_served_drift(self, scope: str, *, by: str) -> ServedDrift:
        """Let an agent call again after a response served by a model outside its pin.

        Args:
            scope: the agent's scope key (``namespace|tenant|agent``; the refusal names it).

        Raises:
            UnknownScopeError: if that agent never drifted; nothing changed.
            ConcurrentChangeError: if the row kept changing (nothing written).
        """
        now = self.clock.now()
        key = scoped_key(PIN_DRIFT, Level.AGENT, scope)
        if self.store.state(key) is None:
            known = ", ".join(s.key.key for s in self.store.states(PIN_DRIFT)[:5]) or "none yet"
            raise UnknownScopeError(f"no served-model drift on agent {scope!r}; agents with one: {known}")
        return self._update(key, ServedDrift.from_record, lambda: ServedDrift(scope, ""),
                            lambda s: _as_step(reset_served_drift(s, now, by=by)))

    def _update(self, key: StateKey, parse: Callable[[Mapping[str, JsonScalar]], _S], default: Callable[[], _S],
                apply: Callable[[_S], _Step]) -> _S:
        for _ in range(_ATTEMPTS):
            stored = self.store.state(key)
            current = default() if stored is None else parse(stored.record)
            step = apply(current)
            if step.state.version == current.version:
                return current
            record = StoredState(key, step.state.version, step.state.to_record())
            if self.store.put_state(record, 0 if stored is None else stored.version, step.events):
                return parse(record.record)
        raise ConcurrentChangeError(f"{key.kind} {key.key!r} changed {_ATTEMPTS} times while updating it; retry")


def _as_step(step: killswitch.KillSwitchStep | breaker.BreakerStep | LoopStep | ServedDriftStep) -> _Step:
    return _Step(step.history if isinstance(step, LoopStep) else step.state, step.events)
