"""The engine as the cascade runner sees it inside the gateway: every tier attempt metered like a plain call."""

from __future__ import annotations

from comptroller.domain.codes import Code
from comptroller.domain.defenses.chain import Defenses
from comptroller.domain.ledger import ReleaseResult, Reservation, SettleResult
from comptroller.domain.usage import Usage
from comptroller.engine import Admission, CallRequest
from comptroller.gateway.errors import GatewayError
from comptroller.gateway.runtime import Gateway
from comptroller.ports import Clock, LedgerStore, PriceSource

__all__ = ["MeteredEngine"]


class MeteredEngine:
    """The engine as the cascade runner sees it inside the gateway, for one request
    (a :class:`~comptroller.routing.runner.CascadeEngine`, by composition).

    The same ledger, prices, clock and defenses as ``gateway.engine`` (read through to it),
    but :meth:`admit`, :meth:`settle` and :meth:`release` go through the :class:`Gateway`:
    fail-closed admission (``GatewayError`` 400/503), in-flight tracking (a tier attempt cut
    short by shutdown is charged its bounds, never released to zero) and the cost and token metrics. Ledger
    failures raise ``GatewayError`` 503.

    Attributes:
        current: the hold of the attempt admitted last (the runner admits, calls, then settles
            or releases one attempt at a time), for the tier call's own exits.
        cut_off: an attempt the runner released had been charged already: the request was cut
            off (shutdown, client gone) and its attempt charged its bounds (DESIGN.md rule 12),
            so no later tier is admitted.
    """

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.current: Reservation | None = None
        self.cut_off = False

    @property
    def prices(self) -> PriceSource:
        """The gateway engine's price book."""
        return self.gateway.engine.prices

    @property
    def clock(self) -> Clock:
        """The gateway engine's clock."""
        return self.gateway.engine.clock

    @property
    def store(self) -> LedgerStore:
        """The gateway engine's ledger (the runner records its route event there)."""
        return self.gateway.engine.store

    @property
    def defenses(self) -> Defenses:
        """The gateway engine's defenses (the runner reads the model pins)."""
        return self.gateway.engine.defenses

    def admit(self, call: CallRequest) -> Admission:
        """:meth:`Gateway.admit`; an admitted attempt becomes :attr:`current`.

        Raises:
            GatewayError: as :meth:`Gateway.admit`; 503 ``cut_off`` once the request was cut off.
        """
        if self.cut_off:
            raise GatewayError(503, "the request was cut off (shutdown or the client left) and its tier attempt "
                               "charged its bounds; no further tier is tried", type_="api_error", code="cut_off")
        admission = self.gateway.admit(call)
        self.current = admission.reservation
        return admission

    def settle(self, reservation: Reservation, usage: Usage) -> SettleResult:
        """:meth:`Gateway.settle_result`."""
        return self.gateway.settle_result(reservation, usage)

    def release(self, reservation: Reservation) -> ReleaseResult:
        """:meth:`Gateway.release_result`; a hold found charged already marks the request :attr:`cut_off`."""
        result = self.gateway.release_result(reservation)
        if result.code is Code.ALREADY_SETTLED:
            self.cut_off = True
        return result
