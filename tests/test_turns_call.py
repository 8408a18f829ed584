"""Whole calls where the bridge runs the caller's turn (``[turns]``, bridge.call.turns):
an in-memory leg, the real Realtime client and the emulator over a real WebSocket, on the
process's media clock.

Under ``turn_detection = none`` the server never ends a turn: the bridge's VAD does, with
``input_audio_buffer.commit``, and a ``response.create`` follows. Under server VAD with
``create_response = false`` the server commits but never answers: the hook does. Without
the driver, neither call would ever hear a reply (the first test's control shows it)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from bridge import metrics
from bridge.call.clock import MediaClock
from bridge.call.events import CallEvent, TurnDecided
from bridge.call.leg import LegInfo, Source
from bridge.call.manager import CallManager
from bridge.call.memory import MemoryLeg
from bridge.call.records import CallRecord, MemoryRecordStore
from bridge.dialplans.loader import load_dialplans
from bridge.realtime.config import RealtimeSettings
from bridge.realtime.emulator import Emulator, EmulatorConfig
from bridge.realtime.emulator.record import SessionRecord
from tests.support.audio import speech
from tests.support.realtime_oracle import validate_client_event
from tests.support.waiting import until

PLAN = """
description = "turns test"
tools = ["hang_up"{tools}]

[match]
default = true

[agent]
instructions = "BASE"
audio_format = "pcm16"

[agent.turn_detection]
{td}

[agent.transcription]
model = "whisper-1"

{turns}
"""

HOOKS = '''
from bridge.dialplans.turns import TurnContext

SEEN: list[TurnContext] = []


async def decide(turn: TurnContext) -> bool | str | None:
    SEEN.append(turn)
    if turn.turn == 2:
        return False                # the second turn: stay silent
    return f"HOOK turn {turn.turn}: {turn.transcript}"


async def gate(transcript: str) -> dict[str, object]:
    """Screen the caller's words.

    transcript: what the caller said
    """
    return {"allowed": True, "heard": transcript}
'''

MANUAL = 'type = "none"'
SERVER_NO_REPLY = 'type = "server_vad"\nsilence_duration_ms = 400\ncreate_response = false'


def plans(tmp: Path, td: str, turns: str = "", tools: str = "") -> Path:
    folder = tmp / "plans"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "plan.toml").write_text(PLAN.format(td=td, turns=turns, tools=tools))
    (folder / "turn_hooks.py").write_text(HOOKS)
    return folder


EVENTS: list[CallEvent] = []


async def call(folder: Path, turns: int, *,
               wait_responses: int | None = None) -> tuple[SessionRecord, CallRecord]:
    """One call that speaks ``turns`` phrases (1 s, then 2 s of silence each); returns the
    emulator's session once ``wait_responses`` responses are done (or a little after)."""
    clock = MediaClock()
    async with Emulator(EmulatorConfig(greeting_ms=300)) as emu:
        target = RealtimeSettings.from_env({}).target(emulator_url=emu.url)
        manager = CallManager(load_dialplans(folder), target, MemoryRecordStore(), clock)
        EVENTS.clear()
        manager.add_listener(EVENTS.append)
        leg = MemoryLeg(LegInfo(call_id="leg-turns", source=Source.SIP, caller="+15550123",
                                called="100"), clock=clock)
        task = asyncio.create_task(manager.handle(leg))
        await until(lambda: bool(emu.record.sessions), 10, clock=clock)
        session = emu.record.sessions[0]
        await until(lambda: session.session_updates >= 1, 10, clock=clock)
        for _ in range(turns):
            leg.play(speech(1000))
            leg.play_silence(2000)
        await until(lambda: leg.script_ms == 0, 30, clock=clock)
        if wait_responses is not None:
            await until(lambda: sum(r.status != "in_progress" for r in session.responses)
                        >= wait_responses, 15, clock=clock)
        await asyncio.sleep(1.0)            # time enough for a reply that should not come
        leg.far_end_hangup()
        record = await asyncio.wait_for(task, 10)
    return session, record


