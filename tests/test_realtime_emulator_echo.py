"""The echo agent over a real socket: VAD events, deltas, barge-in, greeting, G.711."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator

import pytest

from bridge.realtime.emulator import Emulator, EmulatorConfig
from bridge.realtime.emulator.audio import audioop
from tests.support.audio import silence, tone
from tests.support.emulator_client import RawClient, vad


@pytest.fixture
async def emu() -> AsyncIterator[Emulator]:
    async with Emulator(EmulatorConfig(pace=0)) as emulator:
        yield emulator


def delta_bytes(client: RawClient) -> list[int]:
    return [len(base64.b64decode(e["delta"])) for e in client.of("response.output_audio.delta")]


async def test_echo_round_trip(emu: Emulator) -> None:
    client = await RawClient.open(emu.url)
    try:
        created = await client.read_until("session.created")
        assert created["session"]["expires_at"] > 0
        await client.configure(vad(prefix_padding_ms=200, silence_duration_ms=400))
        # 600 ms silence, a 1400 ms "utterance", 800 ms silence, in real 20 ms appends
        # (sent faster than real time: the emulator counts audio time).
        await client.send_audio(silence(600) + tone(1400) + silence(800))
        started = await client.read_until("input_audio_buffer.speech_started")
        assert started["audio_start_ms"] == 600 - 200  # onset minus prefix padding
        stopped = await client.read_until("input_audio_buffer.speech_stopped")
        assert stopped["audio_end_ms"] == 2000 + 400  # speech end plus the silence
        assert stopped["item_id"] == started["item_id"]
        committed = await client.read_until("input_audio_buffer.committed")
        assert committed["item_id"] == started["item_id"]
        user_item = await client.read_until("conversation.item.added")
        assert user_item["item"]["role"] == "user"
        done = await client.read_until("response.done")
        assert done["response"]["status"] == "completed"
        assert done["response"]["usage"]["output_token_details"]["audio_tokens"] > 0
    finally:
        await client.close()
    sizes = delta_bytes(client)
    # the service's delta sizes: 100 ms, 150 ms, then 250 ms (the last one the rest)
    assert sizes[:2] == [100 * 48, 150 * 48]
    assert all(s == 250 * 48 for s in sizes[2:-1])
    assert sum(sizes) / 48 == pytest.approx(1400, abs=10)  # ± one VAD frame
    transcript = client.of("response.output_audio_transcript.done")[0]["transcript"]
    assert transcript == "(echo of 1.4 s of caller audio)"
    deltas = "".join(e["delta"] for e in client.of("response.output_audio_transcript.delta"))
    assert deltas == transcript
    kinds = [e["type"] for e in client.events]
    order = ["response.created", "response.output_item.added", "response.content_part.added",
             "response.output_audio.delta", "response.output_audio.done",
             "response.output_audio_transcript.done", "response.content_part.done",
             "response.output_item.done", "response.done"]
    assert [k for k in kinds if k in order and k != "response.output_audio.delta"] == \
        [k for k in order if k != "response.output_audio.delta"]
    rec = emu.record.sessions[0]
    assert rec.appended_audio_ms == pytest.approx(2800)
    assert rec.turns == 1
    item = next(iter(rec.assistant_items.values()))
    assert item.audio_ms_sent == pytest.approx(1400, abs=10)


async def test_the_echo_is_the_callers_audio(emu: Emulator) -> None:
    client = await RawClient.open(emu.url)
    try:
        await client.configure(vad())
        utterance = tone(500, freq=700.0)
        await client.send_audio(silence(200) + utterance + silence(400))
        await client.read_until("response.done")
    finally:
        await client.close()
    echoed = b"".join(base64.b64decode(e["delta"])
                      for e in client.of("response.output_audio.delta"))
    assert echoed == utterance


async def test_greeting_before_any_turn(emu: Emulator) -> None:
    client = await RawClient.open(emu.url)
    try:
        await client.configure(vad())
        await client.send({"type": "response.create"})
        done = await client.read_until("response.done")
    finally:
        await client.close()
    assert done["response"]["status"] == "completed"
    assert sum(delta_bytes(client)) == 1200 * 48  # greeting_ms
    assert "greeting" in client.of("response.output_audio_transcript.done")[0]["transcript"]
    assert emu.record.sessions[0].response_creates == 1


async def test_barge_in_cancels_the_response() -> None:
    # Paced output (4x real time) so the response is still playing when the caller speaks.
    async with Emulator(EmulatorConfig(pace=4.0)) as emu:
        client = await RawClient.open(emu.url)
        try:
            await client.configure(vad())
            await client.send_audio(silence(200) + tone(3000) + silence(400))
            await client.read_until("response.output_audio.delta")
            await client.send_audio(tone(200))
            started = await client.read_until("input_audio_buffer.speech_started")
            done = await client.read_until("response.done")
            assert done["response"]["status"] == "cancelled"
            assert done["response"]["status_details"]["reason"] == "turn_detected"
            n_deltas = len(client.of("response.output_audio.delta"))
            assert 0 < n_deltas < 13  # 3 s would be 13 deltas
            # The *.done events still close what was open, marked incomplete.
            item_done = client.of("response.output_item.done")[-1]
            assert item_done["item"]["status"] == "incomplete"
            # no more deltas after response.done
            await client.send({"type": "input_audio_buffer.clear"})
            await client.read_until("input_audio_buffer.cleared")
            assert len(client.of("response.output_audio.delta")) == n_deltas
            kinds = [e["type"] for e in client.events]
            assert kinds.index("input_audio_buffer.speech_started") < kinds.index(
                "response.done")
            assert started["audio_start_ms"] >= 3600
        finally:
            await client.close()
        assert emu.record.sessions[0].responses[0].reason == "turn_detected"


async def test_without_interrupt_response_the_reply_plays_on() -> None:
    async with Emulator(EmulatorConfig(pace=4.0)) as emu:
        client = await RawClient.open(emu.url)
        try:
            await client.configure(vad(interrupt_response=False))
            await client.send_audio(silence(200) + tone(1500) + silence(400))
            await client.read_until("response.output_audio.delta")
            await client.send_audio(tone(200))
            await client.read_until("input_audio_buffer.speech_started")
            done = await client.read_until("response.done")
        finally:
            await client.close()
        assert done["response"]["status"] == "completed"


async def test_create_response_false_waits_for_the_client(emu: Emulator) -> None:
    client = await RawClient.open(emu.url)
    try:
        await client.configure(vad(create_response=False))
        await client.send_audio(silence(200) + tone(600) + silence(400))
        await client.read_until("input_audio_buffer.committed")
        await client.send({"type": "input_audio_buffer.clear"})
        await client.read_until("input_audio_buffer.cleared")
        assert not client.of("response.created")
        await client.send({"type": "response.create"})
        await client.read_until("response.done")
    finally:
        await client.close()
    assert sum(delta_bytes(client)) == 600 * 48  # the pending turn is echoed


async def test_manual_turns_with_turn_detection_null(emu: Emulator) -> None:
    client = await RawClient.open(emu.url)
    try:
        updated = await client.configure({"audio": {"input": {"turn_detection": None}}})
        assert updated["session"]["audio"]["input"]["turn_detection"] is None
        await client.send_audio(tone(700) + silence(100))
        await client.send({"type": "input_audio_buffer.commit"})
        await client.read_until("input_audio_buffer.committed")
        await client.send({"type": "response.create"})
        await client.read_until("response.done")
    finally:
        await client.close()
    assert not client.of("input_audio_buffer.speech_started")
    assert sum(delta_bytes(client)) == 800 * 48


async def test_transcription_placeholder(emu: Emulator) -> None:
    client = await RawClient.open(emu.url)
    try:
        session = vad()
        session["audio"]["input"]["transcription"] = {"model": "gpt-4o-transcribe"}
        await client.configure(session)
        await client.send_audio(silence(100) + tone(1000) + silence(400))
        done = await client.read_until("conversation.item.input_audio_transcription.completed")
    finally:
        await client.close()
    assert done["transcript"] == "(1.0 s of caller audio; the emulator does not transcribe)"
    assert done["item_id"] == client.of("input_audio_buffer.committed")[0]["item_id"]


async def test_g711_in_and_out(emu: Emulator) -> None:
    client = await RawClient.open(emu.url)
    try:
        session = vad()
        session["audio"]["input"]["format"] = {"type": "audio/pcmu"}
        session["audio"]["output"] = {"format": {"type": "audio/pcmu"}}
        await client.configure(session)
        pcm = silence(300, 8000) + tone(900, rate=8000) + silence(400, 8000)
        await client.send_audio(audioop.lin2ulaw(pcm, 2), bytes_per_ms=8)
        started = await client.read_until("input_audio_buffer.speech_started")
        await client.read_until("response.done")
    finally:
        await client.close()
    assert started["audio_start_ms"] == 300
    sizes = delta_bytes(client)
    assert sizes[:2] == [100 * 8, 150 * 8]
    assert sum(sizes) == 900 * 8


async def test_pcm_in_g711_out_is_converted(emu: Emulator) -> None:
    client = await RawClient.open(emu.url)
    try:
        session = vad()
        session["audio"]["output"] = {"format": {"type": "audio/pcma"}}
        await client.configure(session)
        await client.send_audio(silence(200) + tone(1000) + silence(400))
        await client.read_until("response.done")
    finally:
        await client.close()
    assert sum(delta_bytes(client)) == 1000 * 8


async def test_text_only_response(emu: Emulator) -> None:
    client = await RawClient.open(emu.url)
    try:
        await client.configure({"output_modalities": ["text"]})
        await client.send({"type": "response.create"})
        await client.read_until("response.done")
    finally:
        await client.close()
    assert not client.of("response.output_audio.delta")
    text = "".join(e["delta"] for e in client.of("response.output_text.delta"))
    assert text == client.of("response.output_text.done")[0]["text"]
    assert "greeting" in text
