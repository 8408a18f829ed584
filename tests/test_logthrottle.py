"""Log lines that peers can cause are bounded: a burst, then a count in the next line."""

from __future__ import annotations

import logging

import pytest

from bridge.logthrottle import Throttle


def test_a_burst_then_held_back_then_one_line_with_the_count(
        caplog: pytest.LogCaptureFixture) -> None:
    now = [100.0]
    logger = logging.getLogger("test.throttle")
    throttle = Throttle(logger, window_s=10.0, burst=3, clock=lambda: now[0])
    with caplog.at_level(logging.INFO, "test.throttle"):
        sent = [throttle.log(logging.INFO, "junk", "junk from %s", n) for n in range(50)]
        assert sent == [True] * 3 + [False] * 47
        assert throttle.log(logging.INFO, "other", "another kind") is True   # its own budget
        now[0] += 10.0
        assert throttle.log(logging.INFO, "junk", "junk from %s", "later") is True
    lines = [r.getMessage() for r in caplog.records]
    assert lines[:3] == ["junk from 0", "junk from 1", "junk from 2"]
    assert lines[-1] == "junk from later (47 more like this in the last 10 s)"
    assert len(lines) == 5


def test_the_callers_time_is_used_when_given() -> None:
    throttle = Throttle(logging.getLogger("test.throttle"), window_s=1.0, burst=1,
                        clock=lambda: 0.0)
    assert throttle.log(logging.WARNING, "k", "a", now=5.0)
    assert not throttle.log(logging.WARNING, "k", "b", now=5.5)
    assert throttle.log(logging.WARNING, "k", "c", now=6.0)
