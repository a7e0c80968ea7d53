"""comptroller: the economic control plane for multi-agent LLM systems.

The public surface for Python users lives in submodules: :mod:`comptroller.engine`
(admit, settle, release), :mod:`comptroller.domain` (money, usage, budgets),
:mod:`comptroller.storage` (ledger stores) and :mod:`comptroller.bootstrap`
(wiring a ready engine from a database URL and a policy).
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
