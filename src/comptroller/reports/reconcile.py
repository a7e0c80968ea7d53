"""Reconciliation: computed vs logged cost per model, with the rates the logged costs imply.

A source that logs its own cost per call (ChatDev's ``x_logged_cost_usd``, LiteLLM's
``spend``, Langfuse's ``costDetails``, Helicone's ``costUSD``) priced each call as
``sum(tokens_b * rate_b)`` over the token buckets b (uncached input, cache read, cache
write, output). Over a model's calls that is a linear system in the rates, so
:func:`fit_rates` recovers the *effective* rates by exact least squares (rational
arithmetic, no float). Comparing them with our table, bucket by bucket, tells which
bucket disagrees and by how much, and :func:`diagnose` says which side is more likely
wrong:

* **source**: a fitted rate equals *another* bucket's published rate (within 2 %):
  the source priced that bucket at the wrong rate (ChatDev's gpt-4o-mini run: output
  priced at the input rate). Keep the table.
* **table**: the logged costs fit consistent rates (every call within 2 % of the fit)
  that match no bucket of our table: our table is more likely stale (or the source
  bills another price list); the implied override is printed for review, and a newer
  genai-prices file can be loaded with ``--prices-data``.
* **source** again when the logged costs fit no consistent rates (calls off the fit by
  more than 2 %): they are not a price list applied to tokens.

When every call has the same mix of buckets the rates cannot be told apart; the
report then gives only the overall ratio.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal, localcontext
from fractions import Fraction

from comptroller.domain.pricing import ModelPrice, Rate, TieredRate

__all__ = ["BUCKETS", "BucketFit", "CallTokens", "Diagnosis", "diagnose", "fit_rates", "override_toml"]

BUCKETS = ("input", "cache_read", "cache_write", "output")
"""Token buckets, in the order of :class:`CallTokens`; rates are USD per million tokens."""
_PRICE_FIELD = {"input": "input_mtok", "cache_read": "cache_read_mtok", "cache_write": "cache_write_mtok",
                "output": "output_mtok"}
_MATCH = Fraction(2, 100)
_MTOK = 1_000_000


@dataclass(frozen=True, slots=True)
class CallTokens:
    """One call's disjoint token buckets and the cost its source logged (USD)."""

    input_uncached: int
    cache_read: int
    cache_write: int
    output: int
    logged_usd: Decimal
    ts: datetime

    def bucket(self, name: str) -> int:
        """Tokens in one of :data:`BUCKETS`."""
        return {"input": self.input_uncached, "cache_read": self.cache_read, "cache_write": self.cache_write,
                "output": self.output}[name]


@dataclass
class BucketFit:
    """One bucket: the rate the logged costs imply vs our table's, USD per million tokens."""

    bucket: str
    fitted_mtok: Decimal
    table_mtok: Decimal | None
    diff_pct: float | None
    agrees: bool


@dataclass
class Diagnosis:
    """What the logged costs say about one model.

    Attributes:
        buckets: the per-bucket comparison (empty when the rates cannot be told apart).
        side: ``none`` (agrees), ``source`` (the logged costs are more likely wrong),
            ``table`` (our table is more likely stale) or ``unknown``.
        explanation: one sentence naming the bucket, the amount and the reason.
        fit_error_pct: the largest relative gap between a call's logged cost and the fit.
        override_toml: the price override the logged costs imply, for review (or None).
    """

    buckets: list[BucketFit] = field(default_factory=list)
    side: str = "none"
    explanation: str = ""
    fit_error_pct: float = 0.0
    override_toml: str | None = None


def _solve(matrix: list[list[Fraction]], rhs: list[Fraction]) -> list[Fraction] | None:
    """Gaussian elimination in exact arithmetic; None when the system is singular."""
    n = len(rhs)
    a = [[*row, b] for row, b in zip(matrix, rhs, strict=True)]
    for col in range(n):
        pivot = next((r for r in range(col, n) if a[r][col] != 0), None)
        if pivot is None:
            return None
        a[col], a[pivot] = a[pivot], a[col]
        for r in range(n):
            if r != col and a[r][col] != 0:
                factor = a[r][col] / a[col][col]
                a[r] = [x - factor * y for x, y in zip(a[r], a[col], strict=True)]
    return [a[i][n] / a[i][i] for i in range(n)]


def fit_rates(calls: Sequence[CallTokens]) -> dict[str, Fraction] | None:
    """Least-squares rates (USD per million tokens) per bucket that the logged costs imply.

    Only buckets with tokens are fitted. Returns None when they cannot be told apart
    (fewer calls than buckets, or every call the same mix).
    """
    used = [b for b in BUCKETS if any(c.bucket(b) for c in calls)]
    if not used or len(calls) < len(used):
        return None
    xs = [[Fraction(c.bucket(b), _MTOK) for b in used] for c in calls]
    ys = [Fraction(c.logged_usd) for c in calls]
    normal = [[sum((x[i] * x[j] for x in xs), Fraction(0)) for j in range(len(used))] for i in range(len(used))]
    rhs = [sum((x[i] * y for x, y in zip(xs, ys, strict=True)), Fraction(0)) for i in range(len(used))]
    solution = _solve(normal, rhs)
    return None if solution is None else dict(zip(used, solution, strict=True))


