"""Matching a call to a dialplan: priority, then specificity, the default last."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge.dialplans import DialplanSet, load_dialplans

GOOD = Path(__file__).parent / "data" / "dialplans" / "good"


@pytest.fixture(scope="module")
def plans() -> DialplanSet:
    return load_dialplans(GOOD, env={})


@pytest.mark.parametrize(("called", "caller", "source", "expected"), [
    # An exact called number beats a glob of the same priority.
    ("+15550100", "+33123456789", "sip", "sales-exact"),
    ("+15550199", "+33123456789", "sip", "sales"),
    ("sales", "alice", "sip", "sales"),
    # A higher priority wins even over an exact match.
    ("+15550100", "+4930123456", "sip", "priority"),
    ("+15550100", "+4930123456", "webrtc", "priority"),
    # More rules (called glob + caller regex + source) beat one exact rule.
    ("+15550100", "+442012345678", "sip", "vip"),
    # ... but only when every rule holds (source).
    ("+15550100", "+442012345678", "webrtc", "sales-exact"),
    # The regex must match the whole caller.
    ("+15550199", "+4420123456789", "sip", "sales"),
    # One literal-free rule vs. a glob with literal characters: the glob is more specific.
    ("+15550199", "+33123456789", "webrtc", "sales"),
    ("browser-user", "someone", "webrtc", "browser"),
    # Nothing else matches: the default, whatever its priority number.
    ("9999", "+33123456789", "sip", "default"),
    ("", "", "memory", "default"),
])
def test_match(plans: DialplanSet, called: str, caller: str, source: str,
               expected: str) -> None:
    assert plans.match(called=called, caller=caller, source=source).name == expected


def test_iteration_order_puts_default_last(plans: DialplanSet) -> None:
    names = [plan.name for plan in plans]
    assert names[0] == "priority"
    assert names[-1] == "default"
    assert len(plans) == 6 and "vip" in plans
