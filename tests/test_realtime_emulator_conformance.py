"""Every event the emulator emits validates against the openai package's models.

GA paths against ``openai.types.realtime.RealtimeServerEvent``, the preview path against
``openai.types.beta.realtime.RealtimeServerEvent``, and strictly: no field the models do
not declare (see ``assert_conforms``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bridge.realtime.emulator import Emulator, EmulatorConfig
from tests.support.audio import silence, tone
from tests.support.emulator_client import GA_PATH, OPENAI_PATH, PREVIEW_PATH, RawClient
from tests.support.realtime_oracle import assert_conforms

SCRIPT = """
speech = "tone"

[[rule]]
on_turn = 2
say = "Let me look that up."
call = "lookup"
args = { account = "4711" }

[[rule]]
on_tool_output = "lookup"
say = "Your balance is fine."
"""

GA_TYPES = {
    "session.created", "session.updated", "input_audio_buffer.speech_started",
    "input_audio_buffer.speech_stopped", "input_audio_buffer.committed",
    "conversation.item.added", "conversation.item.done",
    "conversation.item.input_audio_transcription.completed", "response.created",
    "response.output_item.added", "response.content_part.added",
    "response.output_audio.delta", "response.output_audio_transcript.delta",
    "response.output_audio.done", "response.output_audio_transcript.done",
    "response.content_part.done", "response.output_item.done", "response.done",
    "response.function_call_arguments.delta", "response.function_call_arguments.done",
    "conversation.item.truncated", "conversation.item.retrieved", "conversation.item.deleted",
    "input_audio_buffer.cleared", "error", "input_audio_buffer.timeout_triggered",
    "response.output_text.delta", "response.output_text.done",
}
PREVIEW_TYPES = {
    "session.created", "session.updated", "input_audio_buffer.speech_started",
    "input_audio_buffer.speech_stopped", "input_audio_buffer.committed",
    "conversation.item.created", "conversation.item.input_audio_transcription.completed",
    "response.created", "response.output_item.added", "response.content_part.added",
    "response.audio.delta", "response.audio_transcript.delta", "response.audio.done",
    "response.audio_transcript.done", "response.content_part.done",
    "response.output_item.done", "response.done", "response.function_call_arguments.delta",
    "response.function_call_arguments.done", "conversation.item.truncated",
    "conversation.item.retrieved", "conversation.item.deleted", "input_audio_buffer.cleared",
    "error", "response.text.delta", "response.text.done",
}


def session_update(dialect: str, idle: bool) -> dict[str, Any]:
    td: dict[str, Any] = {"type": "server_vad", "prefix_padding_ms": 100,
                          "silence_duration_ms": 300}
    tools = [{"type": "function", "name": "lookup", "description": "Look up an account",
              "parameters": {"type": "object", "properties": {"account": {"type": "string"}}}}]
    if dialect == "preview":
        return {"modalities": ["audio", "text"], "voice": "alloy",
                "input_audio_format": "pcm16", "output_audio_format": "pcm16",
                "input_audio_transcription": {"model": "whisper-1"}, "turn_detection": td,
                "tools": tools, "temperature": 0.7}
    if idle:
        td["idle_timeout_ms"] = 5000
    return {"type": "realtime", "output_modalities": ["audio"], "tools": tools,
            "audio": {"input": {"format": {"type": "audio/pcm", "rate": 24000},
                                "transcription": {"model": "gpt-4o-transcribe"},
                                "noise_reduction": {"type": "near_field"},
                                "turn_detection": td},
                      "output": {"format": {"type": "audio/pcm", "rate": 24000},
                                 "voice": "marin"}}}


async def exercise(client: RawClient, dialect: str) -> None:
    """Drive one session through (nearly) every event the emulator can send."""
    await client.read_until("session.created")
    await client.send({"type": "session.update",
                       "session": session_update(dialect, idle=dialect == "ga")})
    await client.read_until("session.updated")
    # turn 1: echoed
    await client.send_audio(silence(300) + tone(800) + silence(500))
    await client.read_until("response.done")
    echo_item = client.of("response.output_item.done")[-1]["item"]["id"]
    await client.send({"type": "conversation.item.truncate", "item_id": echo_item,
                       "content_index": 0, "audio_end_ms": 400})
    await client.read_until("conversation.item.truncated")
    # turn 2: scripted function call, then the client's output and a follow-up
    await client.send_audio(tone(600) + silence(500))
    call = await client.read_until("response.function_call_arguments.done")
    await client.read_until("response.done")
    await client.send({"type": "conversation.item.create", "item": {
        "type": "function_call_output", "call_id": call["call_id"], "output": '{"ok":true}'}})
    await client.send({"type": "response.create"})
    await client.read_until("response.done")
    # a user text item, retrieved and deleted
    await client.send({"type": "conversation.item.create", "item": {
        "type": "message", "role": "user",
        "content": [{"type": "input_text", "text": "caller pressed 4"}]}})
    added = "conversation.item.added" if dialect == "ga" else "conversation.item.created"
    text_item = (await client.read_until(added))["item"]["id"]
    await client.send({"type": "conversation.item.retrieve", "item_id": text_item})
    await client.read_until("conversation.item.retrieved")
    await client.send({"type": "conversation.item.delete", "item_id": text_item})
    await client.read_until("conversation.item.deleted")
    # a barge-in-free cancel, a text-only response, a clear and an error
    await client.send({"type": "response.create",
                       "response": {"output_modalities": ["text"]} if dialect == "ga"
                       else {"modalities": ["text"]}})
    await client.read_until("response.done")
    await client.send({"type": "input_audio_buffer.clear"})
    await client.read_until("input_audio_buffer.cleared")
    await client.send({"type": "no.such.event"})
    await client.read_until("error")
    if dialect == "ga":
        # idle timeout: 5 s of silence after the last reply has played
        await client.send_audio(silence(6000))
        await client.read_until("input_audio_buffer.timeout_triggered")
        await client.read_until("response.done")


@pytest.mark.parametrize("path", [GA_PATH, OPENAI_PATH, PREVIEW_PATH])
async def test_every_event_conforms(path: str, tmp_path: Path) -> None:
    script = tmp_path / "rules.toml"
    script.write_text(SCRIPT)
    async with Emulator(EmulatorConfig(pace=0, script=script)) as emu:
        client = await RawClient.open(emu.url, path)
        try:
            await exercise(client, client.dialect)
        finally:
            await client.close()
    for event in client.events:
        assert_conforms(event, client.dialect)
    seen = {e["type"] for e in client.events}
    wanted = GA_TYPES if client.dialect == "ga" else PREVIEW_TYPES
    assert wanted <= seen, f"not exercised: {wanted - seen}"
    if client.dialect == "preview":
        assert not seen & {"conversation.item.added", "response.output_audio.delta"}
        done = client.of("response.function_call_arguments.done")[0]
        assert "name" not in done  # the preview event carries none
        session = client.of("session.updated")[0]["session"]
        assert session["input_audio_format"] == "pcm16"
        assert session["temperature"] == 0.7


def test_the_oracle_rejects_a_wrong_event() -> None:
    # The conformance check must be able to fail: a misspelt field, a missing one.
    with pytest.raises(AssertionError):
        assert_conforms({"type": "input_audio_buffer.speech_started", "event_id": "e",
                         "item_id": "i", "audio_start_ms": 1, "audio_start": 1})
    with pytest.raises(ValueError):
        assert_conforms({"type": "response.output_audio.delta", "event_id": "e",
                         "item_id": "i", "delta": ""})
    with pytest.raises(ValueError):
        assert_conforms({"type": "response.output_audio.delta", "event_id": "e",
                         "response_id": "r", "item_id": "i", "output_index": 0,
                         "content_index": 0, "delta": ""}, "preview")
