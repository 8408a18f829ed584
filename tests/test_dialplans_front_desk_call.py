"""The packaged ``front-desk`` dialplan, end to end.

A call to 2000 goes through the CallManager (which must pick ``front-desk``), the real
Realtime client and the emulator over a real socket. The emulator's script has the model
call ``opening_hours`` (the operator's Python tool beside the plan) and ``order_status``
(the plan's webhook, pointed at an order service on loopback with its token taken from
the environment), and the caller then presses 0, the plan's key for the operator.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from bridge.call.call import Call
from bridge.call.clock import MediaClock
from bridge.call.leg import LegInfo, Source
from bridge.call.manager import CallManager, client_factory
from bridge.call.memory import MemoryLeg
from bridge.call.records import SqliteRecordStore
from bridge.dialplans.loader import PACKAGED_DIR, load_dialplans
from bridge.realtime.config import RealtimeSettings
from bridge.realtime.emulator import Emulator, EmulatorConfig
from bridge.realtime.recovery import RecoveryPolicy
from tests.support.audio import speech
from tests.support.call_harness import emu_wait, session
from tests.support.order_api import SECRET, OrderApi, running_order_api
from tests.support.waiting import until

OPERATOR = "sip:operator@pbx.example.com"

SCRIPT = """
speech = "tone"   # 60 ms of tone per character: short lines keep the call short

[[rule]]
on_turn = 1
call = "opening_hours"

[[rule]]
on_tool_output = "opening_hours"
say = "Open Monday to Friday."

[[rule]]
on_turn = 2
call = "order_status"
args = { order_id = "20250001" }

[[rule]]
on_tool_output = "order_status"
say = "It has shipped."
"""


@pytest.fixture
async def orders() -> AsyncIterator[OrderApi]:
    async with running_order_api() as server:
        yield server


async def test_front_desk_call_hours_order_status_and_zero_for_the_operator(
        tmp_path: Path, orders: OrderApi) -> None:
    plans = load_dialplans(PACKAGED_DIR, env={"ORDER_API_URL": orders.url,
                                              "ORDERS_TOKEN": SECRET})
    script = tmp_path / "front-desk-script.toml"
    script.write_text(SCRIPT)
    store = SqliteRecordStore(tmp_path / "calls.sqlite")
    clock = MediaClock()
    leg = MemoryLeg(LegInfo(call_id="leg-fd", source=Source.SIP, caller="+15557770000",
                            called="2000"), clock=clock)

    def agent_frames() -> int:
        return sum(1 for f in leg.frames if not f.silent)

    async with Emulator(EmulatorConfig(script=script, greeting_ms=400)) as emu:
        target = RealtimeSettings.from_env({}).target(emulator_url=emu.url)
        manager = CallManager(plans, client_factory(
            target, recovery=RecoveryPolicy(budget_s=0, connect_attempts=1)), store, clock)
        task = asyncio.create_task(manager.handle(leg))
        await until(lambda: manager.live == 1, 15.0, clock=clock)
        (call,) = manager.calls.values()

        async def said(call: Call, words: str) -> None:
            """The bridge has the whole line (its transcript comes after all its audio)."""
            await until(lambda: any(
                words in t.text for t in call.record.transcript if t.role == "agent"), 20,
                clock=clock)

        async def quiet_after(frames: int) -> None:
            """Wait for the agent to have said something new and finished saying it."""
            await until(lambda: agent_frames() > frames and not call.playout.playing, 20,
                        clock=clock)

        await quiet_after(0)                                  # the greeting
        # Turn 1: "are you open?" -> opening_hours -> the answer is spoken.
        before = agent_frames()
        leg.play(speech(700))
        leg.play_silence(900)
        await emu_wait(emu, lambda r: len(r.tool_outputs) >= 1, 20)
        await said(call, "Monday")
        await quiet_after(before)
        # Turn 2: "where is my order?" -> order_status over HTTP -> the answer is spoken.
        before = agent_frames()
        leg.play(speech(700))
        leg.play_silence(900)
        await emu_wait(emu, lambda r: len(r.tool_outputs) >= 2, 20)
        await said(call, "shipped")
        await quiet_after(before)
        # The caller presses 0: the plan's DTMF action transfers to the operator.
        leg.press("0")
        record = await asyncio.wait_for(task, 20)
    s = session(emu)
    await store.close()

    # The manager picked the front desk for 2000, and the session was set up from it.
    assert record.dialplan == "front-desk"
    assert "Example Corp" in s.config["instructions"]
    tools = {t["name"]: t for t in s.config["tools"]}
    assert list(tools) == ["transfer_call", "hang_up", "opening_hours", "order_status"]
    assert tools["transfer_call"]["parameters"]["properties"]["target"]["enum"] == [
        "sales", "support", "billing", "operator"]
    assert "timezone" not in tools["opening_hours"]["parameters"]["properties"]  # bound

    # The tools ran and their results went back to the model.
    outputs = {name: json.loads(out) for name, (_, out) in zip(
        ("opening_hours", "order_status"), emu.record.tool_outputs, strict=True)}
    assert isinstance(outputs["opening_hours"]["open_now"], bool)
    assert outputs["opening_hours"]["timezone"] == "America/New_York"
    assert outputs["opening_hours"]["opening_hours"] == "Mon-Fri 08:30-18:00; Sat 09:00-13:00"
    assert outputs["order_status"] == {"status": "shipped", "data.eta": "2025-03-05"}
    # The webhook reached the local order service once, with the token from the environment.
    assert [(r["method"], r["raw_path"], r["auth"]) for r in orders.seen] == [
        ("GET", "/orders/20250001", f"Bearer {SECRET}")]

    # 0 went to the operator target, and nothing else was transferred.
    assert leg.transfers == [OPERATOR]
    assert record.end_reason == "transferred" and record.transferred_to == "operator"
    assert [(d.digit, d.action) for d in record.dtmf] == [("0", "transfer")]

    # The record holds the conversation and the tool calls.
    assert [(t.name, t.ok) for t in record.tool_calls] == [
        ("opening_hours", True), ("order_status", True)]
    assert json.loads(record.tool_calls[1].arguments) == {"order_id": "20250001"}
    agent: list[Any] = [t.text for t in record.transcript if t.role == "agent"]
    assert any("Monday" in t for t in agent) and any("shipped" in t for t in agent)
    assert sum(t.role == "caller" for t in record.transcript) == 2      # transcription on
    assert record.errors == [] and record.fallback is None

    # Caller audio went up in 20 ms appends (PCM16 at 24 kHz, the plan's format).
    appends = s.received_types.count("input_audio_buffer.append")
    assert appends > 50
    assert s.appended_audio_ms / appends == pytest.approx(20, abs=0.5)
