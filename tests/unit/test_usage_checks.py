"""Reported usage is checked against the admitted bounds before it is believed (issue 11, item 4)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from comptroller.domain.usage import Usage, from_anthropic
from comptroller.domain.usage_checks import (
    ModelMismatch,
    UsageAnomaly,
    check_served_model,
    check_usage,
)

# (input reported, output reported, input bound, output bound)
CASES = [
    (100, 50, 100, 50),         # exactly at both bounds
    (101, 50, 100, 50),         # input one above
    (100, 51, 100, 50),         # output one above
    (10_000, 10_000_000, 300, 50),  # both far above (the 10M completion tokens for max_tokens=50)
    (0, 0, 0, 0),
]


@pytest.mark.parametrize(("input_tokens", "output_tokens", "input_max", "output_max"), CASES)
def test_each_bucket_above_its_bound_is_one_anomaly(input_tokens: int, output_tokens: int,
                                                    input_max: int, output_max: int) -> None:
    """An anomaly is reported for exactly the buckets whose reported count exceeds the bound, input first."""
    anomalies = check_usage(Usage(input_tokens=input_tokens, output_tokens=output_tokens),
                            input_tokens_max=input_max, output_tokens_max=output_max)
    expected = []
    if input_tokens > input_max:
        expected.append(UsageAnomaly("input_tokens", input_max, input_tokens))
    if output_tokens > output_max:
        expected.append(UsageAnomaly("output_tokens", output_max, output_tokens))
    assert anomalies == tuple(expected)
    for anomaly in anomalies:
        assert anomaly.excess_tokens == anomaly.reported_tokens - anomaly.bound_tokens >= 1
        assert str(anomaly.reported_tokens) in anomaly.describe() and str(anomaly.bound_tokens) in anomaly.describe()


def test_codes_name_the_bucket() -> None:
    """The machine code says which bucket ran over."""
    input_anomaly, output_anomaly = check_usage(Usage(input_tokens=5, output_tokens=5),
                                                input_tokens_max=4, output_tokens_max=4)
    assert (input_anomaly.code, output_anomaly.code) == ("input_above_bound", "output_above_bound")


def test_cache_tokens_count_as_input() -> None:
    """Anthropic cache reads and writes are input: the bound is checked against the total, not the uncached part."""
    usage = from_anthropic(input_tokens=10, output_tokens=1, cache_read_input_tokens=60, cache_creation_input_tokens=40)
    assert check_usage(usage, input_tokens_max=usage.input_tokens, output_tokens_max=1) == ()
    (anomaly,) = check_usage(usage, input_tokens_max=usage.input_tokens - 1, output_tokens_max=1)
    assert anomaly.reported_tokens == 10 + 60 + 40


def test_negative_bound_is_an_error() -> None:
    """A negative bound is a programming error, not a silent pass."""
    with pytest.raises(ValueError, match="bounds"):
        check_usage(Usage(input_tokens=1, output_tokens=1), input_tokens_max=-1, output_tokens_max=1)


@given(st.integers(0, 10**9), st.integers(0, 10**9), st.integers(0, 10**9), st.integers(0, 10**9))
def test_no_anomaly_iff_within_both_bounds(input_tokens: int, output_tokens: int, input_max: int,
                                           output_max: int) -> None:
    """Usage within both bounds has no anomaly, and usage with an anomaly is above a bound."""
    anomalies = check_usage(Usage(input_tokens=input_tokens, output_tokens=output_tokens),
                            input_tokens_max=input_max, output_tokens_max=output_max)
    assert (anomalies == ()) == (input_tokens <= input_max and output_tokens <= output_max)


@pytest.mark.parametrize(("admitted", "served"), [
    ("gpt-4o", "gpt-4o"),
    ("gpt-4o", "gpt-4o-2024-08-06"),
    ("gpt-3.5-turbo-16k", "gpt-3.5-turbo-16k-0613"),
    ("claude-sonnet-4-5", "claude-sonnet-4-5-20250929"),
    ("GPT-4o", "gpt-4o"),
    ("gpt-4o", None),
    ("gpt-4o", ""),
])
def test_a_snapshot_of_the_admitted_model_is_the_same_model(admitted: str, served: str | None) -> None:
    """A dated snapshot of the admitted alias, or no served model at all, is not a mismatch."""
    assert check_served_model(admitted, served) is None


@pytest.mark.parametrize(("admitted", "served"), [
    ("gpt-4o-mini", "gpt-4o"),
    ("gpt-4o", "gpt-4o-mini"),
    ("gpt-4o", "gpt-4o-mini-2024-07-18"),
    ("claude-haiku-4-5", "claude-opus-4-1-20250805"),
    ("gpt-4o", "gpt-4o-2024"),
])
def test_another_model_is_a_mismatch(admitted: str, served: str) -> None:
    """A different model (a pricier sibling, or a suffix that is not a dated snapshot) is reported."""
    assert check_served_model(admitted, served) == ModelMismatch(admitted_model=admitted, served_model=served)
