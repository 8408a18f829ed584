"""Realtime transcription sessions: the emulator's in both dialects (sans-I/O core) and the
client's events against the ``openai`` package's models; then the client against the
emulator over a real WebSocket, in both dialects."""

from __future__ import annotations

import base64
import json
import logging
import shutil
import subprocess
import wave
from pathlib import Path
from typing import Any

import pytest
from openai.types.realtime.realtime_transcription_session_create_response import (
    RealtimeTranscriptionSessionCreateResponse,
)
from pydantic import TypeAdapter, ValidationError

from bridge.realtime.config import RealtimeSettings, RealtimeTarget
from bridge.realtime.emulator import Emulator, EmulatorConfig
from bridge.realtime.emulator import transcription as emu_transcription
from bridge.realtime.emulator.audio import resample
from bridge.realtime.emulator.record import SessionRecord
from bridge.realtime.emulator.session import SessionCore
from bridge.realtime.transcription import (
    TranscriptionClient,
    transcription_update,
    transcription_url,
)
from tests.support.audio import tone
from tests.support.realtime_oracle import _extras, assert_conforms, validate_client_event

TRANSCRIPTION_SESSION: TypeAdapter[Any] = TypeAdapter(
    RealtimeTranscriptionSessionCreateResponse)

DELTA = "conversation.item.input_audio_transcription.delta"
COMPLETED = "conversation.item.input_audio_transcription.completed"


def make_core(dialect: str) -> SessionCore:
    path = "/openai/v1/realtime" if dialect == "ga" else "/openai/realtime"
    record = SessionRecord("", path, {}, {}, dialect)
    core = SessionCore(record, dialect=dialect, model="m", now=0.0, wall_time=1e9)
    core.start(0.0)
    return core


def events(core: SessionCore) -> list[dict[str, Any]]:
    return [json.loads(f) for f in core.take_output() if isinstance(f, str)]


def send(core: SessionCore, event: dict[str, Any]) -> None:
    core.receive_text(json.dumps(event), 1.0)


@pytest.mark.parametrize("dialect", ["ga", "preview"])
def test_client_events_validate_against_the_openai_models(dialect: str) -> None:
    for fmt in ("pcm16", "pcmu", "pcma"):
        validate_client_event(transcription_update(dialect, "gpt-4o-transcribe", "en", fmt),
                              dialect)


def test_only_the_ga_model_takes_an_azure_deployment_name() -> None:
    """GA's ``audio.input.transcription.model`` is any string (an Azure deployment name);
    the preview model lists the three model names only, so a deployment name goes out
    unvalidated by the package there (Azure's preview endpoint takes it all the same)."""
    validate_client_event(transcription_update("ga", "contoso-transcribe", None, "pcm16"),
                          "ga")
    with pytest.raises(ValidationError):
        validate_client_event(
            transcription_update("preview", "contoso-transcribe", None, "pcm16"), "preview")


def test_transcription_urls_per_dialect() -> None:
    ga = RealtimeSettings.from_env({}).target(emulator_url="ws://127.0.0.1:9")
    assert transcription_url(ga, "vb-transcribe").endswith(
        "/openai/v1/realtime?model=vb-transcribe")
    preview = RealtimeTarget("azure-preview", "wss://r.example/openai/realtime?"
                             "api-version=2025-04-01-preview&deployment=rt", "preview", "k")
    assert transcription_url(preview, "x") == (
        "wss://r.example/openai/realtime?api-version=2025-04-01-preview&intent=transcription")


