"""The media clock's grid arithmetic and pacing, on a virtual clock."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable

import pytest

from bridge.call.clock import Histogram, MediaClock, Pacer, VirtualScheduler, percentile


class Recorder:
    def __init__(self, clock: MediaClock) -> None:
        self.clock = clock
        self.sends: list[tuple[float, float]] = []   # (grid time, time handed over)

    def on_tick(self, now: float) -> None:
        self.sends.append((self.clock.tick_time, now))


def test_pacer_on_time_ticks() -> None:
    p = Pacer(10.0, 0.02)
    assert p.deadline == pytest.approx(10.0)
    due = p.advance(10.0)
    assert (due.first, due.count, due.late, due.skipped) == (0, 1, 0, 0)
    assert p.deadline == pytest.approx(10.02)
    # Woke early: nothing due, deadline unchanged.
    assert p.advance(10.015).count == 0
    assert p.deadline == pytest.approx(10.02)


def test_pacer_late_wakeup_catches_up_bounded() -> None:
    p = Pacer(0.0, 0.02, max_catch_up=5)
    p.advance(0.0)
    # 3 periods late: ticks 1..4 are due; all delivered, 3 counted late.
    due = p.advance(0.085)
    assert (due.first, due.count, due.late, due.skipped) == (1, 4, 3, 0)
    assert due.lateness_s == pytest.approx(0.005)
    # A 1 s stall: 50 ticks overdue, 6 delivered (1 + 5 catch-up), 44 skipped.
    due = p.advance(1.085)
    assert due.count == 6 and due.skipped == 44 and due.late == 5
    assert due.first == 5 + 44
    # The grid did not move: next deadline is still on t0 + n*period.
    assert p.deadline == pytest.approx(1.10)
    assert p.delivered + p.skipped == 55


def test_pacer_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        Pacer(0.0, 0.0)
    with pytest.raises(ValueError):
        Pacer(0.0, 0.02, max_catch_up=-1)


def test_histogram_percentiles() -> None:
    h = Histogram()
    for i in range(100):
        h.add(i * 0.0001)          # 0 .. 9.9 ms
    assert h.percentile(50) == pytest.approx(0.005, abs=1e-4)
    assert h.percentile(99) == pytest.approx(0.0099, abs=1e-4)
    assert percentile(sorted([3.0, 1.0, 2.0]), 50) == 2.0


def _jitter_and_drift(sends: list[tuple[float, float]], t0: float) -> tuple[float, float]:
    lateness = sorted(abs(h - g) for g, h in sends)
    # Drift: where the last frame went versus where the ideal grid puts it.
    n = len(sends) - 1
    drift = sends[-1][1] - (t0 + n * 0.02)
    return percentile(lateness, 99), drift


def test_sixty_seconds_of_pacing_on_a_virtual_loop() -> None:
    rng = random.Random(7)

    def wake_delay(_when: float) -> float:
        # A loaded loop: 0-1.5 ms timer slack, and a 30 ms stall once in 500 wake-ups.
        return 0.030 if rng.random() < 0.002 else rng.uniform(0.0, 0.0015)

    sched = VirtualScheduler(start=500.0, wake_delay=wake_delay)
    clock = MediaClock(scheduler=sched)
    rec = Recorder(clock)
    clock.subscribe(rec)
    t0 = rec.sends[0][0] if rec.sends else 500.02
    sched.run_until(500.0 + 60.0 + 0.001)
    assert len(rec.sends) == 3000                 # exactly one tick per 20 ms: no lost time
    grid = [g for g, _ in rec.sends]
    assert all(abs(b - a - 0.02) < 1e-9 for a, b in zip(grid, grid[1:], strict=False))
    p99, drift = _jitter_and_drift(rec.sends, t0)
    assert p99 <= 0.002
    assert abs(drift) <= 0.002                    # no cumulative drift over 60 s
    st = clock.stats()
    assert st.ticks == 3000 and st.late_ticks >= 1 and st.skipped_ticks == 0
    assert st.lateness_p99_ms <= 2.0


def test_naive_sleep_chain_would_drift() -> None:
    """The same load on a 'sleep 20 ms after each wake-up' loop drifts: the test can fail."""
    rng = random.Random(7)
    t = 500.0
    sends = []
    for n in range(3000):
        t += 0.02 + rng.uniform(0.0, 0.0015)
        sends.append((500.02 + n * 0.02, t))
    _, drift = _jitter_and_drift(sends, 500.02)
    assert drift > 1.0


def test_ticks_are_never_early_by_more_than_the_lead() -> None:
    sched = VirtualScheduler(start=10.0)          # a loop that wakes exactly when asked
    clock = MediaClock(scheduler=sched)
    rec = Recorder(clock)
    clock.subscribe(rec)
    sched.advance(1.0)
    offsets = [h - g for g, h in rec.sends]
    assert len(offsets) == 50
    assert all(-0.0006 <= o <= 0.0 for o in offsets)


def test_first_subscribers_run_before_the_others() -> None:
    sched = VirtualScheduler()
    clock = MediaClock(scheduler=sched)
    order: list[str] = []

    class Named:
        def __init__(self, name: str) -> None:
            self.name = name

        def on_tick(self, now: float) -> None:
            order.append(self.name)

    clock.subscribe(Named("inbound"))
    clock.subscribe(Named("playout"), first=True)
    sched.advance(0.02)
    assert order == ["playout", "inbound"]


def test_clock_stops_with_last_subscriber_and_restarts() -> None:
    sched = VirtualScheduler()
    clock = MediaClock(scheduler=sched)
    a, b = Recorder(clock), Recorder(clock)
    clock.subscribe(a)
    clock.subscribe(b)
    sched.advance(0.1)
    assert len(a.sends) == len(b.sends) == 5
    clock.unsubscribe(b)
    sched.advance(0.1)
    assert len(a.sends) == 10 and len(b.sends) == 5
    clock.unsubscribe(a)
    assert not clock.running
    sched.advance(1.0)
    assert len(a.sends) == 10
    clock.subscribe(a)
    sched.advance(0.04)
    assert len(a.sends) == 12


def test_a_failing_subscriber_does_not_stop_the_others() -> None:
    sched = VirtualScheduler()
    clock = MediaClock(scheduler=sched)

    class Broken:
        def on_tick(self, now: float) -> None:
            raise RuntimeError("boom")

    good = Recorder(clock)
    clock.subscribe(Broken())
    clock.subscribe(good)
    sched.advance(0.1)
    assert len(good.sends) == 5
    assert clock.subscribers == 1


async def test_real_loop_clock_ticks() -> None:
    clock = MediaClock()
    rec = Recorder(clock)
    clock.subscribe(rec)
    await asyncio.sleep(0.2)
    clock.unsubscribe(rec)
    # Real time: only check that it ticks on its grid, not how punctually (load varies).
    assert len(rec.sends) >= 3
    grid = [g for g, _ in rec.sends]
    assert all(abs(b - a - 0.02) < 1e-9 for a, b in zip(grid, grid[1:], strict=False))


class Costly:
    """A non-first subscriber that costs ``cost`` seconds of (virtual) time per tick."""

    def __init__(self, clock: MediaClock, sched: VirtualScheduler, cost: float) -> None:
        self.clock, self.sched, self.cost = clock, sched, cost
        self.ticks: list[float] = []

    def on_tick(self, now: float) -> None:
        self.ticks.append(self.clock.tick_time)
        self.sched._now += self.cost     # the work takes time: the loop runs late after it


def stall_once(at: float, seconds: float) -> Callable[[float], float]:
    """A ``wake_delay`` for VirtualScheduler: the first timer due at or after ``at`` runs
    ``seconds`` late (the loop was blocked), every other one on time."""
    pending = [at]

    def wake_delay(when: float) -> float:
        if pending and when >= pending[0]:
            pending.clear()
            return seconds
        return 0.0

    return wake_delay


def _stall_then_load(slice_s: float) -> tuple[list[tuple[float, float]], list[Costly]]:
    """200 inbound subscribers costing 60 % of each period, and one 70 ms stall."""
    sched = VirtualScheduler(start=500.0, wake_delay=stall_once(500.5, 0.070))
    clock = MediaClock(scheduler=sched, slice_s=slice_s)
    playout = Recorder(clock)
    clock.subscribe(playout, first=True)
    legs = [Costly(clock, sched, 0.012 / 200) for _ in range(200)]
    for leg in legs:
        clock.subscribe(leg)
    sched.run_until(502.0)
    return playout.sends, legs


def test_inbound_work_is_sliced_so_a_stall_does_not_make_every_later_tick_late() -> None:
    sends, legs = _stall_then_load(slice_s=0.004)
    late = [h - g for g, h in sends if h - g > 0.005]
    # Only the stall's own overdue ticks are late; the grid is met again right after.
    assert 1 <= len(late) <= 5
    # Every inbound subscriber got every delivered tick, in grid order.
    for leg in legs:
        assert leg.ticks == sorted(leg.ticks)
        assert len(leg.ticks) >= len(sends) - 2

    # One slice for everything: the catch-up work after the stall would push the
    # following ticks late as well, but the drain hands each tick over as it comes due
    # (preemption) and goes on afterwards, in order.
    sends_1, legs_1 = _stall_then_load(slice_s=10.0)
    assert len([1 for g, h in sends_1 if h - g > 0.005]) <= len(late)
    for leg in legs_1:
        assert leg.ticks == sorted(leg.ticks)
        assert len(leg.ticks) >= len(sends_1) - 2


def _busy_loop(poll: bool) -> tuple[MediaClock, Recorder]:
    """Other work: 8 ms callbacks back to back, each 16 units of 0.5 ms; with ``poll``
    the work calls ``clock.poll()`` between units (as the upstream batch does)."""
    sched = VirtualScheduler(start=50.0)
    clock = MediaClock(scheduler=sched, lead_s=0.0)
    playout = Recorder(clock)
    clock.subscribe(playout, first=True)

    def work() -> None:
        for _ in range(16):
            sched._now += 0.0005
            if poll:
                clock.poll()
        sched.call_at(sched.time(), work)

    sched.call_at(50.003, work)
    sched.run_until(51.0)
    return clock, playout


def test_poll_delivers_a_due_tick_from_inside_other_work() -> None:
    clock, playout = _busy_loop(poll=True)
    offsets = [h - g for g, h in playout.sends]
    assert len(offsets) >= 49
    # Each tick goes out within one unit of work of its deadline, not after the callback.
    assert max(offsets) <= 0.0005 + 1e-9
    assert [g for g, _ in playout.sends] == sorted({g for g, _ in playout.sends})
    assert clock.preempted >= 45
    # The timer that was preempted did not deliver the tick a second time.
    assert clock.stats().ticks == len(playout.sends)


def test_without_poll_the_tick_waits_for_the_callback() -> None:
    _, playout = _busy_loop(poll=False)
    offsets = [h - g for g, h in playout.sends]
    assert max(offsets) > 0.005


def test_poll_does_nothing_when_not_due_and_is_not_reentrant() -> None:
    sched = VirtualScheduler(start=10.0)
    clock = MediaClock(scheduler=sched, lead_s=0.0)
    assert clock.poll() is False                   # not running
    nested: list[bool] = []

    class Polls:
        def on_tick(self, now: float) -> None:
            nested.append(clock.poll())            # from inside a tick: nothing

    clock.subscribe(Polls(), first=True)
    assert clock.poll() is False                   # running, next tick not due
    sched._now = 10.0205                           # due (the timer has not run yet)
    assert clock.poll() is True
    assert nested == [False]
    assert clock.poll() is False                   # delivered; the next is 20 ms away
    sched.run_until(10.039)
    assert len(nested) == 1                        # the cancelled timer did not fire
    sched.run_until(10.041)
    assert len(nested) == 2


def test_backlog_beyond_the_catch_up_bound_drops_the_oldest_ticks() -> None:
    sched = VirtualScheduler(start=10.0)
    clock = MediaClock(scheduler=sched, max_catch_up=2)
    playout = Recorder(clock)
    clock.subscribe(playout, first=True)
    legs = [Costly(clock, sched, 0.030 / 100) for _ in range(100)]   # 150 % load
    for leg in legs:
        clock.subscribe(leg)
    sched.advance(1.0)
    st = clock.stats()
    assert st.backlog_dropped > 0
    assert len(clock._backlog) <= 3
    # The playout still ticks on the grid at every period.
    assert all(abs(h - g) <= 0.0045 for g, h in playout.sends[-10:])


# ---------------------------------------------------------------- phase slots
def _slotted(n_first: int, *, capacity: int = 4, slots: int = 5, rest: int = 0,
             seconds: float = 1.0) -> tuple[MediaClock, list[Recorder], VirtualScheduler]:
    sched = VirtualScheduler(start=200.0)
    clock = MediaClock(scheduler=sched, lead_s=0.0, slots=slots, slot_capacity=capacity)
    recs = [Recorder(clock) for _ in range(n_first)]
    for r in recs:
        clock.subscribe(r, first=True)
    for _ in range(rest):
        clock.subscribe(Recorder(clock))
    sched.advance(seconds)
    return clock, recs, sched


def test_first_subscribers_fill_slots_in_order_up_to_capacity() -> None:
    clock, recs, _ = _slotted(11, capacity=4, slots=5)
    assert [clock.slot_of(r) for r in recs] == [0] * 4 + [1] * 4 + [2] * 3
    # Beyond every slot's capacity: the least loaded slot.
    clock2, recs2, _ = _slotted(12, capacity=2, slots=5)
    assert sorted(clock2.slot_of(r) for r in recs2) == [0, 0, 0, 1, 1, 1, 2, 2, 3, 3, 4, 4]
    assert clock.slot_of(Recorder(clock)) is None


def test_each_slot_is_handed_its_frames_on_its_own_phase_one_period_apart() -> None:
    clock, recs, _ = _slotted(9, capacity=4, slots=5)        # slots 0, 1, 2 (4 ms apart)
    for r in recs:
        slot = clock.slot_of(r)
        assert slot is not None
        grid = [g for g, _ in r.sends]
        assert len(grid) >= 49
        phase = (grid[0] - 200.02) % 0.02
        assert phase == pytest.approx(slot * 0.004, abs=1e-9)
        assert all(b - a == pytest.approx(0.02, abs=1e-9)
                   for a, b in zip(grid, grid[1:], strict=False))
        assert all(h == pytest.approx(g, abs=2e-4) for g, h in r.sends)
    st = clock.stats()
    # Stats count periods, not slot steps; one wake-up per occupied slot per period.
    assert st.ticks == pytest.approx(50, abs=1) and st.late_ticks == 0
    assert clock.wakeups == pytest.approx(3 * st.ticks, abs=3)


def test_a_few_calls_still_wake_the_loop_once_per_period() -> None:
    clock, recs, _ = _slotted(3, capacity=16, slots=10, rest=2)
    assert {clock.slot_of(r) for r in recs} == {0}
    assert clock.wakeups == clock.stats().ticks


def test_a_newly_opened_slot_is_woken_on_time() -> None:
    sched = VirtualScheduler(start=300.0)
    clock = MediaClock(scheduler=sched, lead_s=0.0, slots=10, slot_capacity=1)
    a = Recorder(clock)
    clock.subscribe(a, first=True)
    sched.advance(0.1001)                 # the next wake-up is for slot 0 at +0.12
    b = Recorder(clock)
    clock.subscribe(b, first=True)        # slot 1: due at +0.102, before that wake-up
    sched.advance(0.05)
    assert clock.slot_of(b) == 1
    assert b.sends and all(h - g <= 1e-9 for g, h in b.sends)
    assert b.sends[0][0] == pytest.approx(300.102, abs=1e-9)


def test_a_stall_catches_up_every_slot_in_order() -> None:
    sched = VirtualScheduler(start=300.0, wake_delay=stall_once(300.5, 0.045))
    clock = MediaClock(scheduler=sched, lead_s=0.0, slots=5, slot_capacity=1)
    recs = [Recorder(clock) for _ in range(3)]
    for r in recs:
        clock.subscribe(r, first=True)
    sched.advance(1.0)
    for r in recs:
        grid = [g for g, _ in r.sends]
        # No period lost for any slot, each slot's grid intact and in order.
        assert all(b - a == pytest.approx(0.02, abs=1e-9)
                   for a, b in zip(grid, grid[1:], strict=False))
        assert len(grid) >= 48
    st = clock.stats()
    assert st.late_ticks >= 1 and st.skipped_ticks == 0


def test_skipped_ticks_are_counted_in_periods_with_slots() -> None:
    # A 1 s stall: 50 periods overdue.
    sched = VirtualScheduler(start=400.0, wake_delay=stall_once(400.5, 1.0))
    clock = MediaClock(scheduler=sched, lead_s=0.0, slots=5, slot_capacity=1,
                       max_catch_up=5)
    rec = Recorder(clock)
    clock.subscribe(rec, first=True)
    sched.advance(2.0)
    st = clock.stats()
    # 1 + 5 catch-up ticks delivered back to back, the rest of the 50 skipped -- the
    # same figures as without slots, not 5 x as many slot steps.
    assert 40 <= st.skipped_ticks <= 46
    assert 4 <= st.late_ticks <= 6
    assert st.ticks + st.skipped_ticks == pytest.approx(100, abs=2)


def test_subscribing_again_moves_a_subscriber_without_restarting_the_grid() -> None:
    sched = VirtualScheduler(start=600.0)
    clock = MediaClock(scheduler=sched, lead_s=0.0, slots=5, slot_capacity=1)
    a = Recorder(clock)
    clock.subscribe(a, first=True)
    sched.advance(0.1)
    assert clock._pacer is not None
    t0 = clock._pacer.t0
    # The only subscriber, subscribed again: the clock does not stop, the grid stays.
    clock.subscribe(a)                        # now a non-first subscriber
    assert clock.slot_of(a) is None and clock.subscribers == 1
    assert clock._pacer is not None and clock._pacer.t0 == t0
    clock.subscribe(a, first=True)            # and first again: slot 0, counted once
    assert clock.slot_of(a) == 0 and clock._slot_count == [1, 0, 0, 0, 0]
    assert clock._pacer is not None and clock._pacer.t0 == t0
    b = Recorder(clock)
    clock.subscribe(b, first=True)
    assert clock.slot_of(b) == 1
    sched.advance(0.1)
    for r in (a, b):
        grid = [g for g, _ in r.sends]
        assert len(grid) >= 4
        assert all(y - x == pytest.approx(0.02, abs=1e-9)
                   for x, y in zip(grid, grid[1:], strict=False))
    assert all(g == pytest.approx(t0 + round((g - t0) / 0.02) * 0.02, abs=1e-9)
               for g, _ in a.sends)


def test_poll_delivers_at_the_grid_time_not_the_timer_s_early_wake_up() -> None:
    sched = VirtualScheduler(start=700.0)
    clock = MediaClock(scheduler=sched)            # default lead: the timer wakes 0.5 ms early
    rec = Recorder(clock)
    clock.subscribe(rec, first=True)
    due = 700.02
    sched._now = due - 0.0003                      # the timer would deliver here
    assert clock.poll() is False
    sched._now = due - 0.00004
    assert clock.poll() is True
    assert rec.sends == [(pytest.approx(due), pytest.approx(due - 0.00004))]
