"""A local Realtime server: the bridge's embedded default upstream and every test's fixture.

It speaks the GA Realtime protocol (and the older preview dialect on the preview path) over
a real WebSocket, with energy-based server VAD, an echo agent that plays each caller turn
back, optional scripted behaviour (``script.py`` documents the file format), the real
service's answers to bad events, and a record of everything it saw for tests to query::

    async with Emulator(EmulatorConfig(script="rules.toml")) as emu:
        ...connect to f"{emu.url}/openai/v1/realtime?model=gpt-realtime"...
        await emu.wait_for(lambda rec: rec.last is not None and rec.last.turns >= 1, 5.0)
        await emu.drop(1006)

Modules: ``vad`` (sans-I/O energy VAD), ``session`` (sans-I/O session core) and its parts
``input_audio`` (input buffer, turn detection), ``conversation`` (items), ``responses``
(the paced response generator) and ``outbox`` (ids, events, errors), ``dialect``
(session validation, GA/preview shapes), ``script`` (rules), ``audio`` (formats),
``speech`` (espeak-ng), ``record`` (what tests query), ``server`` (the asyncio adapter),
``cli`` (``voicebridge emulator``).
"""

from bridge.realtime.emulator.record import (
    AssistantItemRecord,
    EmulatorRecord,
    ResponseRecord,
    SessionRecord,
    Truncation,
    UserItemRecord,
)
from bridge.realtime.emulator.script import Rule, Script, load_script, parse_script
from bridge.realtime.emulator.server import Emulator, EmulatorConfig

__all__ = [
    "AssistantItemRecord",
    "Emulator",
    "EmulatorConfig",
    "EmulatorRecord",
    "ResponseRecord",
    "Rule",
    "Script",
    "SessionRecord",
    "Truncation",
    "UserItemRecord",
    "load_script",
    "parse_script",
]
