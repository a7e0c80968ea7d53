"""The pure domain core: money, usage, pricing, scopes, budgets and admission.

Nothing in this package performs I/O or reads a clock; time is always passed in.
"""
