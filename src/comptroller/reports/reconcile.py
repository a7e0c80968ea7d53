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
* **older_price**, checked first: genai-prices keeps dated prices (a price change has a start
  date: o3's cut on 2025-06-10, claude-sonnet-4-6's on 2026-03-13...). When the logged total
  matches, within the tolerance, a price the table published *before* the calls' time, the
  source priced the calls at that older price: "the log used an older price (from DATE)",
  not "the log is wrong", and no override is suggested (:func:`older_prices`).

When every call has the same mix of buckets the rates cannot be told apart; the
report then gives only the overall ratio.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal, localcontext
from fractions import Fraction

from comptroller.domain.pricing import ModelPrice, Rate, TieredRate, cost_usd
from comptroller.domain.usage import Usage

__all__ = ["BUCKETS", "BucketFit", "CallTokens", "DatedPrice", "Diagnosis", "diagnose", "fit_rates", "older_prices",
           "override_toml"]

BUCKETS = ("input", "cache_read", "cache_write", "output")
"""Token buckets, in the order of :class:`CallTokens`; rates are USD per million tokens."""
_PRICE_FIELD = {"input": "input_mtok", "cache_read": "cache_read_mtok", "cache_write": "cache_write_mtok",
                "output": "output_mtok"}
_MATCH = Fraction(2, 100)
_MTOK = 1_000_000
_HISTORY_DAYS = 3 * 366
"""How far before the first call :func:`older_prices` looks for published prices, days."""
_NOON = time(12, tzinfo=UTC)


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

    def usage(self) -> Usage:
        """The call's tokens as a :class:`Usage` (input including the cache buckets)."""
        return Usage(self.input_uncached + self.cache_read + self.cache_write, self.output,
                     cache_read_tokens=self.cache_read, cache_write_tokens=self.cache_write)


@dataclass(frozen=True, slots=True)
class DatedPrice:
    """A price the table published for a while: from ``start`` (None: before the probed span) to ``end`` (exclusive).

    Days are UTC dates; genai-prices' price changes take effect at 00:00 UTC of their start date.
    """

    start: date | None
    end: date
    price: ModelPrice


def older_prices(price_at: Callable[[datetime], ModelPrice], calls: Sequence[CallTokens]) -> list[DatedPrice]:
    """The prices our table published before the last call that differ from its price then, newest first.

    The price function is read once a day at 12:00 UTC (so daily off-peak windows such as
    DeepSeek's do not count as changes), from ``_HISTORY_DAYS`` before the first call to the day of
    the last one; a change of price between two days is a dated price change. Overrides and
    tables without history give no older price.
    """
    first, last = min(c.ts for c in calls).date(), max(c.ts for c in calls).date()
    current = _price_or_none(price_at, last)
    spans: list[DatedPrice] = []
    day = first - timedelta(days=_HISTORY_DAYS)
    start: date | None = None
    price = _price_or_none(price_at, day)
    while day < last:
        day += timedelta(days=1)
        seen = _price_or_none(price_at, day)
        if seen != price:
            if price is not None:
                spans.append(DatedPrice(start, day, price))
            start, price = day, seen
    return [span for span in reversed(spans) if span.price != current]


def _price_or_none(price_at: Callable[[datetime], ModelPrice], day: date) -> ModelPrice | None:
    """The price at 12:00 UTC of ``day``; None when the table has no token price that day."""
    try:
        return price_at(datetime.combine(day, _NOON))
    except LookupError:
        return None


def _older_match(calls: Sequence[CallTokens], price_at: Callable[[datetime], ModelPrice],
                 tolerance_pct: float) -> tuple[DatedPrice, float] | None:
    """The newest older price at which the logged total agrees within the tolerance, and its difference (%)."""
    logged = sum((c.logged_usd for c in calls), Decimal(0))
    if not logged:
        return None
    for span in older_prices(price_at, calls):
        at_span = sum((cost_usd(span.price, c.usage()) for c in calls), Decimal(0))
        diff = float((at_span - logged) * 100 / logged)
        if abs(diff) <= tolerance_pct:
            return span, diff
    return None


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
        side: ``none`` (agrees), ``older_price`` (the logged costs match a price the table
            published before the calls' time), ``source`` (the logged costs are more likely
            wrong), ``table`` (our table is more likely stale) or ``unknown``.
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


def _rate_text(rate: Rate) -> str:
    return f"{rate.base if isinstance(rate, TieredRate) else rate}"


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
    older = _older_match(calls, price_at, tolerance_pct)
    if older is not None:
        span, diff = older
        when = f"from {span.start} until {span.end}" if span.start is not None else f"in force until {span.end}"
        return Diagnosis(side="older_price", explanation=(
            f"the log used an older price ({when}: input ${_rate_text(span.price.input_mtok)}/M, "
            f"output ${_rate_text(span.price.output_mtok)}/M): at that price the logged costs agree within "
            f"{abs(diff):.2f}%, while our table's price at the calls' time gives {diff_pct:+.1f}%; the log is "
            "not wrong, it predates the price change; keep the table"))
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
