"""Whole calls: an in-memory leg, the real Realtime client, the emulator over a real socket.

Timing here is measured, never slept on: the leg stamps every frame with the media clock's
time and the call stamps when events reached it, so the checks compare those stamps (a
loaded machine delays both alike) rather than asserting on wall-clock durations.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import socket
import time
from pathlib import Path
from typing import Any

import pytest

from bridge.call.call import Call
from bridge.call.clock import MediaClock
from bridge.call.events import CallEnded, CallEvent, CallStarted, StateChanged
from bridge.call.leg import LegInfo, Source, TransferOutcome
from bridge.call.manager import (
    CallManager,
    CallRejected,
    client_factory,
)
from bridge.call.memory import MemoryLeg
from bridge.call.records import CallRecord, MemoryRecordStore, SqliteRecordStore
from bridge.dialplans.announce import load_announcement
from bridge.dialplans.plan import DialplanSet
from bridge.dialplans.tools import tool_from_function
from bridge.realtime.config import RealtimeSettings
from bridge.realtime.emulator import Emulator, EmulatorConfig
from bridge.realtime.events import AudioDelta
from bridge.realtime.recovery import RecoveryPolicy
from tests.support.call_harness import OPERATOR, SALES, Harness, emu_wait, make_plans, session
from tests.support.waiting import until

TONES = "440:300,0:100,440:300"      # a short fallback announcement keeps tests quick


def write_script(tmp: Path, text: str) -> Path:
    path = tmp / "script.toml"
    path.write_text('speech = "tone"\n' + text)
    return path


# ---------------------------------------------------------------------------- whole call
async def test_whole_call_greeting_turn_echo_tool_transfer(tmp_path: Path) -> None:
    script = write_script(tmp_path, """
