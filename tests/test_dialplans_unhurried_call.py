"""The shipped ``unhurried`` plan over a whole call: semantic turn detection with low
eagerness keeps a caller's mid-sentence pause inside one turn, where the default plan's
server VAD (500 ms of silence) splits it in two.

Whole calls through the call manager with the shipped dialplans, an in-memory leg and the
emulator over a real WebSocket; the emulator stands in for semantic VAD with a silence
that follows the eagerness (low: 1.5 s)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from bridge.call.clock import MediaClock
from bridge.call.leg import LegInfo, Source
from bridge.call.manager import CallManager
from bridge.call.memory import MemoryLeg
from bridge.call.records import MemoryRecordStore
from bridge.dialplans.loader import load_dialplans
from bridge.realtime.config import RealtimeSettings
from bridge.realtime.emulator import Emulator, EmulatorConfig
from tests.support.audio import speech
from tests.support.waiting import until

PLANS = Path(__file__).resolve().parent.parent / "dialplans" / "plans"


async def call_with_a_pause(called: str) -> tuple[int, dict[str, object], str]:
    """Call ``called``, say two phrases with 900 ms between them, then wait: the turns the
    upstream heard, its turn-detection settings, and the plan that answered."""
    clock = MediaClock()
    async with Emulator(EmulatorConfig(greeting_ms=300)) as emu:
        target = RealtimeSettings.from_env({}).target(emulator_url=emu.url)
        manager = CallManager(load_dialplans(PLANS), target, MemoryRecordStore(), clock)
        leg = MemoryLeg(LegInfo(call_id=f"leg-{called}", source=Source.SIP,
                                caller="+15550123", called=called), clock=clock)
        task = asyncio.create_task(manager.handle(leg))
        await until(lambda: sum(not f.silent for f in leg.frames) >= 15, 10, clock=clock)
        await until(lambda: not any(c.playout.playing for c in manager.calls.values()), 10,
                    clock=clock)
        leg.play(speech(600))
        leg.play_silence(900)                # a pause mid-sentence
        leg.play(speech(600))
        leg.play_silence(3000)
        session = emu.record.sessions[0]
        await until(lambda: session.turns >= 1 and len(session.responses) >= 2, 15,
                    clock=clock)
        await asyncio.sleep(2.0)             # time enough for a second turn, if any
        update = next(e for e in session.received if e["type"] == "session.update")
        leg.far_end_hangup()
        record = await asyncio.wait_for(task, 10)
    turn_detection = update["session"]["audio"]["input"]["turn_detection"]
    return session.turns, turn_detection, record.dialplan


async def test_low_eagerness_keeps_a_paused_sentence_in_one_turn() -> None:
    turns, td, plan = await call_with_a_pause("3000")
    assert plan == "unhurried"
    assert td["type"] == "semantic_vad" and td["eagerness"] == "low"
    assert turns == 1


async def test_the_default_plan_splits_the_same_sentence_at_the_pause() -> None:
    turns, td, plan = await call_with_a_pause("100")
    assert plan == "echo"
    assert td["type"] == "server_vad"
    assert turns == 2
