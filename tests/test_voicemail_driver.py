"""The voicemail driver on the virtual media clock: what ends a message and when, what the
WAV holds, what the caller hears. An in-memory leg, no transcription target (the message
and record must stand without one)."""

from __future__ import annotations

import asyncio
import wave
from pathlib import Path

import pytest

from bridge.call.clock import MediaClock, VirtualScheduler
from bridge.call.events import CallEvent
from bridge.call.leg import LegInfo, Source
from bridge.call.memory import MemoryLeg
from bridge.call.records import CallRecord, MemoryRecordStore
from bridge.call.voicemail import VoicemailCall
from bridge.codecs import g711
from bridge.dialplans.voicemail import Voicemail
from tests.support.audio import tone

GREETING = "880:500"          # 0.5 s: recording starts once it has played


async def _run(tmp_path: Path, script: list[tuple[float, str, object]],
               idle_silence: bool = True, carry: str = "pcm16", **settings: object
               ) -> tuple[CallRecord, MemoryLeg, list[CallEvent]]:
    """Run a voicemail call; ``script`` is (clock time after answering, action, arg)."""
    sched = VirtualScheduler(start=100.0)
    clock = MediaClock(scheduler=sched)
    leg = MemoryLeg(LegInfo(call_id="leg", source=Source.SIP, caller="+1555", called="vm"),
                    clock=clock, idle_silence=idle_silence)
    if carry != "pcm16":
        assert leg.carry_encoded(carry)
    vm = Voicemail(greeting=GREETING, directory=tmp_path, **settings)  # type: ignore[arg-type]
    events: list[CallEvent] = []
    record = CallRecord(call_id="c_vm", source="sip", caller="+1555", called="vm",
                        dialplan="vm")
    driver = VoicemailCall(leg, "vm", vm, None, clock, store=MemoryRecordStore(),
                           record=record, on_event=events.append)
    task = asyncio.create_task(driver.run())
    start = 100.0
    pending = sorted(script, key=lambda s: s[0])
    for _ in range(5000):                   # 100 s of clock time at most
        while pending and clock.time() >= start + pending[0][0]:
            _, action, arg = pending.pop(0)
            if action == "play":
                leg.play(arg)                              # type: ignore[arg-type]
            elif action == "press":
                leg.press(str(arg))
            elif action == "hangup":
                leg.far_end_hangup()
        if task.done():
            break
        sched.advance(0.02)
        for _ in range(5):
            await asyncio.sleep(0)
    assert task.done(), "the voicemail never ended"
    return task.result(), leg, events


def _wav_seconds(path: str) -> float:
    with wave.open(path) as w:
        return w.getnframes() / w.getframerate()


async def test_silence_ends_the_message(tmp_path: Path) -> None:
    record, leg, events = await _run(
        tmp_path, [(0.6, "play", tone(1500, rate=8000, amp=6000))], silence_s=2.0)
    vm = record.voicemail
    assert vm is not None and vm["ended_by"] == "silence"
    # 0.1 s of silence after the greeting, the 1.5 s tone, then 2 s of silence
    assert vm["duration_s"] == pytest.approx(3.6, abs=0.1)
    assert _wav_seconds(vm["audio"]) == pytest.approx(vm["duration_s"], abs=0.01)
    assert vm["transcript"] is None and vm["webhook"] is None   # no transcription target
    assert record.end_reason == "voicemail" and record.ended_at is not None
    assert [e.kind for e in events][0] == "call.started"
    assert events[-1].kind == "call.ended"


async def test_the_end_key_ends_it_at_once(tmp_path: Path) -> None:
    record, _, _ = await _run(tmp_path, [(0.6, "play", tone(5000, rate=8000, amp=6000)),
                                         (2.0, "press", "#")])
    vm = record.voicemail
    assert vm is not None and vm["ended_by"] == "digit"
    assert vm["duration_s"] == pytest.approx(1.5, abs=0.1)


async def test_other_keys_do_not_end_it(tmp_path: Path) -> None:
    record, _, _ = await _run(tmp_path, [(0.6, "play", tone(3000, rate=8000, amp=6000)),
                                         (1.0, "press", "5"), (2.0, "press", "*")],
                              silence_s=1.0)
    assert record.voicemail is not None and record.voicemail["ended_by"] == "silence"