def _base(rate: Rate | None) -> Fraction | None:
    if rate is None:
        return None
    return Fraction(rate.base if isinstance(rate, TieredRate) else rate)


def _close(a: Fraction, b: Fraction | None) -> bool:
    return b is not None and (abs(a - b) <= _MATCH * abs(b) if b else a == 0)


def _decimal(value: Fraction, digits: int = 4) -> Decimal:
    with localcontext() as ctx:
        ctx.prec = digits
        return +(Decimal(value.numerator) / Decimal(value.denominator))


def _fit_error(calls: Sequence[CallTokens], rates: dict[str, Fraction]) -> Fraction:
    worst = Fraction(0)
    for c in calls:
        fitted = sum((Fraction(c.bucket(b), _MTOK) * r for b, r in rates.items()), Fraction(0))
        logged = Fraction(c.logged_usd)
        if logged:
            worst = max(worst, abs(fitted - logged) / logged)
    return worst


def override_toml(model: str, rates: dict[str, Decimal], calls: int) -> str:
    """The ``[prices."MODEL"]`` table a policy would need to price as the logged costs do."""
    lines = [f'[prices."{model}"]   # implied by {calls:,} logged costs: review before use']
    lines += [f'{_PRICE_FIELD[b]} = "{rate.normalize():f}"' for b, rate in rates.items()]
    if "output" not in rates:
        lines.append('output_mtok = "0"')
    return "\n".join(lines)


def diagnose(model: str, calls: Sequence[CallTokens], price_at: Callable[[datetime], ModelPrice],
             diff_pct: float, tolerance_pct: float) -> Diagnosis:
    """Compare the rates the logged costs imply with our table's (see the module docstring).

    Args:
        model: the priced model id.
        calls: its calls that logged a cost.
        price_at: our table's price of the model at a moment.
        diff_pct: computed vs logged total, percent (positive: we compute more).
        tolerance_pct: the total difference under which the model agrees.
    """
    if abs(diff_pct) <= tolerance_pct:
        return Diagnosis(side="none", explanation="agrees")
    rates = fit_rates(calls)
    if rates is None:
        return Diagnosis(side="unknown", explanation=(
            f"computed {diff_pct:+.1f}% vs logged; every call has the same mix of tokens, so the rate "
            "that disagrees cannot be told"))
    price = price_at(max(c.ts for c in calls))
    table = {b: _base(getattr(price, _PRICE_FIELD[b])) for b in BUCKETS}
    if table["cache_read"] is None:
        table["cache_read"] = table["input"]
    buckets = [BucketFit(b, _decimal(r), None if table[b] is None else _decimal(table[b] or Fraction(0)),
                         None if not table[b] else round(float((r - table[b]) * 100 / table[b]), 1),  # type: ignore[operator]
                         _close(r, table[b])) for b, r in rates.items()]
    error = _fit_error(calls, rates)
    implied = override_toml(model, {b.bucket: b.fitted_mtok for b in buckets}, len(calls))
    wrong = [b for b in buckets if not b.agrees]
    for b in wrong:
        other = next((o for o in BUCKETS if o != b.bucket and _close(rates[b.bucket], table[o])), None)
        if other is not None:
            return Diagnosis(buckets, "source", (
                f"the logged {b.bucket} is priced at the {other} rate (${b.fitted_mtok}/M vs our "
                f"${b.table_mtok}/M for {b.bucket}, {b.diff_pct:+.1f}%): the source's cost log is more likely "
                "wrong; keep the table"), round(float(error * 100), 2), implied)
    named = ", ".join(f"{b.bucket} ${b.fitted_mtok}/M vs our ${b.table_mtok}/M ({b.diff_pct:+.1f}%)" for b in wrong)
    if error <= _MATCH:
        return Diagnosis(buckets, "table", (
            f"{named or 'the rates'}: the logged costs fit consistent rates (within {float(error * 100):.1f}%) "
            "that match no rate of our table: our table is more likely stale; review the override below or "
            "load a newer genai-prices file with --prices-data"), round(float(error * 100), 2), implied)
    return Diagnosis(buckets, "source", (
        f"{named or 'the rates'}: the logged costs fit no consistent rates (calls off the fit by up to "
        f"{float(error * 100):.0f}%): the source's costs are more likely wrong"), round(float(error * 100), 2),
        implied)
