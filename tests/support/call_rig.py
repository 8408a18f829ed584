"""A call on a virtual media clock against a scripted Realtime session.

``Rig`` runs a ``Call`` on a ``MemoryLeg`` and a ``ScriptedSession`` (the ``RealtimeSession``
the call talks to, driven by the test: events in, every request recorded) on a media clock
with a virtual scheduler: time moves only when the test ticks it, so "10 ticks = 200 ms
handed to the leg" is exact and nothing depends on how loaded the machine is.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from bridge.call.call import Call
from bridge.call.clock import MediaClock, VirtualScheduler
from bridge.call.leg import LegInfo, Source, TransferOutcome
from bridge.call.memory import MemoryLeg
from bridge.call.records import CallRecord, MemoryRecordStore, RecordStore
from bridge.dialplans.loader import load_dialplans
from bridge.dialplans.plan import Dialplan
from bridge.dialplans.tools import Tool
from bridge.realtime import events as ev
from tests.support.audio import tone
from tests.support.waiting import until

SALES = "sip:sales@pbx.example.com"
OPERATOR = "sip:operator@pbx.example.com"

PLAN = """
tools = {tools}

[match]
default = true

[agent]
instructions = "rig plan"
audio_format = "{audio_format}"
{greeting}

[agent.turn_detection]
type = "server_vad"
interrupt_response = {interrupt}

[targets]
sales = {{ uri = "{sales}" }}
operator = {{ uri = "{operator}" }}

[limits]
max_call_s = {max_call_s}
{silence}

[dtmf]
to_model = true

[dtmf.actions]
"0" = {{ action = "transfer", target = "operator" }}
"9" = {{ action = "hangup" }}

