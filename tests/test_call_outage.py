"""Upstream outages over a whole call: a hung or lost Realtime service, as the caller hears it.

The call runs against the emulator over a real socket with the production recovery policy.
Silence is measured from the audio handed to the leg (frame energy, not packets: a frame of
silence is still a frame).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bridge.call.events import CallEvent, StateChanged
from bridge.call.hold import chime, hold_pcm
from bridge.call.memory import MemoryLeg
from bridge.call.records import MemoryRecordStore
from bridge.dialplans.announce import load_announcement
from bridge.dialplans.loader import load_dialplans
from bridge.dialplans.plan import DialplanSet
from bridge.errors import DialplanError
from bridge.realtime.emulator import Emulator, EmulatorConfig
from bridge.realtime.recovery import RecoveryPolicy
from tests.support.call_harness import OPERATOR, Harness, emu_wait, make_plans

#: A 20 ms frame quieter than this (about -50 dBFS) is silence to the caller.
QUIET_RMS = 100


def rms(pcm: bytes) -> float:
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
    return float(np.sqrt(np.mean(samples ** 2))) if len(samples) else 0.0


def longest_silence(leg: MemoryLeg, start: float, end: float) -> float:
    """Longest stretch between ``start`` and ``end`` with no audible frame handed over."""
    gap, last = 0.0, start
    for f in leg.frames:
        if start <= f.handed_at <= end and not f.silent and rms(f.pcm) >= QUIET_RMS:
            gap = max(gap, f.handed_at - last)
            last = f.handed_at
    return max(gap, end - last)


def first_frame_at(leg: MemoryLeg, pcm: bytes, after: float) -> float | None:
    return next((f.handed_at for f in leg.frames if f.handed_at >= after and f.pcm == pcm),
                None)


def plans_with(tmp: Path, fallback_extra: str) -> DialplanSet:
    tmp.mkdir(parents=True, exist_ok=True)
    make_plans(tmp)                          # [fallback] is the file's last table
    plan = tmp / "plans" / "test.toml"
    plan.write_text(plan.read_text() + fallback_extra + "\n")
    return load_dialplans(tmp / "plans")


class States:
    def __init__(self, h_clock: object) -> None:
        self.seen: list[tuple[str, float]] = []
        self._clock = h_clock

    def __call__(self, event: CallEvent) -> None:
        if isinstance(event, StateChanged):
            self.seen.append((event.state, self._clock.time()))  # type: ignore[attr-defined]

    def first(self, state: str) -> float:
        return next(t for s, t in self.seen if s == state)


async def test_a_hung_upstream_mid_call_holds_then_answers_what_was_said(tmp_path: Path) -> None:
    plans = make_plans(tmp_path)
    async with Emulator(EmulatorConfig(greeting_ms=400)) as emu:
        h = Harness(emu.url, plans.default, MemoryRecordStore(),
                    client_options={"recovery": RecoveryPolicy()})
        states = States(h.clock)
        h.call._on_event = states
        h.start()
        await h.until(lambda: h.agent_frames() >= 20 and not h.call.playout.playing)
        hung_at = h.clock.time()
        emu.hang()                                   # socket open, nothing read any more
        await h.speak(700)                           # the caller asks meanwhile
        await emu_wait(emu, lambda r: len(r) >= 2 and r.sessions[1].turns >= 1, 10)
        await h.until(lambda: h.call.record.transcript[-1].role == "agent"
                      and len(h.call.record.session_ids) >= 2 and h.call.playout.playing, 10)
        answered_at = h.clock.time()
        await h.until(lambda: not h.call.playout.playing, 10)
        h.call.end("test over")
        record = await h.finish()

    detected = states.first("reconnecting") - hung_at
    assert detected < 3.0, f"the hung upstream was noticed after {detected:.2f} s"
    assert emu.record.sessions[0].turns == 0          # the hung session never heard it
    silence = longest_silence(h.leg, hung_at, answered_at)
    assert silence <= 2.0, f"the caller heard {silence:.2f} s of silence"
    took, heard, outcome = h.call.outage.history[0]
    assert outcome == "reconnected" and heard <= 2.0
    assert any("upstream away" in e for e in record.errors)


async def greeted(emu: Emulator, plans: DialplanSet) -> Harness:
    """A call with the production recovery policy, its greeting played."""
    h = Harness(emu.url, plans.default, MemoryRecordStore(),
                client_options={"recovery": RecoveryPolicy()})
    h.start()
    await h.until(lambda: h.agent_frames() >= 20 and not h.call.playout.playing)
    return h


async def test_a_budget_of_zero_announces_at_once(tmp_path: Path) -> None:
    plans = plans_with(tmp_path, "reconnect_budget_s = 0")
    first = load_announcement("unavailable-transfer", 8000)[:320]
    async with Emulator(EmulatorConfig(greeting_ms=400)) as emu:
        h = await greeted(emu, plans)
        lost_at = h.clock.time()
        await emu.drop(1006)
        await h.until(lambda: bool(h.leg.transfers), 10)
        record = await h.finish()
    started = first_frame_at(h.leg, first, lost_at)
    assert started is not None and started - lost_at <= 1.0
    assert len(emu.record.sessions) == 1             # not one reconnect attempt
    assert h.leg.transfers == [OPERATOR] and record.fallback is not None


async def test_when_the_budget_runs_out_the_announcement_starts_within_2_s(
        tmp_path: Path) -> None:
    plans = plans_with(tmp_path, "reconnect_budget_s = 3")
    first = load_announcement("unavailable-transfer", 8000)[:320]
    async with Emulator(EmulatorConfig(greeting_ms=400)) as emu:
        h = await greeted(emu, plans)
        lost_at = h.clock.time()
        await emu.stop()                             # gone for good: every attempt refused
        await h.until(lambda: bool(h.leg.transfers), 15)
        record = await h.finish()
    started = first_frame_at(h.leg, first, lost_at)
    assert started is not None
    assert 3.0 <= started - lost_at <= 3.0 + 2.0
    assert longest_silence(h.leg, lost_at, started) <= 2.0    # the hold signal meanwhile
    assert first_frame_at(h.leg, chime(8000)[:320], lost_at) is not None
    assert record.fallback is not None and "3 s reconnect budget" in record.fallback
    assert h.call.outage.history and h.call.outage.history[0][2] == "fallback"


def test_the_fallback_settings_are_checked_when_the_plans_load(tmp_path: Path) -> None:
    plans = plans_with(tmp_path / "a", 'reconnect_budget_s = 4.5\nhold = "440:200,0:300"')
    fb = plans.default.fallback
    assert fb.reconnect_budget_s == 4.5 and fb.hold == "440:200,0:300"
    for extra, words in (('hold = "no-such-sound"', "fallback.hold"),
                         ("reconnect_budget_s = -1", "reconnect_budget_s")):
        with pytest.raises(DialplanError, match=words):
            plans_with(tmp_path / extra[:5], extra)


def test_an_unusable_hold_sound_falls_back_to_the_chime() -> None:
    assert hold_pcm(None, 8000) == chime(8000)
    assert hold_pcm("/no/such/file.wav", 8000) == chime(8000)
    pcm = chime(8000)
    assert len(pcm) == 2 * 8000 * 3                  # a 3 s loop
    frames = [rms(pcm[i:i + 320]) for i in range(0, len(pcm), 320)]
    quiet = longest = 0
    for level in frames:
        quiet = quiet + 1 if level < QUIET_RMS else 0
        longest = max(longest, quiet)
    assert longest * 0.02 <= 1.0                     # never a second of silence
    assert max(frames) < 32767 * 10 ** (-20 / 20)    # soft: under -20 dBFS