[[rule]]
on_turn = 2
say = "Let me transfer you to sales."
call = "transfer_call"
args = { target = "sales" }
""")
    plans = make_plans(tmp_path)
    store = SqliteRecordStore(tmp_path / "calls.sqlite")
    async with Emulator(EmulatorConfig(script=script, greeting_ms=600)) as emu:
        h = Harness(emu.url, plans.default, store)
        h.start()
        # Greeting plays first (the model speaks first).
        await h.until(lambda: h.agent_frames() >= 25)
        await h.until(lambda: not h.call.playout.playing)
        # Caller turn 1 -> echo reply.
        greeting_frames = h.agent_frames()
        await h.speak(700)
        await emu_wait(emu, lambda r: r.last is not None and r.last.turns >= 1)
        await h.until(lambda: h.agent_frames() >= greeting_frames + 30)
        await h.until(lambda: not h.call.playout.playing)
        # Written as the call goes: the live call's record already holds both replies.
        live = await store.get(h.call.call_id)
        assert live is not None and live.ended_at is None
        assert [t.role for t in live.transcript].count("agent") == 2
        # Caller turn 2 -> the scripted model says a line and calls transfer_call(sales).
        await h.speak(600)
        record = await h.finish()
    await store.close()

    s = emu.record.last
    assert s is not None
    # The transfer reached the leg, once, to the URI the dialplan names for "sales"...
    assert h.leg.transfers == [SALES]
    # ... after the model's last words had played (the leg got them all first).
    last_agent = max(f.handed_at for f in h.leg.frames if not f.silent)
    assert h.leg.transfer_times[0] >= last_agent
    # The tool output went back to the model.
    assert len(s.tool_outputs) == 1
    call_id, output = s.tool_outputs[0]
    assert json.loads(output) == {"transferred": True, "target": "sales"}

    # The record, field by field.
    assert record.call_id == h.call.call_id and record.call_id.startswith("c_")
    assert record.leg_call_id == "leg-1"
    assert record.source == "memory"
    assert (record.caller, record.called) == ("+15550123", "100")
    assert record.dialplan == "test"
    assert record.connected_at is not None and record.ended_at is not None
    assert record.started_at <= record.connected_at <= record.ended_at
    assert record.end_reason == "transferred" and record.end_detail == "sales"
    assert record.transferred_to == "sales"
    assert record.fallback is None
    assert record.session_ids == [s.session_id]
    agent = [t for t in record.transcript if t.role == "agent"]
    caller = [t for t in record.transcript if t.role == "caller"]
    assert [t.item_id for t in agent] == [
        i.item_id for i in s.assistant_items.values() if i.kind == "message"]
    assert "greeting" in agent[0].text
    assert "echo" in agent[1].text
    assert agent[2].text == "Let me transfer you to sales."
    assert not any(t.truncated for t in agent)
    assert len(caller) == 2 and all("caller audio" in t.text for t in caller)
    times = [t.at for t in record.transcript]
    assert all(record.started_at <= t <= record.ended_at for t in times)
    assert record.barge_ins == []
    assert len(record.tool_calls) == 1
    tc = record.tool_calls[0]
    assert (tc.name, tc.call_id, tc.ok, tc.error) == ("transfer_call", call_id, True, None)
    assert json.loads(tc.arguments) == {"target": "sales"}
    assert json.loads(tc.output) == {"transferred": True, "target": "sales"}
    assert tc.duration_s >= 0 and tc.response_id in {r.response_id for r in s.responses}
    assert record.dtmf == []
    assert record.responses == len(s.responses) == 3
    assert record.usage["total_tokens"] > 0 and record.usage["output_tokens"] > 0
    # Two replies followed a caller turn: each has its latency split recorded.
    assert len(record.turns) == 2
    assert all(t.upstream_ms >= 0 and t.pipeline_ms >= 0 for t in record.turns)
    assert record.errors == []
    # And the store has exactly this record.
    store2 = SqliteRecordStore(tmp_path / "calls.sqlite")
    assert await store2.get(record.call_id) == record
    await store2.close()


# ---------------------------------------------------------------------------- barge-in
async def test_barge_in_stops_audio_within_a_tick_and_truncates_at_what_was_heard(
        tmp_path: Path) -> None:
    plans = make_plans(tmp_path)
    store = MemoryRecordStore()
    async with Emulator(EmulatorConfig(greeting_ms=3000)) as emu:
        h = Harness(emu.url, plans.default, store)
        h.start()
        await h.until(lambda: h.agent_frames() >= 40)      # 0.8 s of the greeting heard
        await h.speak(600)                                   # talk over it
        await h.until(lambda: bool(h.call.record.barge_ins))
        await emu_wait(emu, lambda r: bool(r.truncations))
        await h.until(lambda: h.call.clock.time() > h.call.barge_in_seen[0] + 0.3)
        h.leg.far_end_hangup()
        record = await h.finish()

    seen = h.call.barge_in_seen[0]
    # No agent audio handed to the leg after speech_started reached the bridge (the
    # budget is one tick, 20 ms; the playout is cleared before the next tick).
    after = [f for f in h.leg.frames if seen < f.handed_at <= seen + 0.3]
    assert after and all(f.silent for f in after)
    late = [f for f in h.leg.frames if f.handed_at > seen + 0.020 and f.handed_at < seen + 0.3
            and not f.silent]
    assert late == []
    # The truncation the emulator recorded matches what the leg actually received.
    received_ms = 20 * sum(1 for f in h.leg.frames if not f.silent and f.handed_at <= seen)
    trunc = emu.record.truncations[0]
    assert abs(trunc.audio_end_ms - received_ms) <= 20
    assert trunc.audio_end_ms < trunc.item_audio_ms
    bi = record.barge_ins[0]
    assert bi.item_id == trunc.item_id and bi.truncated_ms == trunc.audio_end_ms
    assert bi.heard_ms == trunc.audio_end_ms and bi.received_ms >= bi.heard_ms
    # The greeting's transcript was trimmed to what was heard.
    greeting = [t for t in record.transcript if t.item_id == trunc.item_id]
    assert greeting and greeting[0].truncated
    # interrupt_response is on (the default): the server cancels, the bridge does not.
    assert "response.cancel" not in session(emu).received_types


# ---------------------------------------------------------------------------- injection
async def test_prompt_injection_transfers_are_refused(tmp_path: Path) -> None:
    script = write_script(tmp_path, """
[[rule]]
on_turn = 1
say = "Transferring you to the boss."
call = "transfer_call"
args = { target = "ceo" }

