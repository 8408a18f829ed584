"""The softphone gate's sans-I/O cores with their own time: the per-address token bucket and
the single-use call tokens."""

from __future__ import annotations

import pytest

from bridge.web.calltokens import CallTokens
from bridge.web.ratelimit import RateLimiter, retry_after


def test_a_bucket_gives_its_burst_then_refills_at_its_rate() -> None:
    limiter = RateLimiter(per_minute=6, burst=2)        # one token every 10 s
    assert [limiter.take("a", 0.0) for _ in range(2)] == [0.0, 0.0]
    wait = limiter.take("a", 0.0)
    assert wait == 10.0 and retry_after(wait) == "10"
    assert limiter.take("b", 0.0) == 0.0                # another address has its own bucket
    assert limiter.take("a", 4.0) == pytest.approx(6.0)   # 0.4 of a token back, 0.6 to go
    assert limiter.take("a", 10.0) == 0.0
    assert limiter.take("a", 10.0) > 0
    assert limiter.take("a", 1000.0) == 0.0             # refills to the burst, no more
    assert limiter.take("a", 1000.0) == 0.0
    assert limiter.take("a", 1000.0) > 0
    assert retry_after(0.2) == "1"


def test_no_limit_and_a_bounded_table() -> None:
    off = RateLimiter(per_minute=0, burst=1)
    assert all(off.take("a", 0.0) == 0.0 for _ in range(100)) and len(off) == 0
    limiter = RateLimiter(per_minute=60, burst=1, max_clients=3)
    for i in range(10):
        limiter.take(f"10.0.0.{i}", float(i) / 10)
    assert len(limiter) == 3
    # the most recently used keep their (empty) buckets
    assert limiter.take("10.0.0.9", 0.95) > 0
    # refilled buckets are forgotten first
    limiter.take("late", 100.0)
    assert len(limiter) == 1


def test_a_call_token_works_once_and_only_before_it_expires() -> None:
    tokens = CallTokens(ttl_s=60)
    first = tokens.issue(0.0)
    second = tokens.issue(0.0)
    assert first and second and first != second and len(first) >= 32
    assert tokens.redeem(first, 59.0) is True
    assert tokens.redeem(first, 59.0) is False          # single use
    assert tokens.redeem(second, 60.0) is False         # expired
    assert tokens.redeem(second, 1.0) is False          # and spent by that attempt
    assert tokens.redeem("", 0.0) is False
    assert tokens.redeem("made-up", 0.0) is False


def test_outstanding_tokens_are_bounded_and_expire() -> None:
    tokens = CallTokens(ttl_s=10, max_outstanding=2)
    assert tokens.issue(0.0) and tokens.issue(1.0)
    assert tokens.issue(2.0) is None                    # full
    assert tokens.issue(10.0) is not None               # the first expired: room again
    assert len(tokens) == 2
