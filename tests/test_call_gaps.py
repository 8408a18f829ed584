"""Gaps in the caller's audio: silence keeps upstream audio time flowing (bridge/call/gaps.py).

The arithmetic is checked on virtual time; the wiring against the emulator, whose VAD
counts audio time: with no silence appended it never ends the caller's turn.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from bridge.call.gaps import InboundGaps
from bridge.call.records import MemoryRecordStore
from bridge.realtime.emulator import Emulator, EmulatorConfig
from tests.support.audio import speech
from tests.support.call_harness import Harness, emu_wait, make_plans, session

P = 0.020


def run(gaps: InboundGaps, arrivals: list[float], until: float, t0: float = 100.0) -> list[int]:
    """Feed frames arriving at ``arrivals`` (seconds after t0) and tick every 20 ms;
    returns the silence frames asked for at each tick."""
    gaps.start(t0)
    out: list[int] = []
    events = sorted([(t, 0) for t in arrivals] +
                    [(k * P + 0.0001, 1) for k in range(1, int(until / P) + 1)])
    for t, kind in events:
        if kind == 0:
            gaps.on_frame(t0 + t)
        else:
            out.append(gaps.on_tick(t0 + t))
    return out


def test_steady_audio_needs_no_silence() -> None:
    gaps = InboundGaps()
    assert sum(run(gaps, [k * P for k in range(500)], 10.0)) == 0


def test_jittery_but_continuous_audio_is_never_doubled_up() -> None:
    """Frames late by up to 50 ms, clumped 40/60 ms packets cut into 20 ms frames, and
    random reordering-free jitter: real audio keeps coming, so no silence is added."""
    rng = random.Random(7)
    for trial in range(20):
        arrivals: list[float] = []
        last = 0.0
        for k in range(1000):
            # each frame arrives up to 50 ms after its due time, never before the last
            last = max(last, k * P + rng.uniform(0.0, 0.050))
            arrivals.append(last)
        gaps = InboundGaps()
        assert sum(run(gaps, arrivals, 20.0)) == 0, trial
    # 60 ms packets: three frames at once every 60 ms, each packet up to 9 ms late.
    arrivals = [3 * P * (k // 3) + 2 * P + rng.uniform(0, 0.009) for k in range(900)]
    arrivals = [max(arrivals[: i + 1]) for i in range(len(arrivals))]
    assert sum(run(InboundGaps(), arrivals, 18.0)) == 0


def test_a_gap_is_filled_with_one_frame_per_missing_tick() -> None:
    gaps = InboundGaps()
    # 1 s of audio, a frame just after each tick (as a clocked leg sends), then nothing.
    out = run(gaps, [k * P + 0.0002 for k in range(1, 51)], 2.0)
    # Nothing for the first 3 missing ticks (jitter room), then all the missing ones at
    # once, then one per tick: upstream audio time back in step with real time.
    after = out[50:]
    assert after[:3] == [0, 0, 0]
    assert after[3] == 4
    assert set(after[4:]) == {1}
    assert sum(out) == 50
    assert gaps.silence_frames == 50


def test_a_burst_after_a_stall_does_not_let_upstream_run_ahead() -> None:
    """Packets late by 220 ms arriving at once after the gap was filled: the lead they
    make is remembered (up to max_lead) and paid back by the next gap before any more
    silence goes up; in between, jittery audio gets none."""
    rng = random.Random(3)
    arrivals = [k * P for k in range(50)]                  # 1 s of audio, last at 0.98 s
    arrivals += [1.2 + 0.0005 * i for i in range(10)]      # a stall, then 10 frames at once
    arrivals += [1.2 + k * P + rng.uniform(0, 0.03) for k in range(1, 100)]
    arrivals = [max(arrivals[: i + 1]) for i in range(len(arrivals))]
    gaps = InboundGaps(max_lead=5)
    out = run(gaps, arrivals, 6.0)          # out[i]: tick i + 1, at (i + 1) * 20 ms
    stall = sum(out[:59])
    # During the stall upstream audio time caught up with real time, and no further.
    assert 50 + stall <= 59.1 and stall >= 7
    assert sum(out[59:150]) == 0                           # no doubling up after it
    # The next gap (audio ends near 3.2 s) starts filling only once what is left of the
    # remembered lead (at most 5 periods) is paid back, on top of the jitter room.
    first = next(i for i, n in enumerate(out) if n and i > 150)
    idle = (first + 1) * P + 0.0001 - arrivals[-1]
    assert 0.07 + P < idle <= 0.07 + 6 * P
    # Upstream audio time is never ahead of real time by more than the stall's silence.
    frames = len(arrivals) + sum(out)
    assert frames <= 6.0 / P + stall + 1


def test_nothing_before_start_and_after_stop() -> None:
    gaps = InboundGaps()
    assert gaps.on_tick(5.0) == 0
    gaps.start(5.0)
    assert gaps.on_tick(5.2) == 10
    gaps.stop()
    assert gaps.on_tick(6.0) == 0
    with pytest.raises(ValueError):
        InboundGaps(threshold_periods=0.5)


# --------------------------------------------------------------------------- with the emulator
@pytest.mark.parametrize("audio_format", ["pcm16", "g711"])
async def test_caller_audio_that_stops_still_gets_a_reply(tmp_path: Path,
                                                          audio_format: str) -> None:
    """The leg sends an utterance and then nothing at all (end of a recording, DTX): the
    call's silence lets the emulator's VAD end the turn, and the echo reply plays."""
    plans = make_plans(tmp_path, greeting=False, audio_format=audio_format)
    async with Emulator(EmulatorConfig()) as emu:
        h = Harness(emu.url, plans.default, MemoryRecordStore(), idle_silence=False)
        h.start()
        await h.until(lambda: h.call.record.connected_at is not None)
        h.leg.play(speech(600))
        await emu_wait(emu, lambda r: r.last is not None and r.last.turns >= 1, 10.0)
        await h.until(lambda: h.agent_frames() >= 25)
        h.leg.far_end_hangup()
        record = await h.finish()
    assert any("echo" in t.text for t in record.transcript)
    assert h.call.inbound.gaps.silence_frames > 0
    s = session(emu)
    # The silence went up in the session's own format, 20 ms per append.
    appends = s.received_types.count("input_audio_buffer.append")
    assert s.appended_audio_ms == pytest.approx(20 * appends, abs=1)
    assert s.appended_audio_ms > 600 + 300


async def test_a_leg_that_keeps_sending_gets_no_silence(tmp_path: Path) -> None:
    plans = make_plans(tmp_path, greeting=False)
    async with Emulator(EmulatorConfig()) as emu:
        h = Harness(emu.url, plans.default, MemoryRecordStore())
        h.start()
        await h.until(lambda: h.call.record.connected_at is not None)
        await h.speak(600)
        await emu_wait(emu, lambda r: r.last is not None and r.last.turns >= 1, 10.0)
        h.leg.far_end_hangup()
        await h.finish()
    assert h.call.inbound.gaps.silence_frames == 0