@pytest.mark.parametrize("dialect", ["ga", "preview"])
def test_emulator_transcription_session_answers_each_commit(
        dialect: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The update is answered in the dialect's shape, a commit with deltas and a
    completed transcript (here the recogniser's words stubbed), and no response ever."""
    monkeypatch.setattr(emu_transcription, "recognise", lambda audio, fmt: "leave a message")
    core = make_core(dialect)
    events(core)
    send(core, transcription_update(dialect, "gpt-4o-transcribe", "en", "pcm16"))
    [updated] = events(core)
    kind = "session.updated" if dialect == "ga" else "transcription_session.updated"
    assert updated["type"] == kind, updated
    if dialect == "preview":
        assert_conforms(updated, "preview")
        assert updated["session"]["input_audio_transcription"]["model"] == "gpt-4o-transcribe"
    else:
        # The GA event's session is a transcription session: strictly the package's
        # RealtimeTranscriptionSessionCreateResponse (id, object, expires_at included).
        session = TRANSCRIPTION_SESSION.validate_python(updated["session"])
        assert not _extras(session, "session"), _extras(session, "session")
        assert session.type == "transcription"
        assert session.audio.input.transcription.model == "gpt-4o-transcribe"
    audio = tone(800)                       # 24 kHz PCM16
    send(core, {"type": "input_audio_buffer.append",
                "audio": base64.b64encode(audio).decode()})
    send(core, {"type": "input_audio_buffer.commit"})
    out = events(core)
    # the words come once the adapter has recognised the turn off the event loop
    assert not [e for e in out if "transcription" in e["type"]], out
    [job] = core.take_jobs()
    assert job.audio == audio and not core.take_jobs()
    core.finish_job(job, job.run())
    out += events(core)
    for event in out:
        assert_conforms(event, dialect)
    kinds = [e["type"] for e in out]
    assert kinds[0] == "input_audio_buffer.committed"
    assert [e["delta"] for e in out if e["type"] == DELTA] == ["leave", " a", " message"]
    [done] = [e for e in out if e["type"] == COMPLETED]
    assert done["transcript"] == "leave a message"
    assert not any(k.startswith("response.") for k in kinds), kinds


def test_a_conversation_session_keeps_the_placeholder() -> None:
    """Only a transcription session recognises words; a conversation session with input
    transcription on keeps the cheap placeholder."""
    core = make_core("ga")
    events(core)
    send(core, {"type": "session.update", "session": {
        "type": "realtime", "audio": {"input": {"transcription": {"model": "whisper-1"},
                                                "turn_detection": None}}}})
    events(core)
    send(core, {"type": "input_audio_buffer.append",
                "audio": base64.b64encode(tone(500)).decode()})
    send(core, {"type": "input_audio_buffer.commit"})
    out = events(core)
    [done] = [e for e in out if e["type"] == COMPLETED]
    assert "does not transcribe" in done["transcript"]
    assert not [e for e in out if e["type"] == DELTA]


def test_a_transcription_session_needs_a_model() -> None:
    core = make_core("ga")
    events(core)
    send(core, {"type": "session.update", "session": {"type": "transcription"},
                "event_id": "u1"})
    [error] = events(core)
    assert error["type"] == "error" and error["error"]["event_id"] == "u1"


def _spoken(tmp_path: Path, phrase: str) -> bytes:
    espeak = shutil.which("espeak-ng")
    if espeak is None:
        pytest.skip("espeak-ng is not installed")
    wav = tmp_path / "p.wav"
    subprocess.run([espeak, "-v", "en-us", "-s", "130", "-w", str(wav), phrase], check=True)
    with wave.open(str(wav)) as w:
        return resample(w.readframes(w.getnframes()), w.getframerate(), 24000)


@pytest.mark.parametrize("dialect", ["ga", "preview"])
async def test_client_transcribes_speech_through_the_emulator(dialect: str,
                                                              tmp_path: Path) -> None:
    pytest.importorskip("pocketsphinx")
    audio = _spoken(tmp_path, "I would like to order a pizza")
    async with Emulator(EmulatorConfig()) as emu:
        ga = RealtimeSettings.from_env({}).target(emulator_url=emu.url)
        target = ga if dialect == "ga" else RealtimeTarget(
            "azure-preview", f"{emu.url}/openai/realtime?api-version=2025-04-01-preview"
            "&deployment=rt", "preview", None)
        heard: list[str] = []
        client = TranscriptionClient(target, "gpt-4o-transcribe", language="en",
                                     log=logging.getLogger("t"), on_delta=heard.append)
        await client.open()
        for i in range(0, len(audio), 960):
            client.append(audio[i:i + 960])
        text = await client.finish(60)
        await client.close()
        session = emu.record.sessions[0]
    assert {"order", "pizza"} <= set(text.split()), text
    assert "".join(heard) == text
    first = session.received[0]
    assert first["type"] == ("session.update" if dialect == "ga"
                             else "transcription_session.update")
    if dialect == "preview":
        assert session.query.get("intent") == "transcription"