[[rule]]
on_tool_output = "transfer_call"
say = "Dialling that number."
call = "transfer_call"
args = { target = "+15557654321" }
""")
    plans = make_plans(tmp_path, greeting=False)
    store = MemoryRecordStore()
    async with Emulator(EmulatorConfig(script=script)) as emu:
        h = Harness(emu.url, plans.default, store)
        h.start()
        await h.until(lambda: h.call.record.connected_at is not None)
        await h.speak(600)
        await emu_wait(emu, lambda r: len(r.tool_outputs) >= 2)
        # The call goes on: the model is asked to respond after the second refusal.
        await emu_wait(emu, lambda r: r.last is not None and len(r.last.responses) >= 3)
        assert not h.call.ended
        h.leg.far_end_hangup()
        record = await h.finish()

    outputs = [json.loads(o) for _, o in emu.record.tool_outputs]
    assert len(outputs) == 2
    assert all("error" in o for o in outputs)
    assert all(o["error"]["type"] == "invalid_arguments" for o in outputs)
    assert h.leg.transfers == []                      # nothing reached the leg
    assert [t.ok for t in record.tool_calls] == [False, False]
    assert [json.loads(t.arguments)["target"] for t in record.tool_calls] == [
        "ceo", "+15557654321"]
    assert record.end_reason == "caller_hangup"


async def test_transfer_by_name_outside_the_dialplan_is_refused_by_the_call(
        tmp_path: Path) -> None:
    """Defence in depth: even a tool handing the call a bad name gets nothing."""
    plans = make_plans(tmp_path, greeting=False)
    h = Harness("ws://127.0.0.1:9", plans.default, MemoryRecordStore())
    outcome = await h.call.control.transfer("+15557654321")
    assert outcome == TransferOutcome(ok=False, detail="unknown target '+15557654321'")
    assert h.leg.transfers == []


# ---------------------------------------------------------------------------- tools fail
async def test_a_tool_that_raises_or_times_out_answers_the_model_and_the_call_goes_on(
        tmp_path: Path) -> None:
    async def lookup(order: str) -> dict[str, str]:
        """Look up an order."""
        raise RuntimeError("database down")

    async def slow(order: str) -> dict[str, str]:
        """A lookup that hangs."""
        await asyncio.sleep(30)
        return {}

    extra = {"lookup": tool_from_function(lookup),
             "slow": tool_from_function(slow, timeout_s=0.3)}
    script = write_script(tmp_path, """
[[rule]]
on_turn = 1
call = "lookup"
args = { order = "1234" }

[[rule]]
on_tool_output = "lookup"
call = "slow"
args = { order = "1234" }

