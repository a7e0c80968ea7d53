"""Errors of the defense layers: mistakes are exceptions, outcomes are :class:`~.verdict.Verdict` values.

The tree::

    ValueError
    └── DefenseError                 any misuse of a defense (bad config, unknown scope, bad input)
        ├── DefenseConfigError       an invalid threshold, window, cooldown, pin or pacing rule
        └── UnknownScopeError        a breaker, run, kill switch or pin asked for a scope nobody configured

A refused call is never an exception: it is a ``Verdict`` with a code.
"""

from __future__ import annotations

__all__ = ["DefenseConfigError", "DefenseError", "UnknownScopeError"]


class DefenseError(ValueError):
    """A defense was configured or called wrongly."""


class DefenseConfigError(DefenseError):
    """A defense's configuration is invalid; the message names the field, its value and what to do."""


class UnknownScopeError(DefenseError):
    """A scope, run or agent was named that no configuration or state knows."""
