"""The call's decisions, step by step: barge-in, the response.cancel policy, tool dispatch.

A ``Call`` runs against ``ScriptedSession`` (the ``RealtimeSession`` the call talks to,
driven by the test: events in, every request recorded) on a media clock with a virtual
scheduler (tests/support/call_rig.py): time moves only when the test ticks it, so "10
ticks = 200 ms handed to the leg" is exact and nothing here depends on how loaded the
machine is. The same behaviour over a real socket and the emulator is covered by
test_call_e2e.py and test_dialplans_front_desk_call.py.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from bridge.call.leg import TransferOutcome
from bridge.dialplans.tools import Tool, tool_from_function
from bridge.realtime import events as ev
from tests.support.audio import tone
from tests.support.call_rig import OPERATOR, SALES, Rig, make_plan, settle

TEXT = "one two three four five six seven eight nine ten"


# ---------------------------------------------------------------------------- barge-in
async def test_barge_in_truncates_at_what_the_leg_was_handed_and_trims_the_text(
        tmp_path: Path) -> None:
    rig = Rig(make_plan(tmp_path))
    await rig.start()
    await rig.reply("r1", "i1", 500, TEXT)
    await rig.tick(10)                                   # 200 ms handed to the leg
    assert len(rig.agent_frames()) == 10
    await rig.speak_over()
    # docs/realtime-protocol.md §6.3: truncate at exactly what was handed to the leg.
    assert rig.session.sent("truncate") == [("truncate", "i1", 200)]
    # §6.4: interrupt_response is on, so the server cancels; the bridge does not.
    assert rig.session.sent("cancel_response") == []
    frames = len(rig.leg.frames)
    await rig.emit(ev.AudioDelta("r1", "i1", tone(300, amp=8000)))   # late audio of that reply
    await rig.tick(5)
    assert all(f.silent for f in rig.leg.frames[frames:])  # nothing of it is played
    await rig.emit(ev.AudioDone("r1", "i1"), ev.TranscriptDone("r1", "i1", TEXT))
    await rig.done("r1", "cancelled", "turn_detected")
    rig.leg.far_end_hangup()
    record = await rig.finish()
    (barge,) = record.barge_ins
    assert (barge.item_id, barge.heard_ms, barge.received_ms, barge.truncated_ms) == (
        "i1", 200, 500, 200)
    assert 280 <= barge.dropped_ms <= 300
    # The agent transcript keeps what was heard (2/5 of the audio -> the first words),
    # and the complete transcript arriving later does not bring the rest back.
    agent = [t for t in record.transcript if t.role == "agent"]
    assert [(t.text, t.truncated) for t in agent] == [("one two three four", True)]


async def test_barge_in_after_the_whole_item_was_heard_keeps_the_text(tmp_path: Path) -> None:
    rig = Rig(make_plan(tmp_path))
    await rig.start()
    await rig.reply("r1", "i1", 100, TEXT, done=True)
    await rig.tick(6)                               # all 100 ms handed to the leg
    await rig.speak_over()          # response still active: the caller talks at its end
    await rig.done("r1", "cancelled", "turn_detected")
    rig.leg.far_end_hangup()
    record = await rig.finish()
    assert all(entry[2] <= 100 for entry in rig.session.sent("truncate"))  # ≤ received
    agent = [t for t in record.transcript if t.role == "agent"]
    assert [(t.text, t.truncated) for t in agent] == [(TEXT, False)]


async def test_after_a_barge_in_the_next_reply_starts_clean(tmp_path: Path) -> None:
    """The flush covers the playout buffer AND the outbound resampler: nothing of the
    interrupted reply (not even the resampler's history) reaches the next one."""
    rig = Rig(make_plan(tmp_path))
    await rig.start()
    await rig.reply("r1", "i1", 500)
    await rig.tick(5)
    await rig.speak_over()
    await rig.done("r1", "cancelled", "turn_detected")
    await rig.emit(ev.SpeechStopped("u1", 2000))
    frames = len(rig.leg.frames)
    # The next reply is digital silence: any non-zero sample is left over from the tone.
    rig.session.response_active = True
    await rig.emit(ev.ResponseCreated("r2"), ev.AudioDelta("r2", "i2", bytes(48 * 200)),
                   ev.AudioDone("r2", "i2"))
    await rig.tick(12)
    out = rig.leg.frames[frames:]
    played = [f for f in out if not f.silent]
    # All of r2 (plus, padded, the few samples the resampler flushes at its end).
    assert len(played) in (10, 11)
    assert all(f.pcm == bytes(len(f.pcm)) for f in played)
    assert rig.call.playout.heard_ms("i2") == 200
    rig.leg.far_end_hangup()
    await rig.finish()


async def test_barge_in_before_any_audio_was_heard_sends_no_truncation(tmp_path: Path) -> None:
    rig = Rig(make_plan(tmp_path))
    await rig.start()
    await rig.reply("r1", "i1", 300, TEXT)
    await rig.speak_over()                             # before the first tick
    await rig.tick(3)
    assert rig.agent_frames() == []
    # docs/realtime-protocol.md §6.3: at 0 ms nothing goes on the wire (the client only trims its
    # history: audio_end_ms 0 is the one value it never sends).
    assert all(ms == 0 for _, _, ms in rig.session.sent("truncate"))
    rig.leg.far_end_hangup()
    record = await rig.finish()
    assert record.barge_ins[0].heard_ms == 0 and record.barge_ins[0].truncated_ms is None


async def test_without_interrupt_response_the_bridge_cancels(tmp_path: Path) -> None:
    rig = Rig(make_plan(tmp_path, interrupt=False))
    await rig.start()
    await rig.reply("r1", "i1", 500)
    await rig.tick(4)
    await rig.speak_over()
    # docs/realtime-protocol.md §6.4: the server will not cancel by itself: the bridge must.
    assert rig.session.kinds().count("cancel_response") == 1
    assert rig.session.sent("truncate") == [("truncate", "i1", 80)]
    rig.leg.far_end_hangup()
    await rig.finish()


async def test_a_dtmf_transfer_interrupts_the_agent_and_cancels(tmp_path: Path) -> None:
    """Our own interruption (DTMF): cancel even though the server would on speech."""
    rig = Rig(make_plan(tmp_path))
    await rig.start()
    await rig.reply("r1", "i1", 500)
    await rig.tick(6)
    rig.leg.press("0")
    await settle()
    record = await rig.finish()
    kinds = rig.session.kinds()
    assert kinds.count("cancel_response") == 1
    assert rig.session.sent("truncate") == [("truncate", "i1", 120)]
    assert rig.leg.transfers == [OPERATOR]
    assert record.end_reason == "transferred" and record.transferred_to == "operator"
    assert len(rig.agent_frames()) == 6


# ---------------------------------------------------------------------------- tools
def counting_tools() -> tuple[dict[str, Tool], dict[str, Any]]:
    state: dict[str, Any] = {"runs": [], "gate": asyncio.Event()}

    async def slow_lookup(order: str) -> dict[str, str]:
        """Look an order up (waits for the test to let it finish)."""
        state["runs"].append(("slow_lookup", order))
        await state["gate"].wait()
        return {"order": order, "status": "shipped"}

    async def quick_lookup(order: str) -> dict[str, str]:
        """Look an order up at once."""
        state["runs"].append(("quick_lookup", order))
        return {"order": order, "status": "packed"}

    return ({"slow_lookup": tool_from_function(slow_lookup, timeout_s=30),
             "quick_lookup": tool_from_function(quick_lookup)}, state)


async def test_two_calls_of_one_response_then_exactly_one_response_create(
        tmp_path: Path) -> None:
    tools, state = counting_tools()
    plan = make_plan(tmp_path, tools=("slow_lookup", "quick_lookup", "hang_up"),
                     extra_tools=tools)
    rig = Rig(plan)
    await rig.start()
    rig.session.response_active = True
    await rig.emit(ev.ResponseCreated("r1"),
                   ev.FunctionCall("r1", "f1", "call_a", "slow_lookup", '{"order": "1"}'),
                   ev.FunctionCall("r1", "f2", "call_b", "quick_lookup", '{"order": "2"}'))
    await settle()
    assert state["runs"] == []                 # not before the response is done
    await rig.done("r1")
    # Both run at once; the quick one answers while the slow one is still running ...
    assert sorted(state["runs"]) == [("quick_lookup", "2"), ("slow_lookup", "1")]
    assert rig.session.kinds()[-1:] == ["tool_output"]
    assert rig.session.sent("create_response") == []   # ... and no response.create yet
    state["gate"].set()
    await settle()
    # docs/realtime-protocol.md §5.4: one response.create, after all outputs of the response.
    outputs = rig.session.sent("tool_output")
    assert [o[1] for o in outputs] == ["call_b", "call_a"]
    assert json.loads(outputs[1][2]) == {"order": "1", "status": "shipped"}
    assert rig.session.kinds()[-3:] == ["tool_output", "tool_output", "create_response"]
    assert rig.session.kinds().count("create_response") == 1
    rig.leg.far_end_hangup()
    record = await rig.finish()
    assert sorted((t.name, t.ok) for t in record.tool_calls) == [
        ("quick_lookup", True), ("slow_lookup", True)]


@pytest.mark.parametrize("how", ["cancelled", "failed", "barged_in"])
async def test_tools_of_a_response_that_did_not_complete_never_run(tmp_path: Path,
                                                                   how: str) -> None:
    tools, state = counting_tools()
    plan = make_plan(tmp_path, tools=("quick_lookup", "transfer_call"), extra_tools=tools)
    rig = Rig(plan)
    await rig.start()
    await rig.reply("r1", "i1", 400)
    await rig.tick(3)
    await rig.emit(ev.FunctionCall("r1", "f1", "call_a", "quick_lookup", '{"order": "1"}'),
                   ev.FunctionCall("r1", "f2", "call_b", "transfer_call",
                                   '{"target": "sales"}'))
    if how == "barged_in":
        await rig.speak_over()
        await rig.done("r1", "completed")      # raced the barge-in: still not run
    else:
        await rig.done("r1", how)
    await rig.tick(30)
    assert state["runs"] == []
    assert rig.leg.transfers == []
    assert rig.session.sent("tool_output") == []
    assert rig.session.sent("create_response") == []
    assert not rig.call.ended
    rig.leg.far_end_hangup()
    record = await rig.finish()
    assert record.tool_calls == []


async def test_a_failed_transfer_tells_the_model_and_the_call_goes_on(tmp_path: Path) -> None:
    rig = Rig(make_plan(tmp_path),
              transfer_outcome=TransferOutcome(ok=False, status=486, detail="busy here"))
    await rig.start()
    await rig.reply("r1", "i1", 200, "Transferring you to sales.", done=True)
    await rig.emit(ev.FunctionCall("r1", "f1", "call_t", "transfer_call",
                                   '{"target": "sales"}'))
    await rig.done("r1")
    await rig.tick(12)                          # the last words play, then the REFER
    assert rig.leg.transfers == [SALES]
    (output,) = rig.session.sent("tool_output")
    error = json.loads(output[2])["error"]
    assert (error["type"], error["status"]) == ("transfer_failed", 486)
    assert rig.session.kinds()[-1] == "create_response"     # the model answers the caller
    assert not rig.call.ended and not rig.leg.closed.is_set()
    await rig.reply("r2", "i2", 200, "Sales is busy; can I help?", done=True)
    await rig.done("r2")
    await rig.tick(12)
    rig.leg.far_end_hangup()
    record = await rig.finish()
    assert record.end_reason == "caller_hangup"
    assert record.transferred_to is None
    assert record.errors == ["transfer to sales failed: 486"]
    assert [(t.name, t.ok, t.error) for t in record.tool_calls] == [
        ("transfer_call", False, "transfer_failed")]


async def test_a_failed_dtmf_transfer_tells_the_model(tmp_path: Path) -> None:
    rig = Rig(make_plan(tmp_path),
              transfer_outcome=TransferOutcome(ok=False, status=503, detail="unavailable"))
    await rig.start()
    await rig.reply("r1", "i1", 400)
    await rig.tick(5)
    rig.leg.press("0")
    await rig.tick(5)
    assert rig.leg.transfers == [OPERATOR]
    assert not rig.call.ended
    told = [entry for entry in rig.session.log
            if entry[0] in ("user_text", "create_response")
            and "transfer" in str(entry[1] or "").lower()]
    rig.leg.far_end_hangup()
    await rig.finish()
    assert told, rig.session.log


async def test_a_slow_dtmf_transfer_is_not_dead_air(tmp_path: Path) -> None:
    rig = Rig(make_plan(tmp_path),
              transfer_outcome=TransferOutcome(ok=False, status=408, detail="timeout"))
    rig.leg.transfer_delay_s = 0.5          # real seconds; the media clock is virtual
    await rig.start()
    rig.leg.press("0")
    await settle()
    frames = len(rig.leg.frames)
    await rig.tick(110)                     # 2.2 s of media while the REFER is pending
    pending = rig.leg.frames[frames:]
    await rig.until(lambda: rig.call.record.errors != [])
    rig.leg.far_end_hangup()
    await rig.finish()
    assert rig.leg.transfers == [OPERATOR]
    assert any(not f.silent for f in pending), "2.2 s of silence during the transfer"


async def test_hang_up_waits_for_the_last_words_to_play(tmp_path: Path) -> None:
    rig = Rig(make_plan(tmp_path))
    await rig.start()
    await rig.reply("r1", "i1", 300, "Goodbye.", done=True)
    await rig.emit(ev.FunctionCall("r1", "f1", "call_h", "hang_up", '{"reason": "done"}'))
    await rig.done("r1")
    await rig.tick(8)
    assert not rig.call.ended and rig.leg.hangups == []     # 160 of 300 ms played
    record = await rig.finish()
    assert record.end_reason == "agent_hangup" and record.end_detail == "done"
    assert len(rig.agent_frames()) >= 15                     # all of the goodbye
    assert rig.call.playout.heard_ms("i1") == 300
    assert rig.leg.hangups == ["agent_hangup"]
    assert rig.session.sent("tool_output")                   # the result went back first
    assert rig.session.sent("create_response") == []         # no reply after a hang-up


async def test_a_tool_still_running_when_the_call_ends_is_cancelled(tmp_path: Path) -> None:
    tools, state = counting_tools()
    cancelled = asyncio.Event()

    async def stuck(order: str) -> str:
        """Never answers."""
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return ""

    tools["stuck"] = tool_from_function(stuck, timeout_s=60)
    rig = Rig(make_plan(tmp_path, tools=("stuck",), extra_tools=tools))
    await rig.start()
    rig.session.response_active = True
    await rig.emit(ev.ResponseCreated("r1"),
                   ev.FunctionCall("r1", "f1", "call_s", "stuck", '{"order": "1"}'))
    await rig.done("r1")
    rig.leg.far_end_hangup()
    record = await rig.finish()
    assert cancelled.is_set()
    assert record.end_reason == "caller_hangup"
    assert rig.session.sent("tool_output") == [] and rig.session.closed