async def test_the_maximum_length_cuts_it(tmp_path: Path) -> None:
    record, _, _ = await _run(tmp_path, [(0.5, "play", tone(10_000, rate=8000, amp=6000))],
                              max_s=3.0)
    vm = record.voicemail
    assert vm is not None and vm["ended_by"] == "max_length"
    assert vm["duration_s"] == pytest.approx(3.0, abs=0.03)
    assert _wav_seconds(vm["audio"]) <= 3.0


async def test_audio_during_the_greeting_is_not_recorded(tmp_path: Path) -> None:
    """The caller talking over the greeting: only what follows it is the message."""
    record, _, _ = await _run(tmp_path, [(0.0, "play", tone(300, rate=8000, amp=6000))],
                              silence_s=1.0)
    vm = record.voicemail
    assert vm is not None and vm["ended_by"] == "silence"
    with wave.open(vm["audio"]) as w:
        pcm = w.readframes(w.getnframes())
    assert max(abs(int.from_bytes(pcm[i:i + 2], "little", signed=True))
               for i in range(0, len(pcm), 2)) < 100


async def test_a_caller_who_hangs_up_leaves_the_message(tmp_path: Path) -> None:
    record, leg, _ = await _run(tmp_path, [(0.6, "play", tone(1000, rate=8000, amp=6000)),
                                           (1.8, "hangup", None)])
    vm = record.voicemail
    assert vm is not None and vm["ended_by"] == "hangup"
    assert vm["duration_s"] == pytest.approx(1.3, abs=0.1)
    assert record.end_reason == "caller_hangup"


async def test_a_phone_that_sends_nothing_when_quiet_still_ends_by_silence(
        tmp_path: Path) -> None:
    record, _, _ = await _run(tmp_path, [(0.6, "play", tone(1000, rate=8000, amp=6000))],
                              idle_silence=False, silence_s=2.0)
    vm = record.voicemail
    assert vm is not None and vm["ended_by"] == "silence"
    assert vm["duration_s"] == pytest.approx(1.0, abs=0.1)     # only what was sent


async def test_a_cancelled_voicemail_keeps_what_was_recorded(tmp_path: Path) -> None:
    """The call ended under the message (a limit, a shutdown): the WAV and the record's
    entry are still written, and the cancellation goes on."""
    sched = VirtualScheduler(start=100.0)
    clock = MediaClock(scheduler=sched)
    leg = MemoryLeg(LegInfo(call_id="leg", source=Source.SIP, caller="+1555", called="vm"),
                    clock=clock)
    record = CallRecord(call_id="c_cancel", source="sip", dialplan="vm")
    driver = VoicemailCall(leg, "vm", Voicemail(greeting=GREETING, directory=tmp_path),
                           None, clock, store=MemoryRecordStore(), record=record)
    task = asyncio.create_task(driver.run())
    leg.play(tone(3000, rate=8000, amp=6000))
    for _ in range(100):                     # 2 s: the greeting, then 1.5 s of message
        sched.advance(0.02)
        for _ in range(5):
            await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    vm = record.voicemail
    assert vm is not None and vm["ended_by"] == "cancelled"
    assert vm["duration_s"] == pytest.approx(1.5, abs=0.1)
    assert _wav_seconds(vm["audio"]) == pytest.approx(vm["duration_s"], abs=0.01)
    assert record.ended_at is not None and leg.hangups == ["voicemail"]


async def test_a_passthrough_leg_is_decoded_in_and_encoded_out(tmp_path: Path) -> None:
    """As the fallback of a call that carried G.711 as is, the voicemail gets the law's
    payload: it records PCM and plays its beeps encoded."""
    message = g711.encode("pcmu", tone(1000, rate=8000, amp=6000))
    record, leg, _ = await _run(tmp_path, [(0.6, "play", message)], carry="pcmu",
                                silence_s=1.0)
    vm = record.voicemail
    assert vm is not None and vm["ended_by"] == "silence"
    assert vm["duration_s"] == pytest.approx(2.1, abs=0.1)
    with wave.open(vm["audio"]) as w:
        pcm = w.readframes(w.getnframes())
    loud = max(abs(int.from_bytes(pcm[i:i + 2], "little", signed=True))
               for i in range(0, len(pcm), 2))
    assert 5000 < loud < 7000                      # the tone's PCM, not µ-law bytes
    sent = [f for f in leg.frames if not f.silent]
    assert sent and all(len(f.pcm) == 160 for f in sent)    # one byte a sample
