"""A whole call against the Realtime emulator: an in-memory leg, the real Realtime client
and the emulator over a real socket, on the process's real-time media clock.

``make_plans`` writes the dialplan these calls use; ``Harness`` runs one call and waits on
it on the call's clock ticks; ``emu_wait`` and ``session`` read the emulator's record.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bridge.call.call import Call
from bridge.call.clock import MediaClock
from bridge.call.leg import LegInfo, Source
from bridge.call.manager import client_factory
from bridge.call.memory import MemoryLeg
from bridge.call.records import CallRecord
from bridge.dialplans.loader import load_dialplans
from bridge.dialplans.plan import Dialplan, DialplanSet
from bridge.dialplans.tools import Tool
from bridge.realtime.config import RealtimeSettings
from bridge.realtime.emulator import Emulator
from bridge.realtime.emulator.record import EmulatorRecord
from bridge.realtime.recovery import RecoveryPolicy
from tests.support.audio import speech
from tests.support.waiting import until

SALES = "sip:sales@pbx.example.com"
OPERATOR = "sip:operator@pbx.example.com"

PLAN = """
description = "test plan"
tools = {tools}

[match]
default = true

[agent]
instructions = "test agent"
audio_format = "{audio_format}"
{greeting}

[agent.turn_detection]
type = "server_vad"
silence_duration_ms = 300

[agent.transcription]
model = "whisper-1"

[targets]
sales = {{ uri = "{sales}", description = "new orders" }}
operator = {{ uri = "{operator}", description = "a person" }}

[limits]
max_call_s = {max_call_s}
{silence}

[dtmf]
to_model = true

[dtmf.actions]
"0" = {{ action = "transfer", target = "operator" }}
"9" = {{ action = "say", text = "We are open nine to five." }}

[fallback]
announcement = "{announcement}"
action = "transfer"
target = "operator"
"""


def make_plans(tmp: Path, *, tools: tuple[str, ...] = ("transfer_call", "hang_up"),
               greeting: bool = True, max_call_s: float = 120,
               silence_s: float | None = None,
               extra_tools: dict[str, Tool] | None = None,
               announcement: str = "unavailable-transfer",
               audio_format: str = "pcm16") -> DialplanSet:
    folder = tmp / "plans"
    folder.mkdir(exist_ok=True)
    text = PLAN.format(
        tools=json.dumps(list(tools)),
        greeting='greeting = "Greet the caller."' if greeting else "",
        sales=SALES, operator=OPERATOR, max_call_s=max_call_s,
        silence=f"caller_silence_s = {silence_s}" if silence_s else "",
        announcement=announcement, audio_format=audio_format)
    (folder / "test.toml").write_text(text)
    return load_dialplans(folder, tools=extra_tools)


#: no reconnect and one connect attempt: a test decides when the upstream comes back
NO_RECOVERY = RecoveryPolicy(budget_s=0, connect_attempts=1)


class Harness:
    """One call on a MemoryLeg against an emulator, with helpers to wait on things."""

    def __init__(self, emu_url: str, plan: Dialplan, store: Any, *,
                 client_options: dict[str, Any] | None = None, idle_silence: bool = True,
                 **call_options: Any) -> None:
        self.clock = MediaClock()
        self.leg = MemoryLeg(LegInfo(call_id="leg-1", source=Source.MEMORY,
                                     caller="+15550123", called="100"), clock=self.clock,
                             idle_silence=idle_silence)
        target = RealtimeSettings.from_env({}).target(emulator_url=emu_url)
        opts = {"recovery": NO_RECOVERY, **(client_options or {})}
        self.call = Call(self.leg, plan, client_factory(target, **opts), self.clock, store,
                         **call_options)
        self.task: asyncio.Task[CallRecord] | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self.call.run())

    async def until(self, cond: Callable[[], bool], limit_s: float = 15.0) -> None:
        """Wait for ``cond``, checked on the call's media clock ticks."""
        await until(cond, limit_s, clock=self.clock)

    def agent_frames(self) -> int:
        return sum(1 for f in self.leg.frames if not f.silent)

    async def finish(self) -> CallRecord:
        assert self.task is not None
        async with asyncio.timeout(20):
            return await self.task

    async def speak(self, ms: int, then_silence_ms: int = 800) -> None:
        self.leg.play(speech(ms))
        self.leg.play_silence(then_silence_ms)


async def emu_wait(emu: Emulator, pred: Callable[[EmulatorRecord], bool],
                   limit_s: float = 15.0) -> None:
    await emu.wait_for(pred, limit_s)


def session(emu: Emulator) -> Any:
    s = emu.record.last
    assert s is not None
    return s