def commits(session: SessionRecord) -> int:
    return session.received_types.count("input_audio_buffer.commit")


async def test_turn_detection_none_the_bridge_ends_the_turn_and_answers(
        tmp_path: Path) -> None:
    session, record = await call(plans(tmp_path, MANUAL), 2, wait_responses=2)
    assert commits(session) == 2, session.received_types
    assert session.turns == 2
    answered = [r for r in session.responses if r.trigger == "client"]
    assert len(answered) == 2 and all(r.status == "completed" for r in answered)
    assert answered[0].instructions is None           # hook "answer": a plain reply
    # what the bridge sent to run the turn is valid for the openai package's models
    sent = [e for e in session.received
            if e["type"] in ("input_audio_buffer.commit", "response.create")]
    assert len(sent) >= 4
    for event in sent:
        validate_client_event(event, session.dialect)
    assert record.responses >= 2 and not record.errors, record


async def test_without_the_driver_a_manual_turn_is_never_answered(tmp_path: Path) -> None:
    """The control: a plan whose [turns] cannot listen (min_speech_ms longer than any
    phrase) never commits, so the same caller hears nothing, as before [turns]."""
    folder = plans(tmp_path, MANUAL, "[turns]\nmin_speech_ms = 2000")
    session, _ = await call(folder, 1)
    assert commits(session) == 0 and session.responses == []


async def test_create_response_false_the_python_hook_decides(tmp_path: Path) -> None:
    folder = plans(tmp_path, SERVER_NO_REPLY, '[turns]\nhook = "turn_hooks:decide"')
    before = metrics.TURNS_DECIDED.labels(hook="python", outcome="silent")._value.get()
    session, _ = await call(folder, 3, wait_responses=2)
    assert commits(session) == 0 and session.turns == 3     # the server ended the turns
    answered = [r for r in session.responses if r.trigger == "client"]
    assert [r.instructions.split("\n\n")[0] if r.instructions else None
            for r in answered] == ["BASE", "BASE"], answered
    texts = [r.instructions or "" for r in answered]
    # the hook saw the caller's transcript (the emulator's stand-in for one)
    assert "HOOK turn 1: (" in texts[0] and "s of caller audio" in texts[0], texts
    assert "HOOK turn 3" in texts[1]                 # turn 2 was kept silent
    for event in session.received:
        if event["type"] == "response.create":
            validate_client_event(event, session.dialect)
    after = metrics.TURNS_DECIDED.labels(hook="python", outcome="silent")._value.get()
    assert after == before + 1
    # the dashboard and a browser caller see each decision as a call.turn event
    decided = [e.to_json() for e in EVENTS if isinstance(e, TurnDecided)]
    assert [(e["type"], e["turn"], e["hook"], e["outcome"]) for e in decided] == [
        ("call.turn", 1, "python", "answered"), ("call.turn", 2, "python", "silent"),
        ("call.turn", 3, "python", "answered")]


async def test_instructions_hook_and_a_tool_first(tmp_path: Path) -> None:
    folder = plans(tmp_path / "a", SERVER_NO_REPLY,
                   '[turns]\nhook = "instructions"\ninstructions = "Be brief."')
    session, _ = await call(folder, 1, wait_responses=1)
    [reply] = [r for r in session.responses if r.trigger == "client"]
    assert reply.instructions == "BASE\n\nBe brief."

    tool_plan = ('[turns]\nhook = "gate"\n\n[[python]]\nfunction = "turn_hooks:gate"\n')
    folder = plans(tmp_path / "b", SERVER_NO_REPLY, tool_plan, tools=', "gate"')
    session, _ = await call(folder, 1, wait_responses=1)
    [reply] = [r for r in session.responses if r.trigger == "client"]
    text: Any = reply.instructions
    assert "the gate tool was run" in text and '"allowed": true' in text, text
    assert "caller audio" in text                    # the transcript went to the tool
