"""The engine: the one admit -> settle / release path every edge uses."""

from comptroller.engine.engine import Admission, CallRequest, Engine

__all__ = ["Admission", "CallRequest", "Engine"]
