"""A hot route's headers (:class:`~comptroller.gateway.hot_path.HeaderMap`) answer as Starlette's do, and a
remembered attribution (:func:`~comptroller.gateway.attribution.attribute`) is the one a fresh build gives."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.datastructures import Headers

from comptroller.bootstrap import build_engine
from comptroller.config import Policy
from comptroller.domain.scopes import Attribution, AttributionError
from comptroller.gateway.attribution import attribute
from comptroller.gateway.errors import GatewayError
from comptroller.gateway.hot_path import HeaderMap
from comptroller.gateway.identity import Caller
from comptroller.groups import GroupService
from comptroller.storage.keys import new_key
from comptroller.storage.memory import MemoryStore

NAMES = ["authorization", "content-length", "x-comptroller-agent", "x-comptroller-task", "x-comptroller-phase",
         "x-comptroller-conversation", "X-Comptroller-Agent", "idempotency-key"]
_latin1 = st.text(st.characters(min_codepoint=32, max_codepoint=255), max_size=6)


@settings(max_examples=200)
@given(raw=st.lists(st.tuples(st.sampled_from(NAMES), _latin1), max_size=8),
       asked=st.lists(st.sampled_from([*NAMES, "X-COMPTROLLER-TASK", "missing"]), max_size=6))
def test_header_map_answers_every_lookup_as_starlettes_headers(raw: list[tuple[str, str]], asked: list[str]) -> None:
    # as a server gives them: names in lower case, bytes in latin-1
    pairs = [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in raw]
    fast, plain = HeaderMap(raw=pairs), Headers(raw=pairs)
    for name in asked:
        assert fast.get(name) == plain.get(name)
        assert (name in fast) == (name in plain)
        if name in plain:
            assert fast[name] == plain[name]
        else:
            with pytest.raises(KeyError):
                fast[name]
    assert dict(fast) == dict(plain) and fast.getlist("x-comptroller-agent") == plain.getlist("x-comptroller-agent")


_ids = st.one_of(st.none(), st.just(""), st.just(" "), st.text(min_size=1, max_size=4), st.just("x" * 300))


@settings(max_examples=150, deadline=None)
@given(agent=_ids, task=_ids, phase=_ids, bound=st.booleans())
def test_a_remembered_attribution_equals_a_fresh_one_and_errors_stay_errors(
        agent: str | None, task: str | None, phase: str | None, bound: bool) -> None:
    engine = build_engine(db_url="", policy=Policy(namespace="ns"), store=MemoryStore())
    groups = GroupService(engine=engine, namespace="ns")
    record, _ = new_key(tenant="acme", agent="bound-agent" if bound else None)
    headers = {k: v for k, v in (("x-comptroller-agent", agent), ("x-comptroller-task", task),
                                 ("x-comptroller-phase", phase)) if v is not None}
    outcomes = []
    for _ in range(2):  # the second call is answered from memory when the first built one
        try:
            outcomes.append(attribute(Caller(record), headers, namespace="ns", groups=groups))
        except GatewayError as exc:
            outcomes.append((exc.status, exc.code))
    assert outcomes[0] == outcomes[1]
    if bound and agent is not None and agent.strip() != "bound-agent":
        assert outcomes[0] == (403, "scope_not_allowed")
        return
    stripped = [None if v is None else v.strip() for v in (agent, task, phase)]
    try:
        expected: Attribution | tuple[int, str] = Attribution(
            namespace="ns", tenant="acme", agent=record.agent or stripped[0] or "default", task=stripped[1],
            phase=stripped[2], key_id=record.id)
    except AttributionError:
        expected = (400, "invalid_header")
    assert outcomes[0] == expected
