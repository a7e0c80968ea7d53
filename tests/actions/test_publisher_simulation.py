"""``simulate publisher``: its counts equal an independent count of the same drafts under the platforms' rules."""

from __future__ import annotations

import re
from collections import Counter
from datetime import datetime, timedelta

import pytest
from rapidfuzz import fuzz, utils

from comptroller.simulate.publisher import PUBLISHER_ACTIONS, drafts, simulate_publisher


def _independent(seed: int) -> tuple[Counter[str], Counter[str]]:
    """Posts that go out per platform, and refusals per platform, counted from the drafts directly."""
    accepted: list[tuple[str, datetime, str]] = []  # (platform, at, text), one agent
    published, refused = Counter[str](), Counter[str]()
    for d in drafts(seed=seed):
        rules = PUBLISHER_ACTIONS[d.platform]
        ok = len(d.text) >= rules["length_min"] and len(d.text) <= rules.get("length_max", 10**9)
        ok &= re.search(rules["required"]["call_to_action"], d.text) is not None
        recent = [t for p, _, t in accepted if p == d.platform][-30:] + [t for _, _, t in accepted][-30:]
        ok &= all(fuzz.token_sort_ratio(d.text, t, processor=utils.default_process) / 100 <= 0.85 for t in recent)
        mine = [at for p, at, _ in accepted if p == d.platform]
        ok &= sum(1 for at in mine if at > d.at - timedelta(seconds=rules["window_s"])) < rules["count_max"]
        ok &= not mine or (d.at - mine[-1]).total_seconds() >= rules.get("gap_s", 0)
        if ok:
            accepted.append((d.platform, d.at, d.text))
            published[d.platform] += 1
        else:
            refused[d.platform] += 1
    return published, refused


@pytest.mark.parametrize("seed", [0, 7])
def test_the_simulation_counts_equal_an_independent_count(seed: int) -> None:
    """Posts out with the guard, refusals and the no-guard count all match a count made without the guard's code."""
    result = simulate_publisher(seed=seed)
    published, refused = _independent(seed)
    heartbeats = 7 * 86_400 // 1800
    assert result.without_guard == Counter({"writeas": heartbeats, "tumblr": heartbeats})
    assert result.published == published
    assert Counter(p for _, p, _ in result.refused) == refused
    assert all(codes for _, _, codes in result.refused)  # every refusal says why
    assert result.published["writeas"] <= 14 and result.published["tumblr"] <= 21  # 1 per 12 h; 3 a day
