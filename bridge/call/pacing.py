"""The media clock's sans-I/O parts: grid arithmetic, statistics, and virtual time.

Theory of operation
-------------------
``Pacer`` is the arithmetic of a drift-free grid (tick ``n`` is due at ``t0 + n * period``)
with no clock reads: ``advance(now)`` says which ticks are due, how many of them are
catch-up ticks and how many are skipped beyond the catch-up bound, and ``deadline`` is
when the next one is due. ``MediaClock`` (``clock.py``, whose docstring gives the policies)
drives it from the event loop.

``Histogram`` (0.1 ms buckets, O(1) per sample) and ``percentile`` summarise offsets from
the grid into ``ClockStats``. ``Scheduler`` is all the clock needs of an event loop, and
``VirtualScheduler`` provides it in virtual time, so tests run the real clock without
waiting or depending on the machine's load.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

__all__ = [
    "PERIOD_S", "ClockStats", "Due", "Histogram", "Pacer", "Scheduler", "TickSubscriber",
    "TimerHandle", "VirtualScheduler", "percentile",
]

PERIOD_S = 0.020


@dataclass(frozen=True)
class Due:
    """What ``Pacer.advance`` found due at ``now``."""

    first: int          # index of the first tick to deliver now
    count: int          # how many ticks to deliver back to back (0: woke early)
    late: int           # of those, how many are ≥ one period overdue (catch-up ticks)
    skipped: int        # overdue ticks beyond the catch-up bound, not delivered
    lateness_s: float   # now - deadline of the *last* delivered tick (≥ -early_s)


class Pacer:
    """Sans-I/O grid arithmetic for a 20 ms media clock.

    ``advance(now)`` says which ticks are due at ``now`` and moves past them;
    ``deadline`` is when the next one is due. No clock reads here.
    """

    def __init__(self, t0: float, period: float = PERIOD_S, max_catch_up: int = 5,
                 early_s: float = 1e-4) -> None:
        if period <= 0:
            raise ValueError("period must be positive")
        if max_catch_up < 0:
            raise ValueError("max_catch_up must be >= 0")
        self.t0 = t0
        self.period = period
        self.max_catch_up = max_catch_up
        self.early_s = early_s       # a tick this close to its deadline counts as due
        self.next_n = 0
        self.delivered = 0
        self.late = 0
        self.skipped = 0

    def due_time(self, n: int) -> float:
        return self.t0 + n * self.period

    @property
    def deadline(self) -> float:
        """When the next tick is due."""
        return self.due_time(self.next_n)

    def advance(self, now: float) -> Due:
        """Ticks due at ``now``; marks them delivered (or skipped)."""
        last_due = math.floor((now - self.t0 + self.early_s) / self.period)
        if last_due < self.next_n:
            return Due(self.next_n, 0, 0, 0, 0.0)
        overdue = last_due - self.next_n + 1
        skipped = max(0, overdue - 1 - self.max_catch_up)
        first = self.next_n + skipped
        count = overdue - skipped
        self.next_n = last_due + 1
        self.delivered += count
        self.late += count - 1
        self.skipped += skipped
        return Due(first, count, count - 1, skipped, now - self.due_time(last_due))


class Histogram:
    """Histogram of |offset| from the grid: 0.1 ms buckets up to 1 s, O(1) per sample."""

    BUCKET_S = 0.0001
    BUCKETS = 10000

    def __init__(self) -> None:
        self.counts = [0] * (self.BUCKETS + 1)
        self.n = 0
        self.max = 0.0

    def add(self, value_s: float) -> None:
        i = int(value_s / self.BUCKET_S + 1e-6) if value_s > 0 else 0
        self.counts[min(i, self.BUCKETS)] += 1
        self.n += 1
        self.max = max(self.max, value_s)

    def percentile(self, p: float) -> float:
        """Upper edge of the bucket holding the ``p``-th percentile (0 < p ≤ 100), seconds."""
        if self.n == 0:
            return 0.0
        rank = math.ceil(self.n * p / 100.0)
        seen = 0
        for i, c in enumerate(self.counts):
            seen += c
            if seen >= rank:
                return self.max if i == self.BUCKETS else min(self.max, (i + 1) * self.BUCKET_S)
        return self.max


def percentile(sorted_values: list[float], p: float) -> float:
    """Nearest-rank percentile of an already sorted list (0 when empty)."""
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(len(sorted_values) * p / 100.0))
    return sorted_values[min(rank, len(sorted_values)) - 1]


@dataclass(frozen=True)
class ClockStats:
    ticks: int            # ticks delivered
    late_ticks: int       # delivered ≥ one period after their deadline (catch-up)
    skipped_ticks: int    # overdue beyond the catch-up bound, not delivered
    wakeups: int
    lateness_p50_ms: float
    lateness_p99_ms: float
    lateness_max_ms: float
    subscribers: int
    backlog_dropped: int = 0   # queued non-first ticks dropped (overload beyond catch-up)


class TickSubscriber(Protocol):
    def on_tick(self, now: float) -> None:
        """One 20 ms tick. Must be cheap and must not block."""


class TimerHandle(Protocol):
    def cancel(self) -> None: ...


class Scheduler(Protocol):
    """What the clock needs from an event loop (``asyncio.AbstractEventLoop`` fits)."""

    def time(self) -> float: ...

    def call_at(self, when: float, callback: Callable[[], object]) -> TimerHandle: ...


class VirtualScheduler:
    """A virtual time source and timer queue for tests: time moves only when told.

    ``wake_delay`` models how late the (virtual) loop runs a due timer: it is called with
    the deadline and returns the extra delay in seconds.
    """

    def __init__(self, start: float = 1000.0,
                 wake_delay: Callable[[float], float] | None = None) -> None:
        self._now = start
        self._queue: list[tuple[float, int, _VirtualHandle]] = []
        self._seq = 0
        self._wake_delay = wake_delay

    def time(self) -> float:
        return self._now

    def call_at(self, when: float, callback: Callable[[], object]) -> TimerHandle:
        delay = self._wake_delay(when) if self._wake_delay else 0.0
        handle = _VirtualHandle(callback)
        self._seq += 1
        heapq.heappush(self._queue, (max(when, self._now) + delay, self._seq, handle))
        return handle

    def run_until(self, t: float) -> None:
        """Run every timer due up to ``t``, advancing virtual time to each one."""
        while self._queue and self._queue[0][0] <= t:
            when, _, handle = heapq.heappop(self._queue)
            self._now = max(self._now, when)
            if not handle.cancelled:
                handle.callback()
        self._now = max(self._now, t)

    def advance(self, seconds: float) -> None:
        self.run_until(self._now + seconds)


class _VirtualHandle:
    __slots__ = ("callback", "cancelled")

    def __init__(self, callback: Callable[[], object]) -> None:
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True
