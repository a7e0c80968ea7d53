"""The admin API's request and answer bodies (pydantic models: the OpenAPI document's schemas).

Money is in millicents; times are UTC unless a budget names its ``timezone``.
"""

from __future__ import annotations

import zoneinfo
from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, JsonValue, StrictBool, StrictInt

from comptroller.domain.budgets import Period
from comptroller.domain.scopes import Level
from comptroller.reports.chargeback import ChargebackBy

__all__ = ["ERROR_RESPONSES", "GROUP_EXAMPLE", "AccountOut", "BudgetIn", "BudgetOut", "ErrorBody", "ErrorDetail",
           "GroupOut", "IdleBudgetOut", "KeyIn", "KeyOut", "KillIn", "MemberOut", "ScopeIn", "UsageOut", "UsageRow"]

_TIMEZONES: list[JsonValue] = [*sorted(zoneinfo.available_timezones())]
_ID = Field(default=None, min_length=1, max_length=256)


class ErrorDetail(BaseModel):
    """OpenAI's error object."""

    message: str
    type: str
    param: str | None
    code: str


class ErrorBody(BaseModel):
    """Every error answer: ``{"error": {...}}``."""

    error: ErrorDetail


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {  # the error answers every route may give
    status: {"model": ErrorBody, "description": text}
    for status, text in ((400, "invalid request"), (401, "no or bad API key"),
                         (403, "an admin key is needed, or another tenant was asked for"), (404, "not found"))
}


class AccountOut(BaseModel):
    """One budget account: a budget applied to one scope in one period. Money in millicents."""

    budget_id: str
    level: Level
    scope: str
    period_key: str
    limit_mc: int
    settled_mc: int
    reserved_mc: int
    remaining_mc: int


class IdleBudgetOut(BaseModel):
    """A budget that matched no call in its current period (``last_period_key`` None: never)."""

    budget_id: str
    level: Level
    scope: str
    period_key: str
    last_period_key: str | None
    message: str


class BudgetIn(BaseModel):
    """A budget to create or replace; leave the level's own id out for "every scope of the level"."""

    model_config = ConfigDict(extra="forbid")
    level: Level
    limit_mc: StrictInt = Field(ge=0, le=10**15)
    period: Period = Period.MONTH
    timezone: str = Field(default="UTC", json_schema_extra={"enum": _TIMEZONES})
    tenant: str | None = _ID
    agent: str | None = _ID
    conversation: str | None = _ID
    task: str | None = _ID
    group: str | None = Field(default=None, min_length=1, max_length=256,
                              description="a shared group's conversation id (level conversation, without tenant)")


class BudgetOut(BaseModel):
    """A stored budget."""

    id: str
    level: Level
    scope: str
    limit_mc: int
    period: Period
    timezone: str


class UsageRow(BaseModel):
    """Settled calls of one group: ``key`` is the tenant, agent, API key id (``-``: no key), conversation,
    task or model; agents, keys, conversations and tasks are their tenant's (``tenant``). Tokens per bucket."""

    key: str
    namespace: str
    tenant: str
    calls: int
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int
    cost_mc: int


class UsageOut(BaseModel):
    """Usage of a tenant (or of every tenant, for an admin) grouped by one field over ``[from, to)`` (UTC)."""

    model_config = ConfigDict(populate_by_name=True)
    tenant: str | None
    group_by: ChargebackBy
    since: str = Field(serialization_alias="from", description="inclusive, ISO-8601 UTC; empty: open")
    until: str = Field(serialization_alias="to", description="exclusive, ISO-8601 UTC; empty: open")
    rows: list[UsageRow]
    total_cost_mc: int


class KeyIn(BaseModel):
    """A key to create."""

    model_config = ConfigDict(extra="forbid")
    tenant: str = Field(min_length=1, max_length=256)
    agent: str | None = _ID
    name: str = Field(default="", max_length=256)
    admin: StrictBool = False
    models: list[Annotated[str, Field(min_length=1, max_length=256)]] | None = Field(default=None, min_length=1)


class KeyOut(BaseModel):
    """A stored key (never its secret; ``key`` is set once, in the answer to its creation)."""

    id: str
    tenant: str
    agent: str | None
    name: str
    admin: bool
    models: list[str] | None
    created_at: datetime
    revoked_at: datetime | None
    key: str | None = None


class ScopeIn(BaseModel):
    """A defense's scope: a level and its scope key (as the lists show it)."""

    model_config = ConfigDict(extra="forbid")
    level: Level
    scope: str = Field(min_length=1, max_length=2048)


class KillIn(ScopeIn):
    """A kill switch to trip, and why."""

    reason: str = Field(min_length=1, max_length=1000)


class MemberOut(BaseModel):
    """One member of a group."""

    agent: str
    role: str
    description: str
    decides: bool
    tenant: str


class GroupOut(BaseModel):
    """A registered group: its conversation (whose budget is the group budget), k and members."""

    id: str
    conversation: str
    mode: str = Field(description="strict: only dispatched members may call in the conversation "
                                  "(not_dispatched); advisory: dispatch is advice")
    k: int
    members: list[MemberOut]
    budget_remaining: float | None = Field(description="the group budget's remaining fraction (None: no "
                                                       "conversation budget)")


GROUP_EXAMPLE = {"conversation": "review-17", "k": 2, "members": [
    {"agent": "alice", "role": "writer", "description": "HTTP APIs and databases", "tenant": "acme"},
    {"agent": "judy", "role": "judge", "description": "final decision on what ships", "decides": True,
     "tenant": "acme"}]}
