"""The policy's ``[[quotas]]`` and ``[[rate_limits]]``: limits in tokens, messages and requests per minute.

::

    [[quotas]]                    # a plan in tokens or messages, beside the USD budgets
    unit = "tokens"               # tokens (input + output) | output_tokens | messages (calls)
    level = "tenant"              # namespace | tenant | agent | agent_conversation | conversation | task
    limit = 400000                # tokens or messages per period
    period = "month"              # total | day | week | month (calendar, UTC unless timezone = "...")
    tenant = "acme"               # scope ids as for [[budgets]]; leave the level's own id out for "every"

    [[rate_limits]]               # GCRA: the limit per minute is also the burst
    level = "key"                 # key | tenant | agent
    rpm = 60                      # requests per minute (optional)
    tpm = 100000                  # tokens per minute: the ceiling at admit, corrected at settle (optional)
    key = "key_3f2a"              # the API key id (level key); tenant = / agent = (+ tenant) otherwise;
                                  # leave the own id out for every key, tenant or agent

Wallet floors are set per wallet (``comptroller wallet floor``), not here. Validated when the
policy loads: a limit of 0 requests per minute, a rate limit with neither ``rpm`` nor ``tpm``,
or a scope id that matches no call is an error naming it (DESIGN.md rule 14).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from comptroller.domain.budgets import Period, budget_scope
from comptroller.domain.limits import Limits
from comptroller.domain.quotas import Quota, QuotaUnit
from comptroller.domain.rate_limits import ANY, LimitLevel, RateLimit, RateUnit
from comptroller.domain.scopes import Level, scope_key

__all__ = ["QuotaSpec", "RateLimitSpec", "limits_of"]


class QuotaSpec(BaseModel):
    """One ``[[quotas]]`` entry (:class:`~comptroller.domain.quotas.Quota`)."""

    model_config = ConfigDict(extra="forbid")
    unit: QuotaUnit
    level: Level
    limit: int = Field(ge=0)
    period: Period = Period.MONTH
    timezone: str = "UTC"
    namespace: str | None = None
    tenant: str | None = None
    agent: str | None = None
    conversation: str | None = None
    task: str | None = None

    def quota(self, default_namespace: str) -> Quota:
        """The domain quota. Raises BudgetError (a ValueError) naming the scope id at fault."""
        scope = budget_scope(self.level, namespace=self.namespace, tenant=self.tenant, agent=self.agent,
                             conversation=self.conversation, task=self.task, namespace_default=default_namespace)
        return Quota(unit=self.unit, level=self.level, scope=scope, limit=self.limit, period=self.period,
                     timezone=self.timezone)


class RateLimitSpec(BaseModel):
    """One ``[[rate_limits]]`` entry: an RPM and/or a TPM limit (:class:`~comptroller.domain.rate_limits.RateLimit`)."""

    model_config = ConfigDict(extra="forbid")
    level: LimitLevel
    rpm: int | None = Field(default=None, ge=1)
    tpm: int | None = Field(default=None, ge=1)
    key: str | None = None
    namespace: str | None = None
    tenant: str | None = None
    agent: str | None = None

    def limits(self, default_namespace: str) -> list[RateLimit]:
        """The domain limits. Raises ValueError naming the field at fault."""
        if self.rpm is None and self.tpm is None:
            raise ValueError(f"a {self.level} rate limit needs rpm or tpm (or both)")
        scope = self._scope(default_namespace)
        return [RateLimit(unit, self.level, scope, value)
                for unit, value in ((RateUnit.RPM, self.rpm), (RateUnit.TPM, self.tpm)) if value is not None]

    def _scope(self, default_namespace: str) -> str:
        if self.level is LimitLevel.KEY:
            if self.tenant is not None or self.agent is not None or self.namespace is not None:
                raise ValueError("a key rate limit names only key = \"<key id>\" (or nothing, for every key)")
            return ANY if self.key is None else self.key
        if self.key is not None:
            raise ValueError(f"key applies only to level = \"key\", not {self.level}")
        level = Level.TENANT if self.level is LimitLevel.TENANT else Level.AGENT
        scope = budget_scope(level, namespace=self.namespace, tenant=self.tenant, agent=self.agent,
                             namespace_default=default_namespace)
        return ANY if scope == "*" else scope


def limits_of(quotas: list[QuotaSpec], rate_limits: list[RateLimitSpec], namespace: str) -> Limits:
    """The :class:`~comptroller.domain.limits.Limits` of a policy whose default namespace is ``namespace``.

    Raises:
        ValueError: on a bad entry, or two entries for the same unit and scope (which one would hold is a guess).
    """
    quota_list = [q.quota(namespace) for q in quotas]
    rate_list = [r for spec in rate_limits for r in spec.limits(namespace)]
    for what, keys in (("[[quotas]]", [scope_key(q.unit, q.level, q.scope, q.period) for q in quota_list]),
                       ("[[rate_limits]]", [scope_key(r.unit, r.level, r.scope) for r in rate_list])):
        twice = sorted({k for k in keys if keys.count(k) > 1})
        if twice:
            raise ValueError(f"{what}: more than one entry for {', '.join(twice)}; keep one")
    return Limits(rate_limits=tuple(rate_list), quotas=tuple(quota_list))
