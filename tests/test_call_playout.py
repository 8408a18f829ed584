"""The outbound playout: pacing, heard_ms accounting, barge-in, hold, drain."""

from __future__ import annotations

import asyncio
import math
import random

from bridge.call.clock import MediaClock, VirtualScheduler, percentile
from bridge.call.leg import Underrun
from bridge.call.memory import MemoryLeg
from bridge.call.playout import Playout
from bridge.codecs import g711
from tests.support.audio import tone


def setup(rate: int = 8000, wake_delay=None, underrun=Underrun.SILENCE):
    sched = VirtualScheduler(start=100.0, wake_delay=wake_delay)
    clock = MediaClock(scheduler=sched)
    leg = MemoryLeg(sample_rate=rate, underrun=underrun, idle_silence=False)
    leg.clock = clock
    firsts: list[tuple[str, float]] = []
    p = Playout(leg, on_first_frame=lambda item, now: firsts.append((item, now)))
    clock.subscribe(p)
    return sched, clock, leg, p, firsts


def agent_frames(leg: MemoryLeg) -> list:
    return [f for f in leg.frames if not f.silent]


def test_one_frame_per_tick_and_heard_ms() -> None:
    sched, _clock, leg, p, firsts = setup()
    p.push("item_a", tone(1000, amp=8000))     # arrives all at once, faster than real time
    sched.advance(0.2 + 1e-6)                  # 10 ticks
    out = agent_frames(leg)
    assert len(out) == 10                      # never bursts ahead of real time
    assert all(len(f.pcm) == 320 for f in out)
    assert p.heard_ms("item_a") == 200
    assert p.received_ms("item_a") == 1000
    assert firsts and firsts[0][0] == "item_a"
    ticks = [f.tick_time for f in out]
    assert all(abs(b - a - 0.02) < 1e-9 for a, b in zip(ticks, ticks[1:], strict=False))


def test_barge_in_stops_audio_at_the_next_tick() -> None:
    sched, _clock, leg, p, _ = setup()
    p.push("item_a", tone(2000, amp=8000))
    sched.advance(0.5 + 1e-6)
    before = len(agent_frames(leg))
    item, heard, received, dropped = p.barge_in(seen_at=sched.time())
    assert (item, heard, received) == ("item_a", 500, 2000)
    assert dropped >= 1400
    sched.advance(0.2)
    assert len(agent_frames(leg)) == before   # nothing more of the agent
    assert leg.frames[-1].silent
    assert p.stop_latencies and p.stop_latencies[0] <= 0.020 + 1e-9
    assert not p.playing


def test_heard_is_attributed_per_item_across_a_shared_frame() -> None:
    sched, _clock, _leg, p, _ = setup()
    p.push("a", tone(30, amp=8000))            # 1.5 frames
    p.push("b", tone(100, amp=8000))
    sched.advance(0.04 + 1e-6)                  # two frames: a=30 ms, b=10 ms
    assert p.heard_ms("a") == 30
    assert p.heard_ms("b") == 10
    assert p.current_item() == "b"
    assert p.barge_in()[:2] == ("b", 10)


def test_end_of_response_flushes_the_resampler_tail() -> None:
    sched, _clock, leg, p, _ = setup()
    p.push("a", tone(110, amp=8000))           # 5.5 frames
    p.end_of_response()
    sched.advance(0.2)
    out = agent_frames(leg)
    assert len(out) == 6                        # last frame padded with silence
    # Everything received was handed over: heard == received, to the sample.
    assert p.heard_ms("a") == 110 == p.received_ms("a")


def test_underrun_writes_silence_or_nothing() -> None:
    sched, _clock, leg, _p, _ = setup(underrun=Underrun.SILENCE)
    sched.advance(0.1 + 1e-6)
    assert len(leg.frames) == 5 and all(f.silent for f in leg.frames)
    sched, _clock, leg, _p, _ = setup(underrun=Underrun.NOTHING)
    sched.advance(0.1 + 1e-6)
    assert leg.frames == []


