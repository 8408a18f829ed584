"""Caller and agent speech intervals in the call record (the dashboard's timeline), and
session rotation recorded. Against the emulator over a real socket.

Times are compared with what the leg itself stamped (its frames carry the clock time they
were handed over at) and with generous bounds where only the wall clock can tell, so a
loaded machine does not make these fail.
"""

from __future__ import annotations

import time
from pathlib import Path

from bridge.call.records import CallRecord, MemoryRecordStore, SpeechSpan
from bridge.realtime.emulator import Emulator, EmulatorConfig
from bridge.web.timeline import timeline_from_record
from tests.support.call_harness import Harness, emu_wait, make_plans, session


def spans(record: CallRecord, role: str) -> list[SpeechSpan]:
    return [s for s in record.speech if s.role == role]


async def test_speech_spans_of_a_greeting_and_a_caller_turn(tmp_path: Path) -> None:
    plans = make_plans(tmp_path)
    async with Emulator(EmulatorConfig(greeting_ms=600)) as emu:
        h = Harness(emu.url, plans.default, MemoryRecordStore())
        h.start()
        await h.until(lambda: h.agent_frames() >= 25)
        await h.until(lambda: not h.call.playout.playing)
        greeting_frames = h.agent_frames()
        said_at = time.time()
        await h.speak(700)
        await emu_wait(emu, lambda r: r.last is not None and r.last.turns >= 1)
        await h.until(lambda: h.agent_frames() >= greeting_frames + 30)
        await h.until(lambda: not h.call.playout.playing)
        h.leg.far_end_hangup()
        record = await h.finish()

    s = session(emu)
    agent, caller = spans(record, "agent"), spans(record, "caller")
    items = [i.item_id for i in s.assistant_items.values() if i.kind == "message"]
    # One span per reply, in order, each as long as the audio the leg got of it.
    assert [a.item_id for a in agent] == items
    frames = [f for f in h.leg.frames if not f.silent]
    got = [20 * greeting_frames, 20 * (len(frames) - greeting_frames)]
    for span, ms in zip(agent, got, strict=True):
        assert abs((span.end - span.start) * 1000 - ms) <= 40   # a frame + scheduling slack
    assert all(record.started_at <= x.start <= x.end <= (record.ended_at or 0)
               for x in record.speech)
    # The caller's one turn: 700 ms of speech, starting when the leg began sending it,
    # and ending before the echo of it started.
    assert len(caller) == 1
    c = caller[0]
    assert c.item_id == [t.item_id for t in record.transcript if t.role == "caller"][0]
    assert abs((c.end - c.start) - 0.7) <= 0.06
    assert said_at - 0.05 <= c.start <= said_at + 0.5
    # (the mapping onto wall time is good to about a frame)
    assert agent[0].end <= c.start + 0.05 and c.end <= agent[1].start
    # The dashboard's timeline draws these spans rather than estimates.
    tl = timeline_from_record(record.to_dict())
    drawn = [(sp.role, sp.item_id) for sp in tl.spans]
    assert drawn == [(x.role, x.item_id) for x in record.speech]
    assert not any(sp.estimated for sp in tl.spans)
    # And the spans survive the store.
    assert CallRecord.from_dict(record.to_dict()).speech == record.speech


async def test_a_barge_in_ends_the_agent_span_where_the_caller_stopped_hearing(
        tmp_path: Path) -> None:
    plans = make_plans(tmp_path)
    async with Emulator(EmulatorConfig(greeting_ms=3000)) as emu:
        h = Harness(emu.url, plans.default, MemoryRecordStore())
        h.start()
        await h.until(lambda: h.agent_frames() >= 40)
        await h.speak(600)
        await h.until(lambda: bool(h.call.record.barge_ins))
        await h.until(lambda: bool(spans(h.call.record, "caller")))
        h.leg.far_end_hangup()
        record = await h.finish()
    bi = record.barge_ins[0]
    agent = spans(record, "agent")
    assert agent[0].item_id == bi.item_id
    assert abs((agent[0].end - agent[0].start) * 1000 - bi.heard_ms) <= 40
    # The caller started talking before the agent stopped (that is what a barge-in is),
    # and the agent stopped within a tick of speech_started reaching the bridge.
    caller = spans(record, "caller")[0]
    assert caller.start < agent[0].end <= bi.at + 0.05


async def test_session_rotation_is_recorded_and_caller_spans_follow_the_new_session(
        tmp_path: Path) -> None:
    plans = make_plans(tmp_path, greeting=False)
    async with Emulator(EmulatorConfig(session_max_s=6.0)) as emu:
        # A session of 6 s is rotated at half its life, at the first quiet moment.
        h = Harness(emu.url, plans.default, MemoryRecordStore())
        h.start()
        await h.until(lambda: len(h.call.record.session_ids) >= 2, 10.0)
        said_at = time.time()
        await h.speak(600)
        await h.until(lambda: bool(spans(h.call.record, "caller")), 10.0)
        h.leg.far_end_hangup()
        record = await h.finish()
    sessions = [x.session_id for x in emu.record.sessions]
    assert record.session_ids[:2] == sessions[:2]
    caller = spans(record, "caller")[0]
    # Mapped with the new session's audio clock (a stale one would put it seconds early).
    assert said_at - 0.05 <= caller.start <= said_at + 0.5
    assert abs((caller.end - caller.start) - 0.6) <= 0.06