[[rule]]
on_tool_output = "slow"
say = "Sorry, I cannot look that up right now."
""")
    plans = make_plans(tmp_path, tools=("lookup", "slow", "hang_up"), greeting=False,
                       extra_tools=extra)
    store = MemoryRecordStore()
    async with Emulator(EmulatorConfig(script=script)) as emu:
        h = Harness(emu.url, plans.default, store)
        h.start()
        await h.until(lambda: h.call.record.connected_at is not None)
        await h.speak(600)
        await emu_wait(emu, lambda r: len(r.tool_outputs) >= 2)
        # The model answered after the failures; the caller still talks and is echoed.
        await emu_wait(emu, lambda r: any(
            "cannot look" in i.transcript for i in session(emu).assistant_items.values()))
        await h.until(lambda: not h.call.playout.playing and h.agent_frames() > 0)
        await h.speak(500)
        await emu_wait(emu, lambda r: session(emu).turns >= 2)
        await emu_wait(emu, lambda r: sum(
            "echo" in i.transcript for i in session(emu).assistant_items.values()) >= 1)
        h.leg.far_end_hangup()
        record = await h.finish()

    outputs = [json.loads(o) for _, o in emu.record.tool_outputs]
    assert [o["error"]["type"] for o in outputs] == ["tool_error", "timeout"]
    assert [(t.name, t.ok, t.error) for t in record.tool_calls] == [
        ("lookup", False, "tool_error"), ("slow", False, "timeout")]
    assert record.end_reason == "caller_hangup"
    assert any("cannot look" in t.text for t in record.transcript)


# ---------------------------------------------------------------------------- fallback
def _announcement_start(leg: MemoryLeg, first_frame: bytes) -> float | None:
    for f in leg.frames:
        if f.pcm == first_frame:
            return f.handed_at
    return None


def _max_gap(leg: MemoryLeg, start: float, end: float) -> float:
    """Longest stretch of pure silence handed to the leg between ``start`` and ``end``."""
    gap, last = 0.0, start
    for f in leg.frames:
        if start <= f.handed_at <= end and not f.silent:
            gap = max(gap, f.handed_at - last)
            last = f.handed_at
    return max(gap, end - last)


async def test_upstream_lost_mid_call_plays_the_fallback_and_transfers(tmp_path: Path) -> None:
    plans = make_plans(tmp_path)
    store = SqliteRecordStore(tmp_path / "calls.sqlite")
    first = load_announcement("unavailable-transfer", 8000)[:320]
    async with Emulator(EmulatorConfig(greeting_ms=400)) as emu:
        # A reconnect budget of 1 s: every attempt fails (refused), then the fallback.
        h = Harness(emu.url, plans.default, store,
                    client_options={"recovery": RecoveryPolicy(budget_s=1.0)})
        h.start()
        await h.until(lambda: h.agent_frames() >= 20 and not h.call.playout.playing)
        lost_at = h.clock.time()
        await emu.stop()                     # closes the socket (1001) and stops listening
        await h.until(lambda: bool(h.leg.transfers), 20)
        record = await h.finish()
    await store.close()

    started = _announcement_start(h.leg, first)
    assert started is not None
    assert started - lost_at <= 1.0 + 2.0                # within 2 s of the budget's end
    assert _max_gap(h.leg, lost_at, started) <= 2.0      # and no dead air before it
    assert h.leg.transfers == [OPERATOR]
    assert h.leg.transfer_times[0] >= max(f.handed_at for f in h.leg.frames if not f.silent)
    assert record.end_reason == "transferred" and record.transferred_to == "operator"
    assert record.fallback is not None
    saved = await SqliteRecordStore(tmp_path / "calls.sqlite").get(record.call_id)
    assert saved is not None and saved.fallback == record.fallback


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_upstream_unreachable_at_connect_plays_the_fallback_and_transfers(
        tmp_path: Path) -> None:
    plans = make_plans(tmp_path, announcement=TONES)
    store = MemoryRecordStore()
    first = load_announcement(TONES, 8000)[:320]
    h = Harness(f"ws://127.0.0.1:{_closed_port()}", plans.default, store)
    t0 = time.monotonic()
    h.start()
    await h.until(lambda: bool(h.leg.transfers), 20)
    record = await h.finish()
    started = _announcement_start(h.leg, first)
    assert started is not None and started - t0 <= 2.0
    assert h.leg.transfers == [OPERATOR]
    assert record.end_reason == "transferred"
    assert record.fallback is not None and record.fallback.startswith("connect")
    assert record.connected_at is None
    assert await store.get(record.call_id) is not None


async def test_connect_that_hangs_gets_a_comfort_tone_then_the_fallback(tmp_path: Path) -> None:
    """A server that accepts TCP but never answers: comfort beep within 2 s, then fallback."""
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    plans = make_plans(tmp_path, announcement=TONES)
    try:
        h = Harness(f"ws://127.0.0.1:{port}", plans.default, MemoryRecordStore(),
                    connect_timeout_s=2.2)
        t0 = h.clock.time() if h.clock.running else time.monotonic()
        h.start()
        await h.until(lambda: bool(h.leg.transfers), 20)
        record = await h.finish()
    finally:
        server.close()
    first_sound = min(f.handed_at for f in h.leg.frames if not f.silent)
    assert first_sound - t0 <= 2.0
    assert record.fallback is not None and "Timeout" in record.fallback
    assert h.leg.transfers == [OPERATOR]


async def test_a_bug_in_the_call_logic_runs_the_fallback(tmp_path: Path) -> None:
    plans = make_plans(tmp_path, announcement=TONES)
    store = MemoryRecordStore()
    async with Emulator(EmulatorConfig(greeting_ms=400)) as emu:
        h = Harness(emu.url, plans.default, store)

        def broken(_event: Any) -> None:
            raise KeyError("bug")

        h.call._sync_handlers[AudioDelta] = broken
        h.start()
        await h.until(lambda: bool(h.leg.transfers), 20)
        record = await h.finish()
    assert record.fallback == "internal error: KeyError"
    assert record.errors == ["internal: KeyError"]
    assert h.leg.transfers == [OPERATOR] and record.end_reason == "transferred"
    assert await store.get(record.call_id) is not None


async def test_a_factory_that_fails_runs_the_fallback(tmp_path: Path) -> None:
    plans = make_plans(tmp_path, announcement=TONES)

    def factory(profile: Any, log: Any) -> Any:
        raise RuntimeError("no credentials")

    clock = MediaClock()
    leg = MemoryLeg(clock=clock)
    record = await asyncio.wait_for(
        Call(leg, plans.default, factory, clock, MemoryRecordStore()).run(), 20)
    assert record.fallback == "connect: RuntimeError"
    assert leg.transfers == [OPERATOR]


# ---------------------------------------------------------------------------- DTMF, limits
async def test_dtmf_goes_to_the_dialplan_or_the_model(tmp_path: Path) -> None:
    plans = make_plans(tmp_path, greeting=False)
    store = MemoryRecordStore()
    async with Emulator(EmulatorConfig()) as emu:
        h = Harness(emu.url, plans.default, store)
        h.start()
        await h.until(lambda: h.call.record.connected_at is not None)
        h.leg.press("4")
        await emu_wait(emu, lambda r: "caller pressed 4" in session(emu).user_texts)
        await emu_wait(emu, lambda r: session(emu).response_creates >= 1)
        h.leg.press("9")                      # dialplan action: the agent says a text
        await emu_wait(emu, lambda r: any(
            "nine to five" in json.dumps(e) for e in session(emu).received
            if e.get("type") == "response.create"))
        h.leg.press("0")                      # dialplan action: transfer to the operator
        record = await h.finish()
    assert h.leg.transfers == [OPERATOR]
    assert [(d.digit, d.direction, d.action) for d in record.dtmf] == [
        ("4", "in", "model"), ("9", "in", "say"), ("0", "in", "transfer")]
    assert record.end_reason == "transferred"


async def test_g711_passthrough_call(tmp_path: Path) -> None:
    """audio_format g711 on a G.711 leg: the session is µ-law both ways, the echo plays."""
    plans = make_plans(tmp_path, greeting=False, audio_format="g711")
    async with Emulator(EmulatorConfig()) as emu:
        h = Harness(emu.url, plans.default, MemoryRecordStore())
        h.start()
        await h.until(lambda: h.call.record.connected_at is not None)
        await h.speak(600)
        await emu_wait(emu, lambda r: any(
            i.audio_ms_sent > 500 for i in session(emu).assistant_items.values()))
        await h.until(lambda: h.agent_frames() >= 25)
        h.leg.far_end_hangup()
        record = await h.finish()
    cfg = session(emu).config["audio"]
    assert cfg["input"]["format"]["type"] == "audio/pcmu"
    assert cfg["output"]["format"]["type"] == "audio/pcmu"
    # 600 ms of caller audio went up as µ-law (8 bytes per ms) and came back as an echo.
    assert session(emu).appended_audio_ms >= 600
    assert any("echo" in t.text for t in record.transcript)


async def test_appends_of_40_ms_halve_the_messages(tmp_path: Path) -> None:
    plans = make_plans(tmp_path, greeting=False)
    async with Emulator(EmulatorConfig()) as emu:
        h = Harness(emu.url, plans.default, MemoryRecordStore(), append_ms=40)
        h.start()
        await h.until(lambda: h.call.record.connected_at is not None)
        await h.speak(600)
        await emu_wait(emu, lambda r: session(emu).turns >= 1)
        h.leg.far_end_hangup()
        await h.finish()
    s = session(emu)
    appends = s.received_types.count("input_audio_buffer.append")
    assert appends > 10
    assert s.appended_audio_ms / appends == pytest.approx(40, abs=1)


async def test_agent_hang_up_tool_waits_for_the_goodbye(tmp_path: Path) -> None:
    script = write_script(tmp_path, """
