"""MemoryLeg pacing figures: grid offset versus the inter-frame spacing a receiver sees."""

from __future__ import annotations

from array import array

from bridge.call.clock import MediaClock, VirtualScheduler
from bridge.call.leg import Underrun
from bridge.call.memory import MemoryLeg, PacingFigures
from bridge.call.playout import Playout


def run(wake_delay) -> PacingFigures:
    sched = VirtualScheduler(start=100.0, wake_delay=wake_delay)
    clock = MediaClock(scheduler=sched)
    leg = MemoryLeg(sample_rate=8000, underrun=Underrun.SILENCE, idle_silence=False,
                    keep_audio=False)
    leg.clock = clock
    leg.stats.timeline = array("d")
    clock.subscribe(Playout(leg), first=True)
    sched.advance(2.0 + 1e-6)
    assert len(leg.stats.timeline) == 2 * leg.stats.frames_out >= 2 * 96
    figures = PacingFigures()
    figures.add(leg.stats.timeline)
    return figures


def test_a_constant_offset_is_not_jitter() -> None:
    fig = run(lambda when: 0.004)              # every tick 3.5 ms after the grid
    assert fig.handoff.percentile(50) >= 0.003
    assert fig.spacing.n == fig.handoff.n - 1 >= 95
    assert fig.spacing.max < 1e-6
    assert fig.jitter[0] < 1e-6
    assert abs(fig.drift[0]) < 1e-9             # late by the same 3.5 ms at the end


def test_a_growing_lateness_shows_as_drift() -> None:
    state = {"n": 0}

    def delay(when: float) -> float:             # each tick 10 us later than the last
        state["n"] += 1
        return 0.00001 * state["n"]

    fig = run(delay)
    assert 0.0009 < fig.drift[0] < 0.0011          # ~100 ticks x 10 us


def test_alternating_lateness_is_jitter() -> None:
    state = {"n": 0}

    def delay(when: float) -> float:
        state["n"] += 1
        return 0.0005 + (0.003 if state["n"] % 2 else 0.0)

    fig = run(delay)
    assert 0.0029 <= fig.spacing.percentile(50) <= 0.0031
    # RFC 3550 §6.4.1: J converges on the mean |D| (3 ms here).
    assert 0.0025 < fig.jitter[0] < 0.0031


def test_figures_of_many_legs_are_per_leg() -> None:
    # Two legs, each on a steady grid but offset from each other: no spacing variation
    # (a leg is never compared with another), one jitter figure per leg.
    fig = PacingFigures()
    for offset in (0.001, 0.007):
        fig.add(array("d", [x for n in range(50) for x in (n * 0.02, n * 0.02 + offset)]))
    assert fig.spacing.n == 98 and fig.spacing.max < 1e-9
    assert fig.handoff.n == 100 and 0.0069 < fig.handoff.max < 0.0071
    assert fig.jitter == [0.0, 0.0] or max(fig.jitter) < 1e-9
