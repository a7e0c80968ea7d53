"""[[quotas]] and [[rate_limits]] in a policy file: what loads, and what is refused with a message naming it."""

from __future__ import annotations

from pathlib import Path

import pytest

from comptroller.config import ConfigError, load_policy
from comptroller.domain.budgets import Period
from comptroller.domain.quotas import Quota, QuotaUnit
from comptroller.domain.rate_limits import ANY, LimitLevel, RateLimit, RateUnit
from comptroller.domain.scopes import Level

GOOD = """
namespace = "prod"
[[quotas]]
unit = "tokens"
level = "tenant"
tenant = "acme"
limit = 400000
[[quotas]]
unit = "messages"
level = "agent"
limit = 300
period = "day"
[[rate_limits]]
level = "key"
rpm = 60
tpm = 100000
[[rate_limits]]
level = "agent"
tenant = "acme"
agent = "writer"
rpm = 10
"""


def _load(tmp_path: Path, text: str) -> object:
    path = tmp_path / "policy.toml"
    path.write_text(text, encoding="utf-8")
    return load_policy(path)


def test_quotas_and_rate_limits_load_with_their_scopes(tmp_path: Path) -> None:
    """Scope ids become scope keys (the policy's namespace filling in), a missing own id means every scope."""
    limits = _load(tmp_path, GOOD).limits()  # type: ignore[attr-defined]
    assert limits.quotas == (Quota(QuotaUnit.TOKENS, Level.TENANT, "prod|acme", 400_000, Period.MONTH),
                             Quota(QuotaUnit.MESSAGES, Level.AGENT, "*", 300, Period.DAY))
    assert limits.rate_limits == (RateLimit(RateUnit.RPM, LimitLevel.KEY, ANY, 60),
                                  RateLimit(RateUnit.TPM, LimitLevel.KEY, ANY, 100_000),
                                  RateLimit(RateUnit.RPM, LimitLevel.AGENT, "prod|acme|writer", 10))


@pytest.mark.parametrize(("entry", "words"), [
    ("[[rate_limits]]\nlevel = \"tenant\"\nrpm = 0\n", "rpm"),
    ("[[rate_limits]]\nlevel = \"tenant\"\n", "needs rpm or tpm"),
    ("[[rate_limits]]\nlevel = \"key\"\ntenant = \"acme\"\nrpm = 5\n", "names only key"),
    ("[[rate_limits]]\nlevel = \"agent\"\nagent = \"writer\"\nrpm = 5\n", "tenant"),
    ("[[quotas]]\nunit = \"words\"\nlevel = \"tenant\"\nlimit = 5\n", "unit"),
    ("[[quotas]]\nunit = \"tokens\"\nlevel = \"tenant\"\nlimit = -1\n", "limit"),
    ("[[quotas]]\nunit = \"tokens\"\nlevel = \"tenant\"\nlimit = 5\n[[quotas]]\nunit = \"tokens\"\n"
     "level = \"tenant\"\nlimit = 6\n", "more than one entry"),
    ("[[rate_limits]]\nlevel = \"key\"\nrpm = 5\n[[rate_limits]]\nlevel = \"key\"\nrpm = 6\n", "more than one entry"),
])
def test_a_limit_that_would_fail_open_or_match_nothing_is_refused(tmp_path: Path, entry: str, words: str) -> None:
    """A zero rate, an entry with no limit, a stray or missing scope id, a typo'd unit, a duplicate: an error."""
    with pytest.raises(ConfigError, match=words):
        _load(tmp_path, entry)
