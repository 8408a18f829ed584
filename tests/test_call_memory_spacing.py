"""MemoryLeg pacing figures: grid offset versus the inter-frame spacing a receiver sees."""

from __future__ import annotations

from bridge.call.clock import Histogram, MediaClock, VirtualScheduler
from bridge.call.leg import Underrun
from bridge.call.memory import MemoryLeg
from bridge.call.playout import Playout


def run(wake_delay) -> MemoryLeg:
    sched = VirtualScheduler(start=100.0, wake_delay=wake_delay)
    clock = MediaClock(scheduler=sched)
    leg = MemoryLeg(sample_rate=8000, underrun=Underrun.SILENCE, idle_silence=False,
                    keep_audio=False)
    leg.clock = clock
    leg.stats.handoff, leg.stats.spacing = Histogram(), Histogram()
    clock.subscribe(Playout(leg), first=True)
    sched.advance(2.0 + 1e-6)
    return leg


def test_a_constant_offset_is_not_jitter() -> None:
    leg = run(lambda when: 0.004)              # every tick 3.5 ms after the grid
    assert leg.stats.handoff is not None and leg.stats.spacing is not None
    assert leg.stats.handoff.percentile(50) >= 0.003
    assert leg.stats.spacing.n == leg.stats.frames_out - 1 >= 95
    assert leg.stats.spacing.max < 1e-6
    assert leg.stats.jitter < 1e-6


def test_alternating_lateness_is_jitter() -> None:
    state = {"n": 0}

    def delay(when: float) -> float:
        state["n"] += 1
        return 0.0005 + (0.003 if state["n"] % 2 else 0.0)

    leg = run(delay)
    assert leg.stats.spacing is not None
    assert 0.0029 <= leg.stats.spacing.percentile(50) <= 0.0031
    # RFC 3550 §6.4.1: J converges on the mean |D| (3 ms here).
    assert 0.0025 < leg.stats.jitter < 0.0031
