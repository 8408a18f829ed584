"""The process-wide media clock: one 20 ms grid driving every call's playout.

Theory of operation
-------------------
Waking the event loop costs far more than moving a 20 ms frame (docs/architecture.md,
"Where the time goes"), so the process has exactly one timer chain for media:
``MediaClock`` keeps a single ``loop.call_at`` handle and, at each tick, calls every
subscriber's ``on_tick(now)`` synchronously. 200 calls cost one wake-up per 20 ms, not 200.

Tick ``n`` is due at ``t0 + n * period``. Deadlines are computed from the grid, never by
adding ``period`` to the time a callback happened to run, so lateness never accumulates
(no drift): a late wake-up delays that one tick, and the next deadline is still on the grid.

Late wake-ups (policy)
----------------------
If the loop was blocked and wakes ``k`` periods late, ``k`` ticks are overdue. Dropping
them would silently shorten every call's timeline (the far end would hear time vanish and
our ``heard_ms`` would still be right, but the RTP clock would jump); bursting all of them
would overflow the far end's jitter buffer after a long stall (a carrier's buffer is
sized for steady pacing, and a 2x burst overruns it). So the clock delivers the overdue
ticks back to back, up to ``max_catch_up`` extra ticks (default 5 = 100 ms, inside any
phone's jitter buffer), counts them as late, and skips the rest (counted as skipped).
Skipping moves ``n`` forward but keeps ``t0``: the grid stays where it was.

Long slices (policy)
--------------------
A tick's work is two kinds: ``first`` subscribers (outbound playouts: one frame each, the
hand-off the far end's jitter buffer sees) and the rest (inbound legs' frames going
upstream, gap checks), which at a few hundred calls costs several milliseconds per tick.
Running it all in the one timer callback made a late wake-up expensive: k overdue ticks
meant k x (every call's inbound work) in one slice, which made the next tick late too,
and the loop stayed 100+ ms behind (measured: 200 calls, callbacks of 40-180 ms). So the
first subscribers get every due tick at once, and the rest is queued and worked off in
slices of at most ``slice_s`` (default 1.5 ms), each slice a separate loop callback: the
next tick, socket reads and everything else wait for one slice at most, never for the
whole backlog. The order of ticks for each subscriber is kept (FIFO); a backlog longer
than the catch-up bound loses its oldest ticks (counted), as a stalled loop skips ticks.

Phase slots (policy)
--------------------
Handing every call its frame at the same instant makes the tick a burst: at 200 calls
the last call's frame left ~2-5 ms after the first (RTP: a sendto each), and any
variation in that run -- calls starting or stopping audio, a slow one -- moved the later
calls' packets from one tick to the next: jitter, seen by every far end. So the ``first``
subscribers are spread over ``slots`` phases of the period (10: 2 ms apart), at most
``slot_capacity`` (16) per slot before the next slot opens; each keeps its slot for
life, so a call's frames stay exactly one period apart. A slot is a step of the one
timer chain (the pacer counts slot steps; a wake-up only for steps with subscribers), so
a process with a handful of calls still wakes once per period, and one with 200 wakes
ten times for ~20 hand-offs each. The other subscribers run once per period (slot 0).

Preemption (policy)
-------------------
A timer waits for every callback already queued in the loop's pass: socket reads and
sends for hundreds of calls make passes of several milliseconds. Code that does a lot of
work in one callback calls ``poll()`` between units of it; those are the adapters, never
the call logic: the upstream batch per delivery, the legs per inbound frame (RTP
endpoint, WebRTC receive tap), the Realtime connection as bytes arrive and its client per
event handed to the call, a record store before it encodes a save, and the drain per 16
subscribers; when a step is due, its
hand-offs run right there. One clock read when nothing is due. A poll delivers a step only
``POLL_EARLY_S`` before its time, not ``LEAD_S`` like the timer: a hand-off at the grid
time rather than 0.5 ms before it, so a late one later differs from it by less.

Statistics: a histogram of each delivered slot step's |offset| from its grid time
(p50/p99/max), late (catch-up) and skipped period ticks, wake-ups.

The arithmetic lives in the sans-I/O ``Pacer`` (``now`` in, ticks out, next deadline
exposed) in ``pacing.py``, with the statistics and the ``VirtualScheduler`` the tests run
this clock on; ``MediaClock`` here is the thin asyncio part.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Callable

from bridge.call.pacing import (
    PERIOD_S,
    ClockStats,
    Due,
    Histogram,
    Pacer,
    Scheduler,
    TickSubscriber,
    TimerHandle,
    VirtualScheduler,
    percentile,
)

log = logging.getLogger(__name__)

#: The loop's timer wakes up to 1 ms late (epoll timeouts are whole milliseconds, rounded
#: up), so the clock asks to be woken LEAD_S before a deadline and a tick at most
#: LEAD_S + 0.1 ms early counts as due: hand-offs then land within about ±0.5 ms of the
#: grid instead of 0..+1 ms, and never more than 0.6 ms ahead of real time.
LEAD_S = 0.0005
#: How early ``poll()`` delivers a due step (the timer itself wakes ``LEAD_S`` early).
POLL_EARLY_S = 0.00005
#: Longest run of non-first subscriber work in one loop callback (see "Long slices").
SLICE_S = 0.0015
#: Phase slots per period for first subscribers (see "Phase slots").
SLOTS = 10
#: First subscribers a slot takes before the next slot is opened.
SLOT_CAPACITY = 16
#: Subscribers between two clock reads while working off the backlog.
_SLICE_CHECK = 16


class _LoopScheduler:
    """Adapts a running asyncio loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        #: the loop's time source, read directly: asyncio's own loops use
        #: ``time.monotonic()``, which saves two calls per read (every leg reads the clock
        #: at every hand-off); any other loop keeps its own
        self.clock: Callable[[], float] = (
            time.monotonic if type(loop).time is asyncio.BaseEventLoop.time else loop.time)

    def time(self) -> float:
        return self._loop.time()

    def call_at(self, when: float, callback: Callable[[], object]) -> TimerHandle:
        return self._loop.call_at(when, callback)