def test_hold_keeps_the_audio_and_heard_ms_true() -> None:
    sched, _clock, leg, p, _ = setup()
    p.push("a", tone(400, amp=8000))
    sched.advance(0.1 + 1e-6)
    leg.set_hold(True)
    sched.advance(0.2)
    assert p.heard_ms("a") == 100              # nothing sent on hold, nothing heard
    n = len(leg.frames)
    leg.set_hold(False)
    sched.advance(0.1)
    assert len(leg.frames) == n + 5
    assert p.heard_ms("a") == 200


def test_g711_audio_is_decoded_without_resampling() -> None:
    sched = VirtualScheduler()
    clock = MediaClock(scheduler=sched)
    leg = MemoryLeg(sample_rate=8000, idle_silence=False)
    leg.clock = clock
    p = Playout(leg, audio_format="pcmu")
    clock.subscribe(p)
    pcm8 = tone(100, freq=800 / math.pi, rate=8000, amp=6000)   # sample i: 6000 sin(i/5)
    p.push("a", g711.encode("pcmu", pcm8))     # 100 ms of µ-law
    p.end_of_response()
    sched.advance(0.2)
    assert p.received_ms("a") == 100 and p.heard_ms("a") == 100
    assert b"".join(f.pcm for f in agent_frames(leg)) == g711.decode(
        "pcmu", g711.encode("pcmu", pcm8))


def test_wide_band_leg_rate() -> None:
    sched, _clock, leg, p, _ = setup(rate=48000)
    p.push("a", tone(200, amp=8000))
    p.end_of_response()
    sched.advance(0.3)
    out = agent_frames(leg)
    assert all(len(f.pcm) == 1920 for f in out)
    assert p.heard_ms("a") == 200


async def test_wait_drained() -> None:
    sched, _clock, _leg, p, _ = setup()
    p.push("a", tone(100, amp=8000))
    p.end_of_response()
    waiter = p.drained()
    assert waiter is not None
    await asyncio.sleep(0)
    sched.advance(0.06)
    await asyncio.sleep(0)
    assert not waiter.done()
    sched.advance(0.06)
    await asyncio.sleep(0)
    assert waiter.done()
    assert p.drained() is None                 # nothing queued: no wait at all


def test_sixty_seconds_of_agent_audio_paced_without_drift() -> None:
    """60 s of agent audio arriving in bursts, a jittery loop: p99 jitter ≤ 2 ms, no drift."""
    rng = random.Random(3)
    sched, clock, leg, p, _ = setup(
        wake_delay=lambda _w: 0.025 if rng.random() < 0.002 else rng.uniform(0, 0.0015))
    chunk = tone(250, amp=8000)
    t_start = sched.time()
    # The service sends 250 ms deltas several times faster than real time.
    for k in range(240):
        sched.run_until(t_start + k * 0.05)
        p.push("long", chunk)
    p.end_of_response()
    sched.run_until(t_start + 61.0)
    out = agent_frames(leg)
    # 60 s: no frame lost or doubled (+1 for the resampler's flushed filter tail).
    assert 3000 <= len(out) <= 3001
    jitter = sorted(abs(f.handed_at - f.tick_time) for f in out)
    assert percentile(jitter, 99) <= 0.002
    first = out[0].tick_time
    drift = out[-1].handed_at - (first + (len(out) - 1) * 0.02)
    assert abs(drift) <= 0.002
    assert p.heard_ms("long") == 60000
    assert clock.stats().late_ticks >= 1          # the stalls happened and were caught up


def test_comfort_beeps_fill_silence_while_waiting() -> None:
    sched, _clock, leg, p, _ = setup()
    p.comfort = True
    sched.advance(4.0)
    beeps = [f.tick_time for f in agent_frames(leg)]
    assert beeps, "no comfort tone"
    # Never more than 2 s of dead air: the first beep within 1.6 s, then every ~1.7 s.
    assert beeps[0] - 100.0 <= 1.6
    starts = [b for a, b in zip([100.0, *beeps], beeps, strict=False) if b - a > 0.021]
    assert all(b - a <= 2.0 for a, b in zip(starts, starts[1:], strict=False))
    # Comfort audio is not agent audio: it is never "heard" for truncation.
    assert p.heard == {}
    p.comfort = False
    n = len(agent_frames(leg))
    sched.advance(4.0)
    assert len(agent_frames(leg)) <= n + 10          # at most the beep that was queued