[[rule]]
on_turn = 1
say = "Goodbye."
call = "hang_up"
args = { reason = "caller is done" }
""")
    plans = make_plans(tmp_path, greeting=False)
    async with Emulator(EmulatorConfig(script=script)) as emu:
        h = Harness(emu.url, plans.default, MemoryRecordStore())
        h.start()
        await h.until(lambda: h.call.record.connected_at is not None)
        await h.speak(500)
        record = await h.finish()
    assert record.end_reason == "agent_hangup" and record.end_detail == "caller is done"
    assert h.leg.hangups == ["agent_hangup"]
    s = emu.record.last
    assert s is not None
    goodbye = [i for i in s.assistant_items.values() if i.transcript == "Goodbye."][0]
    # All of the goodbye was handed to the leg before the hang-up.
    assert h.call.playout.heard_ms(goodbye.item_id) >= goodbye.audio_ms_sent - 20


async def test_cancelled_call_still_writes_its_record(tmp_path: Path) -> None:
    plans = make_plans(tmp_path)
    store = MemoryRecordStore()
    async with Emulator(EmulatorConfig()) as emu:
        h = Harness(emu.url, plans.default, store)
        h.start()
        await h.until(lambda: h.call.record.connected_at is not None)
        assert h.task is not None
        h.task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await h.task
        await emu_wait(emu, lambda r: not session(emu).open)
    saved = await store.get(h.call.call_id)
    assert saved is not None and saved.end_reason == "shutdown" and saved.ended_at
    assert h.leg.hangups == ["shutdown"]
    assert not h.clock.running                           # the playout left the clock


async def test_a_second_cancel_does_not_stop_the_record_being_written(tmp_path: Path) -> None:
    class SlowStore(MemoryRecordStore):
        async def save(self, record: CallRecord) -> None:
            if record.ended_at is not None:
                await asyncio.sleep(0.3)          # a slow disk at the worst moment
            await super().save(record)

    plans = make_plans(tmp_path)
    store = SlowStore()
    async with Emulator(EmulatorConfig()) as emu:
        h = Harness(emu.url, plans.default, store)
        h.start()
        await h.until(lambda: h.call.record.connected_at is not None)
        assert h.task is not None
        h.task.cancel()
        await asyncio.sleep(0.05)
        h.task.cancel()                           # impatient shutdown: cancel again
        with pytest.raises(asyncio.CancelledError):
            await h.task
        await asyncio.wait_for(h.call.finished.wait(), 10)
    saved = await store.get(h.call.call_id)
    assert saved is not None and saved.end_reason == "shutdown"


# ---------------------------------------------------------------------------- manager
async def test_manager_admits_runs_streams_events_and_hangs_up(tmp_path: Path) -> None:
    plans = make_plans(tmp_path, greeting=False)
    store = MemoryRecordStore()
    async with Emulator(EmulatorConfig()) as emu:
        target = RealtimeSettings.from_env({}).target(emulator_url=emu.url)
        clock = MediaClock()
        mgr = CallManager(plans, target, store, clock, max_calls=1)
        events: list[CallEvent] = []

        async def collect() -> None:
            async for e in mgr.subscribe():
                events.append(e)

        collector = asyncio.create_task(collect())
        await asyncio.sleep(0)
        leg1 = MemoryLeg(clock=clock)
        t1 = asyncio.create_task(mgr.handle(leg1))
        await until(lambda: mgr.live == 1 and not mgr.can_admit(), 15.0, clock=clock)
        leg2 = MemoryLeg(LegInfo(call_id="leg-2", source=Source.MEMORY), clock=clock)
        with pytest.raises(CallRejected):
            await mgr.handle(leg2)
        assert leg2.hangups == ["busy"]
        (call_id,) = mgr.calls
        assert mgr.snapshot()[0]["call_id"] == call_id
        await until(lambda: mgr.calls[call_id].record.connected_at is not None, 15.0,
                    clock=clock)
        assert mgr.hang_up(call_id, "operator")
        record = await t1
        assert record.end_reason == "operator"
        assert mgr.live == 0 and mgr.can_admit()
        await mgr.shutdown()
        await asyncio.wait_for(collector, 5)
    assert isinstance(events[0], CallStarted) and isinstance(events[-1], CallEnded)
    assert events[-1].reason == "operator" and events[0].source == "memory"
    states = [e.state for e in events if isinstance(e, StateChanged)]
    assert states == ["connecting", "conversing", "ending", "ended"]
    assert all(e.call_id == call_id for e in events)
    assert [e.to_json()["type"] for e in events][0] == "call.started"





async def test_manager_records_a_call_that_cannot_even_start(tmp_path: Path) -> None:
    plans = make_plans(tmp_path)
    plan = plans.default
    broken = dataclasses.replace(
        plan, agent=dataclasses.replace(plan.agent, turn_detection={"type": "bogus"}))
    store = MemoryRecordStore()
    mgr = CallManager(DialplanSet([broken]), client_factory(
        RealtimeSettings.from_env({}).target(emulator_url="ws://127.0.0.1:9")), store)
    leg = MemoryLeg()
    record = await mgr.handle(leg)
    assert record.end_reason == "error" and record.end_detail == "ConfigError"
    assert leg.hangups == ["error"]
    assert await store.get(record.call_id) == record