[fallback]
tones = "440:100,0:60,440:100"
action = "{fallback_action}"
{fallback_target}
"""


def make_plan(tmp: Path, *, tools: tuple[str, ...] = ("transfer_call", "hang_up"),
              extra_tools: dict[str, Tool] | None = None, greeting: str | None = None,
              interrupt: bool = True, audio_format: str = "pcm16", max_call_s: float = 600,
              silence_s: float | None = None, fallback: str = "hangup") -> Dialplan:
    folder = tmp / f"plan{len(list(tmp.glob('plan*')))}"
    folder.mkdir()
    (folder / "rig.toml").write_text(PLAN.format(
        tools=json.dumps(list(tools)), audio_format=audio_format,
        greeting=f'greeting = "{greeting}"' if greeting else "",
        interrupt=str(interrupt).lower(), sales=SALES, operator=OPERATOR,
        max_call_s=max_call_s,
        silence=f"caller_silence_s = {silence_s}" if silence_s is not None else "",
        fallback_action=fallback,
        fallback_target='target = "operator"' if fallback == "transfer" else ""))
    return load_dialplans(folder, tools=extra_tools).default


class ScriptedSession:
    """A ``RealtimeSession`` driven by the test: ``emit`` events, read ``log``."""

    def __init__(self) -> None:
        self._events: asyncio.Queue[ev.Event | None] = asyncio.Queue()
        self.log: list[tuple[Any, ...]] = []
        self.appended: list[bytes] = []
        self.response_active = False
        self.closed = False

    # -- RealtimeSession ------------------------------------------------------------------
    async def connect(self) -> None:
        self.log.append(("connect",))

    async def events(self) -> AsyncIterator[ev.Event]:
        while True:
            event = await self._events.get()
            if event is None:
                return
            yield event

    def append_audio(self, data: bytes) -> None:
        if len(self.appended) < 5000:
            self.appended.append(data)

    async def create_response(self, instructions: str | None = None) -> None:
        self.log.append(("create_response", instructions))

    async def cancel_response(self) -> None:
        self.log.append(("cancel_response",))

    async def truncate(self, item_id: str, audio_end_ms: int) -> None:
        self.log.append(("truncate", item_id, audio_end_ms))

    async def send_tool_output(self, call_id: str, output: str) -> None:
        self.log.append(("tool_output", call_id, output))

    async def add_user_text(self, text: str) -> None:
        self.log.append(("user_text", text))

    async def clear_input_audio(self) -> None:
        self.log.append(("clear_input",))

    async def commit_input_audio(self) -> None:
        self.log.append(("commit_input",))

    async def create_out_of_band(self, instructions: str, metadata: dict[str, str],
                                 item_ids: list[str] | tuple[str, ...] = ()) -> bool:
        self.log.append(("out_of_band", instructions, dict(metadata), list(item_ids)))
        return True

    def cancel_out_of_band(self, response_id: str) -> bool:
        self.log.append(("cancel_out_of_band", response_id))
        return True

    async def delete_item(self, item_id: str) -> bool:
        self.log.append(("delete", item_id))
        return True

    def set_playout_active(self, active: bool) -> None:
        pass

    async def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._events.put_nowait(None)

    # -- test side --------------------------------------------------------------------------
    def emit(self, *events: ev.Event) -> None:
        for event in events:
            self._events.put_nowait(event)

    def sent(self, kind: str) -> list[tuple[Any, ...]]:
        return [entry for entry in self.log if entry[0] == kind]

    def kinds(self) -> list[str]:
        return [str(entry[0]) for entry in self.log]


async def settle(rounds: int = 50) -> None:
    """Let every ready task run (nothing here waits on real I/O)."""
    for _ in range(rounds):
        await asyncio.sleep(0)


class Rig:
    """A call on a MemoryLeg and a ScriptedSession, on a virtual media clock."""

    def __init__(self, plan: Dialplan, *, store: RecordStore | None = None,
                 transfer_outcome: TransferOutcome | None = None,
                 idle_silence: bool = True,
                 shared: tuple[VirtualScheduler, MediaClock] | None = None,
                 **call_options: Any) -> None:
        if shared is None:
            sched = VirtualScheduler(start=1000.0)
            shared = (sched, MediaClock(scheduler=sched))
        self.sched, self.clock = shared
        self.leg = MemoryLeg(LegInfo(call_id="leg-r", source=Source.MEMORY,
                                     caller="+15550123", called="100"),
                             clock=self.clock, transfer_outcome=transfer_outcome,
                             idle_silence=idle_silence)
        self.session = ScriptedSession()
        self.store: RecordStore = store or MemoryRecordStore()
        self.call = Call(self.leg, plan, lambda _profile, _log: self.session, self.clock,
                         self.store, drain_timeout_s=30.0, **call_options)
        self.task: asyncio.Task[CallRecord] | None = None

    async def start(self) -> None:
        self.task = asyncio.create_task(self.call.run())
        await self.until(lambda: self.call.record.connected_at is not None)

    async def until(self, cond: Callable[[], bool], limit_s: float = 10.0) -> None:
        """Wait for ``cond`` (``waiting.until``: a few loop rounds, then short real sleeps
        for a store's thread or a loop timer; the virtual clock does not move)."""
        await until(cond, limit_s)

    async def tick(self, n: int = 1) -> None:
        for _ in range(n):
            self.sched.advance(0.020)
            await settle(5)
        await settle()

    async def emit(self, *events: ev.Event) -> None:
        self.session.emit(*events)
        await settle()

    def agent_frames(self) -> list[bytes]:
        return [f.pcm for f in self.leg.frames if not f.silent]

    async def finish(self) -> CallRecord:
        assert self.task is not None
        for _ in range(200):
            if self.task.done():
                break
            await self.tick()
        async with asyncio.timeout(10):
            return await self.task

    async def speak_over(self, item: str = "u1") -> None:
        await self.emit(ev.SpeechStarted(item, 1000))

    async def reply(self, response: str, item: str, ms: int, text: str = "",
                    done: bool = False) -> None:
        """A response starts streaming ``ms`` of audio (faster than real time)."""
        self.session.response_active = True
        events: list[ev.Event] = [ev.ResponseCreated(response),
                                  ev.AudioDelta(response, item, tone(ms, amp=8000))]
        if text:
            events.append(ev.TranscriptDelta(response, item, text))
        if done:
            events.append(ev.AudioDone(response, item))
            if text:
                events.append(ev.TranscriptDone(response, item, text))
        await self.emit(*events)

    async def done(self, response: str, status: str = "completed",
                   reason: str | None = None) -> None:
        self.session.response_active = False
        await self.emit(ev.ResponseDone(response, status, reason, None, None))
