"""Per-client token buckets for the softphone's offers and call-token requests (sans-I/O).

``RateLimiter.take(key, now)`` spends one token of ``key``'s bucket and returns 0.0, or,
when the bucket is empty, the seconds until it holds a token again (the ``Retry-After``).
Buckets refill at ``per_minute`` and hold at most ``burst``. The table is bounded: at
``max_clients`` keys the buckets that have refilled completely are forgotten (they hold
nothing a new bucket would not), then the least recently used ones.
"""

from __future__ import annotations

import math

#: Client addresses tracked at once.
MAX_CLIENTS = 10_000


class RateLimiter:
    def __init__(self, per_minute: int, burst: int, *, max_clients: int = MAX_CLIENTS) -> None:
        self.rate = per_minute / 60.0
        self.burst = float(max(1, burst))
        self.max_clients = max_clients
        #: key -> [tokens, time of the last refill]; insertion order = least recent first
        self._buckets: dict[str, list[float]] = {}

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, key: str, now: float) -> float:
        """Spend a token of ``key``: 0.0 when there was one, else seconds to wait."""
        if not self.enabled:
            return 0.0
        bucket = self._buckets.pop(key, None)
        if bucket is None:
            self._make_room(now)
            bucket = [self.burst, now]
        tokens = min(self.burst, bucket[0] + max(0.0, now - bucket[1]) * self.rate)
        self._buckets[key] = bucket            # now the most recently used
        bucket[1] = now
        if tokens >= 1.0:
            bucket[0] = tokens - 1.0
            return 0.0
        bucket[0] = tokens
        return (1.0 - tokens) / self.rate

    def _make_room(self, now: float) -> None:
        if len(self._buckets) < self.max_clients:
            return
        full_after = self.burst / self.rate
        for key in [k for k, (_, last) in self._buckets.items() if now - last >= full_after]:
            del self._buckets[key]
        while len(self._buckets) >= self.max_clients:
            del self._buckets[next(iter(self._buckets))]


def retry_after(seconds: float) -> str:
    """``Retry-After`` in whole seconds (at least 1)."""
    return str(max(1, math.ceil(seconds)))


__all__ = ["MAX_CLIENTS", "RateLimiter", "retry_after"]
