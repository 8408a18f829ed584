"""Call recording, unit by unit and over a whole call on the virtual media clock: the
stereo WAV, the playout's tap (nothing flushed at a barge-in is recorded), the consent
announcement before the agent, retention, the download's path check, and ``[recording]``
in a dialplan."""

from __future__ import annotations

import asyncio
import os
import textwrap
import time
import wave
from pathlib import Path

import numpy as np
import pytest

from bridge.call.clock import MediaClock, VirtualScheduler
from bridge.call.memory import MemoryLeg
from bridge.call.playout import Playout
from bridge.call.recording import CallRecording, recording_name, sweep
from bridge.codecs import g711
from bridge.dialplans.loader import load_dialplan_file, load_dialplans
from bridge.errors import DialplanError
from bridge.realtime import events as ev
from bridge.web.recordings import recording_file
from tests.support.audio import speech, tone
from tests.support.call_rig import Rig, settle

N = 160                                        # samples per 20 ms frame at 8 kHz


def read(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with wave.open(str(path), "rb") as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (2, 2, 8000)
        data = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    return data[0::2], data[1::2]


def loud(channel: np.ndarray) -> list[int]:
    """Indexes of the frames with anything in them."""
    return [i for i in range(len(channel) // N) if np.any(channel[i * N:(i + 1) * N])]


def frame(value: int) -> bytes:
    return np.full(N, value, dtype="<i2").tobytes()


def test_each_tick_writes_one_stereo_frame_caller_left_agent_right(tmp_path: Path) -> None:
    rec = CallRecording(tmp_path / "a.wav", 8000, N)
    rec.caller(frame(100))
    rec.agent(frame(-200))                     # the playout's tick writes the pair
    rec.agent(None)                            # nothing from either side: silence
    rec.caller(frame(300))
    rec.agent(None)
    assert rec.close() == pytest.approx(0.06)
    left, right = read(tmp_path / "a.wav")
    assert list(left[::N]) == [100, 0, 300] and list(right[::N]) == [-200, 0, 0]


def test_g711_carried_frames_are_decoded_and_the_caller_queue_is_bounded(
        tmp_path: Path) -> None:
    rec = CallRecording(tmp_path / "b.wav", 8000, N, law="pcmu")
    ulaw = g711.encode("pcmu", frame(1000))
    for _ in range(50):                        # a burst: only the newest few are kept
        rec.caller(ulaw)
    for _ in range(60):
        rec.agent(None)
    rec.close()
    left, _right = read(tmp_path / "b.wav")
    assert 0 < len(loud(left)) <= 15
    assert left[0] == np.frombuffer(g711.decode("pcmu", ulaw), dtype="<i2")[0]


def test_written_as_it_goes_not_held_in_memory(tmp_path: Path) -> None:
    rec = CallRecording(tmp_path / "c.wav", 8000, N)
    for _ in range(500):                       # 10 s
        rec.agent(frame(7))
    assert (tmp_path / "c.wav").stat().st_size >= 9 * 8000 * 4     # on disk already
    assert rec._fill < 50
    rec.close()


def test_the_playout_tap_records_what_the_leg_got_and_nothing_flushed_at_a_barge_in(
        tmp_path: Path) -> None:
    sched = VirtualScheduler(start=10.0)
    clock = MediaClock(scheduler=sched)
    leg = MemoryLeg(sample_rate=8000, idle_silence=False)
    leg.clock = clock
    playout = Playout(leg)
    rec = CallRecording(tmp_path / "d.wav", 8000, N)
    playout.tap = rec.agent
    clock.subscribe(playout, first=True)
    playout.push("item", tone(2000, amp=8000))       # two seconds, all at once
    sched.advance(0.3 + 1e-6)                        # 15 ticks heard
    item, heard_ms, _received, dropped_ms = playout.barge_in()
    sched.advance(1.0 + 1e-6)
    rec.close()
    _left, right = read(tmp_path / "d.wav")
    assert (item, heard_ms) == ("item", 300) and dropped_ms >= 1500
    played = loud(right)
    assert played == list(range(15))                 # the 15 frames handed over, no more
    sent = b"".join(f.pcm for f in leg.frames if not f.silent)
    assert right[:15 * N].tobytes() == sent


def test_retention_deletes_only_expired_recordings(tmp_path: Path) -> None:
    now = time.time()
    old = tmp_path / recording_name("call-1", 7)
    young = tmp_path / recording_name("call-2", 30)
    other = tmp_path / "notes.wav"
    for path, age_days in ((old, 8), (young, 8), (other, 400)):
        path.write_bytes(b"RIFF")
        os.utime(path, (now - age_days * 86400, now - age_days * 86400))
    assert sweep(str(tmp_path), now) == 1
    assert not old.exists() and young.exists() and other.exists()
    assert recording_name("a/../b", 3) == "a_.._b.keep3d.wav"


def test_only_a_file_inside_the_recordings_folder_is_served(tmp_path: Path) -> None:
    folder = tmp_path / "rec"
    folder.mkdir()
    inside = folder / "x.keep1d.wav"
    inside.write_bytes(b"RIFF")
    outside = tmp_path / "secret.wav"
    outside.write_bytes(b"RIFF")
    assert recording_file(str(inside), str(folder)) == inside.resolve()
    assert recording_file(str(folder / ".." / "secret.wav"), str(folder)) is None
    assert recording_file(str(outside), str(folder)) is None
    assert recording_file(str(inside), "") is None
    assert recording_file(str(folder / "gone.wav"), str(folder)) is None


PLAN = """
[match]
default = true
[agent]
instructions = "rec"
greeting = "Hello."
[recording]
consent = "440:200"
consent_text = "This call is recorded."
retention_days = 3
"""


def test_recording_table_in_a_dialplan(tmp_path: Path) -> None:
    (tmp_path / "p.toml").write_text(PLAN)
    plan = load_dialplan_file(tmp_path / "p.toml")
    assert plan.recording.enabled and plan.recording.retention_days == 3
    assert plan.recording.consent == "440:200"
    (tmp_path / "q.toml").write_text("[match]\ndefault = true\n")
    assert not load_dialplan_file(tmp_path / "q.toml").recording.enabled
    (tmp_path / "r.toml").write_text(textwrap.dedent("""
        [match]
        default = true
        [recording]
        consent = "no-such-sound"
    """))
    with pytest.raises(DialplanError) as info:
        load_dialplan_file(tmp_path / "r.toml")
    assert info.value.field == "recording.consent" and info.value.line == 5
    (tmp_path / "s.toml").write_text("[recording]\nretention_days = 0\n")
    with pytest.raises(DialplanError, match="retention_days"):
        load_dialplan_file(tmp_path / "s.toml")


async def test_a_recorded_call_announces_consent_before_the_agent(tmp_path: Path) -> None:
    (tmp_path / "plans").mkdir()
    (tmp_path / "plans" / "p.toml").write_text(PLAN)
    plan = load_dialplans(tmp_path / "plans").default
    rig = Rig(plan, recordings_path=str(tmp_path / "rec"))
    rig.leg.play(speech(400))
    rig.task = asyncio.create_task(rig.call.run())
    await settle()
    for _ in range(5):                       # the consent tones play (200 ms) ...
        await rig.tick()
    assert not rig.session.sent("create_response")         # ... before the greeting
    for _ in range(15):
        await rig.tick()
    greeting = rig.session.sent("create_response")
    assert greeting and greeting[0][1].startswith(
        'Before anything else, say exactly: "This call is recorded."')
    assert greeting[0][1].endswith("Then: Hello.")
    await rig.reply("r1", "a1", 400, done=True)
    await rig.tick(30)
    await rig.emit(ev.ResponseDone("r1", "completed", None, None, None))
    rig.leg.far_end_hangup()
    record = await rig.finish()
    left, right = read(Path(record.recording))
    agent = loud(right)
    assert agent[:10] == list(range(10))                    # the consent, from the start
    assert len(agent) >= 10 + 18                             # then the agent's 400 ms
    assert 18 <= len(loud(left)) <= 21                       # the caller's 400 ms


def test_a_wideband_leg_is_recorded_at_16_khz(tmp_path: Path) -> None:
    rec = CallRecording(tmp_path / "w.wav", 16000, 320)
    pcm = np.arange(320, dtype="<i2").tobytes()
    rec.caller(pcm)
    rec.agent(pcm)
    rec.close()
    with wave.open(str(tmp_path / "w.wav"), "rb") as w:
        assert (w.getnchannels(), w.getframerate(), w.getnframes()) == (2, 16000, 320)
        data = np.frombuffer(w.readframes(320), dtype="<i2")
    assert list(data[0::2][:3]) == [0, 1, 2] and list(data[1::2][-2:]) == [318, 319]


def test_late_clock_wake_ups_lose_no_agent_frame(tmp_path: Path) -> None:
    # The loop wakes 70 ms late now and then: the clock catches up, running the playout's
    # overdue ticks at once and other work afterwards. The recording is driven by the
    # playout's own tick, so it still pairs every frame the leg got with its tick.
    wakes = iter(range(10_000))
    sched = VirtualScheduler(start=10.0,
                             wake_delay=lambda _w: 0.07 if next(wakes) % 9 == 4 else 0.0)
    clock = MediaClock(scheduler=sched)
    leg = MemoryLeg(sample_rate=8000, idle_silence=False)
    leg.clock = clock
    playout = Playout(leg)
    clock.subscribe(playout, first=True)

    class Busy:                                  # other (inbound) work on the clock
        ticks = 0

        def on_tick(self, now: float) -> None:
            self.ticks += 1

    busy = Busy()
    clock.subscribe(busy)
    rec = CallRecording(tmp_path / "late.wav", 8000, N)
    playout.tap = rec.agent
    playout.push("item", tone(1000, amp=8000))
    playout.end_of_response()
    sched.advance(1.5)
    rec.close()
    _left, right = read(tmp_path / "late.wav")
    sent = b"".join(f.pcm for f in leg.frames if not f.silent)
    assert len(sent) >= 49 * 2 * N and busy.ticks > 0
    recorded = b"".join(right[i * N:(i + 1) * N].tobytes() for i in loud(right))
    assert recorded == sent