class _Pending:
    """One tick's non-first subscribers, worked off from ``next`` on."""

    __slots__ = ("tick_time", "subs", "next")

    def __init__(self, tick_time: float, subs: tuple[TickSubscriber, ...]) -> None:
        self.tick_time = tick_time
        self.subs = subs
        self.next = 0


class MediaClock:
    """One per process: a single ``call_at`` chain on a 20 ms grid for all subscribers.

    The chain runs while there is at least one subscriber and stops with the last one
    (an idle process does not wake 50 times a second). ``tick_time`` is the grid time of
    the tick being delivered (what legs stamp frames with); ``now`` the time it was read.
    """

    def __init__(self, period: float = PERIOD_S, *, scheduler: Scheduler | None = None,
                 max_catch_up: int = 5, lead_s: float = LEAD_S,
                 slice_s: float = SLICE_S, slots: int = SLOTS,
                 slot_capacity: int = SLOT_CAPACITY) -> None:
        if slots < 1 or slot_capacity < 1:
            raise ValueError("slots and slot_capacity must be >= 1")
        self.period = period
        self.slots = slots
        self.slot_capacity = slot_capacity
        # first subscriber id -> its slot; per slot, its subscribers and how many
        self._slot_of: dict[int, int] = {}
        self._slot_count = [0] * slots
        self._slot_subs: list[tuple[TickSubscriber, ...]] = [()] * slots
        self._wake_slot: list[bool] = [False] * slots
        self.lead_s = lead_s
        self.slice_s = slice_s
        self.max_catch_up = max_catch_up
        self._scheduler = scheduler
        self._injected = scheduler is not None
        self._subs: dict[int, TickSubscriber] = {}
        self._first: set[int] = set()
        self._rest: tuple[TickSubscriber, ...] = ()
        # Non-first work not done yet, oldest tick first.
        self._backlog: deque[_Pending] = deque()
        self._drain_handle: TimerHandle | None = None
        self._pacer: Pacer | None = None
        self._handle: TimerHandle | None = None
        self._wake_at = math.inf      # when _handle fires
        self._poll_at = math.inf      # from when poll() delivers the next step
        self._time: Callable[[], float] = lambda: 0.0
        self._firing = False
        self._draining = False      # the drain checks the clock itself
        self.tick_time = 0.0
        self.now = 0.0
        self.lateness = Histogram()
        self.wakeups = 0
        #: ticks delivered by ``poll`` or a drain slice instead of the timer
        self.preempted = 0
        self._ticks = self._late = self._skipped = 0
        self._backlog_dropped = 0

    # -- subscribers -------------------------------------------------------------------
    def subscribe(self, sub: TickSubscriber, *, first: bool = False) -> None:
        """Call ``sub.on_tick`` every tick. ``first``: before the others (outbound
        playouts: their hand-off time is what the far end's jitter buffer sees, so they
        must not wait behind inbound work done in the same tick)."""
        # Subscribing again changes how (first or not), without stopping the clock.
        old_slot = self._slot_of.pop(id(sub), None)
        if old_slot is not None:
            self._slot_count[old_slot] -= 1
        self._first.discard(id(sub))
        self._subs[id(sub)] = sub
        if first:
            self._first.add(id(sub))
            counts = self._slot_count
            slot = next((k for k in range(self.slots) if counts[k] < self.slot_capacity),
                        None)
            if slot is None:
                slot = min(range(self.slots), key=counts.__getitem__)
            counts[slot] += 1
            self._slot_of[id(sub)] = slot
        self._rebuild()
        if self._handle is None:
            self._start()
        else:
            self._reschedule()

    def slot_of(self, sub: TickSubscriber) -> int | None:
        """The phase slot of a first subscriber (None for the others)."""
        return self._slot_of.get(id(sub))

    def unsubscribe(self, sub: TickSubscriber) -> None:
        if self._subs.pop(id(sub), None) is None:
            return
        self._first.discard(id(sub))
        slot = self._slot_of.pop(id(sub), None)
        if slot is not None:
            self._slot_count[slot] -= 1
        self._rebuild()
        if not self._subs:
            self._stop()
        else:
            self._reschedule()

    def _rebuild(self) -> None:
        subs = self._subs
        self._rest = tuple(s for k, s in subs.items() if k not in self._first)
        slot_of = self._slot_of
        self._slot_subs = [tuple(s for k, s in subs.items() if slot_of.get(k) == slot)
                           for slot in range(self.slots)]
        self._wake_slot = [bool(self._slot_subs[k]) or (k == 0 and bool(self._rest))
                           for k in range(self.slots)]

    @property
    def subscribers(self) -> int:
        return len(self._subs)

    @property
    def running(self) -> bool:
        return self._handle is not None

    def time(self) -> float:
        """The clock's time source (monotonic seconds)."""
        if self._handle is not None:
            return self._time()         # running: the source bound at start, one call
        return self._sched().time()

    def time_source(self) -> Callable[[], float]:
        """The clock's raw time source, for readers that run per frame: while running the
        function bound at start (``time.monotonic`` itself on asyncio's loops), so a read
        costs no Python frame; otherwise ``time``."""
        return self._time if self._handle is not None else self.time

    def call_later(self, delay: float, callback: Callable[[], object]) -> TimerHandle:
        """A one-shot timer on the clock's time source (virtual in tests): the calls'
        limits and deadlines use it, so every call-ending path runs on a virtual clock."""
        return self._sched().call_at(self.time() + delay, callback)

    # -- the chain ---------------------------------------------------------------------
    def _sched(self) -> Scheduler:
        if self._scheduler is None:
            self._scheduler = _LoopScheduler(asyncio.get_running_loop())
        return self._scheduler

    def _start(self) -> None:
        if not self._injected:
            # Bind to the loop running now (tests and restarts may use a new loop).
            self._scheduler = _LoopScheduler(asyncio.get_running_loop())
        sched = self._sched()
        # Start the grid one period from now: the first tick is a normal, on-time tick.
        # The pacer counts slots: ``slots`` steps per period (see "Phase slots").
        self._pacer = Pacer(sched.time() + self.period, self.period / self.slots,
                            self.max_catch_up * self.slots,
                            early_s=self.lead_s + 1e-4 if self.lead_s else 1e-4)
        self._time = sched.clock if isinstance(sched, _LoopScheduler) else sched.time
        self._schedule_fire()

    def _schedule_fire(self) -> None:
        """Wake for the next slot step that has work: an occupied slot, or slot 0 (the
        period tick) when there are other subscribers."""
        pacer = self._pacer
        assert pacer is not None
        m, slots, wake = pacer.next_n, self.slots, self._wake_slot
        for _ in range(slots):
            if wake[m % slots]:
                break
            m += 1
        due = pacer.due_time(m)
        self._wake_at = wake_at = due - self.lead_s
        # The timer wakes early (epoll rounds its timeout up to whole milliseconds); a
        # poll needs no such margin, so it delivers a step only this close to its time.
        self._poll_at = due - POLL_EARLY_S
        self._handle = self._sched().call_at(wake_at, self._fire)

    def _reschedule(self) -> None:
        """The slots changed: wake for the (possibly earlier) next step with work."""
        if self._handle is None or self._firing or self._pacer is None:
            return          # a tick in progress schedules the next wake-up itself
        self._handle.cancel()
        self._schedule_fire()

    def poll(self) -> bool:
        """Deliver a tick that came due while other work runs, now rather than after it.

        A tick waits for every callback already queued in the loop's pass to finish: at a
        few hundred calls a pass of socket reads and sends lasts milliseconds, which is
        what a far end's jitter buffer would see. Code that does a lot of work in one
        callback (the adapters: the upstream batch, the legs, the Realtime client, the
        record stores) calls ``poll()`` between units of
        work -- one clock read when nothing is due -- and the tick runs there: the
        outbound hand-offs at once, the inbound work queued as usual. Returns True when a
        tick was delivered. Not reentrant: a poll from inside a tick does nothing.
        """
        if (self._firing or self._draining or self._handle is None
                or self._time() < self._poll_at):
            return False
        self._preempt()
        return True

    def _preempt(self) -> None:
        assert self._handle is not None
        self._handle.cancel()
        self.preempted += 1
        self._fire(drain=False)

    def _stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._handle = None
        self._wake_at = self._poll_at = math.inf
        if self._drain_handle is not None:
            self._drain_handle.cancel()
        self._drain_handle = None
        self._backlog.clear()
        self._pacer = None

    def _fire(self, drain: bool = True) -> None:
        pacer = self._pacer
        if pacer is None:
            return
        sched = self._sched()
        now = sched.time()
        self.now = now
        self.wakeups += 1
        due = pacer.advance(now)
        slots, slot_subs, rest = self.slots, self._slot_subs, self._rest
        if due.skipped:
            # Period ticks among the skipped slot steps [first - skipped, first).
            a = due.first - due.skipped
            self._skipped += (due.first - 1) // slots - (a - 1) // slots
        self._firing = True
        try:
            for k in range(due.count):
                m = due.first + k
                slot = m % slots
                tick_time = pacer.due_time(m)
                if slot == 0:
                    self._ticks += 1
                    if now - tick_time >= self.period - 1e-9:
                        self._late += 1         # a catch-up tick
                    if rest:
                        self._backlog.append(_Pending(tick_time, rest))
                subs = slot_subs[slot]
                if not subs:
                    continue
                self.tick_time = tick_time
                self.lateness.add(abs(now - tick_time))
                for sub in subs:
                    self._call(sub, now)
                if self._pacer is not pacer:
                    return      # the last subscriber left during this tick
        finally:
            self._firing = False
        # Overloaded for longer than the catch-up bound: the oldest queued ticks go, like
        # the skipped ones (inbound work falls behind; memory and delay must not grow).
        while len(self._backlog) > self.max_catch_up + 1:
            self._backlog.popleft()
            self._backlog_dropped += 1
        self._schedule_fire()
        if self._drain_handle is None:
            if drain:
                self._drain(now)
            else:   # preempted some other work: the inbound side waits its turn
                self._drain_handle = sched.call_at(now, self._drain_next)

    def _call(self, sub: TickSubscriber, now: float) -> None:
        try:
            sub.on_tick(now)
        except Exception:
            # One broken call must not stop media for every other call.
            log.exception("media clock subscriber %r failed; unsubscribed", sub)
            self.unsubscribe(sub)

    def _drain(self, start: float) -> None:
        """Work off queued non-first ticks for at most ``slice_s``; continue in a new loop
        callback when there is more (the next tick and I/O go in between)."""
        self._draining = True
        try:
            self._drain_slice(start)
        finally:
            self._draining = False

    def _drain_slice(self, start: float) -> None:
        sched = self._sched()
        backlog, subs = self._backlog, self._subs
        # Behind by several ticks: a longer slice (the next tick's hand-offs still go
        # out on time, by preemption below), or the backlog would only grow.
        deadline = start + self.slice_s * len(backlog)
        now = start
        checks = 0
        while backlog:
            entry = backlog[0]
            self.tick_time = entry.tick_time
            group, i = entry.subs, entry.next
            n = len(group)
            while i < n:
                sub = group[i]
                i += 1
                if id(sub) in subs:
                    self._call(sub, now)
                checks += 1
                if checks >= _SLICE_CHECK:
                    checks = 0
                    now = sched.time()
                    if now >= self._poll_at and self._handle is not None:
                        # The next tick is due: its hand-offs go first, this resumes.
                        entry.next = i
                        self._drain_handle = sched.call_at(now, self._drain_next)
                        self._preempt()
                        return
                    if now >= deadline and (i < n or len(backlog) > 1):
                        entry.next = i
                        self._drain_handle = sched.call_at(now, self._drain_next)
                        return
            backlog.popleft()
        self._drain_handle = None

    def _drain_next(self) -> None:
        self._drain_handle = None
        if self._pacer is None:
            return
        self._drain(self._sched().time())

    def stats(self) -> ClockStats:
        ticks, late, skipped = self._ticks, self._late, self._skipped
        h = self.lateness
        return ClockStats(ticks, late, skipped, self.wakeups, h.percentile(50) * 1000,
                          h.percentile(99) * 1000, h.max * 1000, len(self._subs),
                          self._backlog_dropped)

    def reset_stats(self) -> None:
        self.lateness = Histogram()
        self.wakeups = 0
        self.preempted = 0
        self._ticks = self._late = self._skipped = 0
        self._backlog_dropped = 0
        if self._pacer is not None:
            self._pacer.delivered = self._pacer.late = self._pacer.skipped = 0


_shared: MediaClock | None = None


def shared_clock() -> MediaClock:
    """The process's media clock (created on first use)."""
    global _shared
    if _shared is None:
        _shared = MediaClock()
    return _shared


# The sans-I/O names live in ``pacing.py``; they are re-exported for existing importers.
__all__ = [
    "PERIOD_S", "ClockStats", "Due", "Histogram", "MediaClock", "Pacer", "Scheduler",
    "TickSubscriber", "TimerHandle", "VirtualScheduler", "percentile", "shared_clock",
]
