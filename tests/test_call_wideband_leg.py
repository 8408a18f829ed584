"""A 16 kHz leg (a G.722 SIP call) on the call's own paths: agent audio, the comfort
tone and hold audio come out as 20 ms frames at 16 kHz with what lies above 4 kHz kept,
and caller audio goes up at 24 kHz with it kept too."""

from __future__ import annotations

import numpy as np

from bridge.call.clock import MediaClock, VirtualScheduler
from bridge.call.hold import hold_pcm
from bridge.call.memory import MemoryLeg
from bridge.call.playout import COMFORT_EVERY_TICKS, Playout
from bridge.codecs.resample import inbound_resampler
from tests.support.audio import tone

RATE = 16000
FRAME = 640


def _peak_hz(pcm: bytes, rate: int) -> float:
    x = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / rate)[spectrum.argmax()])


def _setup() -> tuple[VirtualScheduler, MemoryLeg, Playout]:
    sched = VirtualScheduler(start=100.0)
    clock = MediaClock(scheduler=sched)
    leg = MemoryLeg(sample_rate=RATE, idle_silence=False)
    leg.clock = clock
    p = Playout(leg)
    clock.subscribe(p)
    return sched, leg, p


def test_agent_audio_reaches_a_16khz_leg_with_its_high_band() -> None:
    sched, leg, p = _setup()
    assert leg.g711 == "" and leg.frame_bytes == FRAME
    p.push("a", tone(400, freq=6000, rate=24000, amp=8000))   # above G.711's band
    p.end_of_response()
    sched.advance(0.5)
    out = [f.pcm for f in leg.frames if not f.silent]
    assert len(out) >= 19 and all(len(f) == FRAME for f in out)
    assert abs(_peak_hz(b"".join(out[2:18]), RATE) - 6000) < 30
    assert p.heard_ms("a") == 400


def test_comfort_tone_and_hold_audio_are_made_at_16khz() -> None:
    sched, leg, p = _setup()
    p.comfort = True
    sched.advance(0.02 * (COMFORT_EVERY_TICKS + 12))
    beep = [f.pcm for f in leg.frames if not f.silent]
    assert beep and all(len(f) == FRAME for f in beep)
    assert abs(_peak_hz(b"".join(beep), RATE) - 440) < 30
    hold = hold_pcm(None, RATE)
    p.comfort = False
    p.set_hold(hold)
    before = len(leg.frames)
    sched.advance(0.2)
    frames = leg.frames[before:]
    assert len(frames) == 10 and all(len(f.pcm) == FRAME for f in frames)
    assert b"".join(f.pcm for f in frames) == hold[:10 * FRAME]


def test_caller_audio_goes_up_at_24khz_with_its_high_band() -> None:
    """The inbound resampler a 16 kHz leg gets: 20 ms in, 20 ms out, 7 kHz kept."""
    rs = inbound_resampler(RATE)
    pcm = tone(200, freq=7000, rate=RATE, amp=8000)
    out = b"".join(rs.process(pcm[i:i + FRAME]) for i in range(0, len(pcm), FRAME))
    assert len(out) == 2 * 24000 * 200 // 1000
    assert abs(_peak_hz(out[4800:], 24000) - 7000) < 30
    assert rs.latency_ms < 1.5
