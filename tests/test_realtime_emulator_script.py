"""Scripted mode: tool call round trips, failures, closes, and the script format."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed

from bridge.errors import ConfigError
from bridge.realtime.emulator import Emulator, EmulatorConfig, load_script, parse_script
from bridge.realtime.emulator.audio import audioop
from bridge.realtime.emulator.speech import render_texts
from tests.support.audio import silence, tone
from tests.support.emulator_client import RawClient, vad
from tests.support.interop import require_binary

DATA = Path(__file__).parent / "data" / "emulator"
TURN = silence(200) + tone(600) + silence(400)


async def test_scripted_tool_call_round_trip() -> None:
    async with Emulator(EmulatorConfig(script=DATA / "transfer.toml", pace=0)) as emu:
        client = await RawClient.open(emu.url)
        try:
            await client.configure(vad())
            await client.send_audio(TURN)  # turn 1: plain echo
            first = await client.read_until("response.done")
            assert [i["type"] for i in first["response"]["output"]] == ["message"]
            await client.send_audio(TURN)  # turn 2: say + transfer_call
            added = [await client.read_until("response.output_item.added") for _ in range(2)]
            args_done = await client.read_until("response.function_call_arguments.done")
            call_done = await client.read_until("response.output_item.done")
            done = await client.read_until("response.done")
            assert [a["item"]["type"] for a in added] == ["message", "function_call"]
            call_item = added[1]["item"]
            assert (call_item["name"], call_item["status"]) == ("transfer_call", "in_progress")
            assert args_done["name"] == "transfer_call"
            assert args_done["call_id"] == call_item["call_id"]
            assert json.loads(args_done["arguments"]) == {"target": "sales"}
            deltas = [e["delta"] for e in client.of("response.function_call_arguments.delta")]
            assert "".join(deltas) == args_done["arguments"]
            assert call_done["item"]["status"] == "completed"
            assert done["response"]["status"] == "completed"
            assert [o["type"] for o in done["response"]["output"]] == ["message",
                                                                       "function_call"]
            said = client.of("response.output_audio_transcript.done")[-1]["transcript"]
            assert said == "Let me transfer you to sales."
            # the bridge answers the call and asks for the follow-up
            await client.send({"type": "conversation.item.create", "item": {
                "type": "function_call_output", "call_id": args_done["call_id"],
                "output": '{"transferred": true}'}})
            await client.read_until("conversation.item.added")
            await client.send({"type": "response.create"})
            follow_up = await client.read_until("response.output_audio_transcript.done")
            await client.read_until("response.done")
        finally:
            await client.close()
        assert follow_up["transcript"] == "You are being transferred now."
        rec = emu.record.sessions[0]
        assert rec.tool_outputs == [(args_done["call_id"], '{"transferred": true}')]
        assert rec.response_creates == 1
        calls = [i for i in rec.assistant_items.values() if i.kind == "function_call"]
        assert [(c.name, c.arguments) for c in calls] == [("transfer_call",
                                                           '{"target":"sales"}')]


async def test_on_text_rule() -> None:
    async with Emulator(EmulatorConfig(script=DATA / "transfer.toml", pace=0)) as emu:
        client = await RawClient.open(emu.url)
        try:
            await client.send({"type": "conversation.item.create", "item": {
                "type": "message", "role": "user",
                "content": [{"type": "input_text", "text": "Caller pressed 4"}]}})
            await client.send({"type": "response.create"})
            call = await client.read_until("response.function_call_arguments.done")
            await client.read_until("response.done")
        finally:
            await client.close()
        assert call["name"] == "hang_up"
        assert emu.record.sessions[0].user_texts == ["Caller pressed 4"]


async def test_scripted_failures_and_close() -> None:
    async with Emulator(EmulatorConfig(script=DATA / "failures.toml", pace=0)) as emu:
        client = await RawClient.open(emu.url)
        try:
            await client.configure(vad())
            await client.send_audio(TURN)
            failed = await client.read_until("response.done")
            assert failed["response"]["status"] == "failed"
            error = failed["response"]["status_details"]["error"]
            assert error["code"] == "rate_limit_exceeded"
            await client.send_audio(TURN)
            assert (await client.error())["code"] == "server_error"
            await client.read_until("response.done")  # the turn is still answered
            await client.send_audio(TURN)
            await client.read_until("response.done")
            with pytest.raises(ConnectionClosed):
                while True:
                    await client.recv()
            assert client.ws.close_code == 1011
        finally:
            await client.close()


async def test_on_session_close_only_hits_that_session(tmp_path: Path) -> None:
    script = tmp_path / "s.toml"
    script.write_text("[[rule]]\non_session = 1\nclose = 1012\nafter_s = 0.1\n")
    async with Emulator(EmulatorConfig(script=script, pace=0)) as emu:
        first = await RawClient.open(emu.url)
        with pytest.raises(ConnectionClosed):
            while True:
                await first.recv()
        assert first.ws.close_code == 1012
        second = await RawClient.open(emu.url)
        await second.read_until("session.created")
        await second.send({"type": "response.create"})
        await second.read_until("response.done")
        await second.close()
        assert emu.record.sessions[1].close_code != 1012


@pytest.mark.parametrize(("text", "fragment"), [
    ("[[rule]]\non_turn = 1\n", "rule 1: has no action"),
    ("[[rule]]\non_turn = 1\non_text = 'x'\nsay = 'a'\n", "rule 1: needs exactly one trigger"),
    ("[[rule]]\non_turn = 0\nsay = 'a'\n", "on_turn must be an integer >= 1"),
    ("[[rule]]\non_turn = 1\nsay = 'a'\nvolume = 3\n", "unknown key(s) volume"),
    ("[[rule]]\non_turn = 1\nclose = 99\n", "close must be a WebSocket close code"),
    ("[[rule]]\non_turn = 1\nsay = 'a'\nargs = {x = 1}\n", "args without call"),
    ("speech = 'loud'\n", "speech must be one of"),
    ("[[rule]]\non_text = 'x'\nheard = 'angry'\n", "heard is for on_turn rules only"),
    ("[[rule]]\non_turn = 1\nheard = ''\n", "heard must be a non-empty string"),
    ("[[rule]\n", "s.toml"),
    ("[[rule]]\non_turn = 1\nsay = 'a'\n[[rule]]\non_text = ''\nsay = 'b'\n",
     "rule 2: on_text must be a non-empty string"),
    ("[[rule]]\non_text = 'x'\nheard = 'a'\n", "heard is for on_turn rules only"),
    ("[[rule]]\non_turn = 1\nheard = ''\n", "heard must be a non-empty string"),
])
def test_script_errors_name_the_place(text: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_script(text, "s.toml")
    assert fragment in str(info.value)
    assert str(info.value).startswith("s.toml")


def test_a_scripted_turn_transcription() -> None:
    script = parse_script("[[rule]]\non_turn = 2\nheard = 'my card is 4111'\n")
    assert script.heard(2) == "my card is 4111" and script.heard(1) is None


def test_shipped_examples_load() -> None:
    for path in DATA.glob("*.toml"):
        script = load_script(path)
        assert script.rules, path
    with pytest.raises(ConfigError):
        load_script(DATA / "missing.toml")


async def test_espeak_voices_scripted_text() -> None:
    require_binary("espeak-ng", "scripted speech")
    rendered = await render_texts(["Hello from the emulator."], "espeak")
    pcm = rendered["Hello from the emulator."]
    seconds = len(pcm) / 48000
    assert 0.8 < seconds < 5.0
    assert audioop.rms(pcm, 2) > 300  # speech, not silence


async def test_espeak_speech_reaches_the_socket(tmp_path: Path) -> None:
    require_binary("espeak-ng", "scripted speech")
    script = tmp_path / "s.toml"
    script.write_text('speech = "espeak"\n[[rule]]\non_session = 1\nsay = "Welcome."\n')
    async with Emulator(EmulatorConfig(script=script, pace=0)) as emu:
        client = await RawClient.open(emu.url)
        try:
            await client.send({"type": "response.create"})
            await client.read_until("response.done")
        finally:
            await client.close()
    audio = b"".join(base64.b64decode(e["delta"])
                     for e in client.of("response.output_audio.delta"))
    expected = (await render_texts(["Welcome."], "espeak"))["Welcome."]
    assert audio == expected
