"""The Realtime client against the local emulator over real loopback sockets: echo round
trip, reconnect after drops (1006, 1011, and 1001 with session_expired), auth refusal,
a scripted tool call, truncation, the preview dialect and session rotation. Every non-audio
event the emulator received from the client validates against the openai models."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

import pytest

from bridge.codecs import g711
from bridge.codecs.level import tone as level_tone
from bridge.errors import RealtimeAuthError
from bridge.realtime import events as ev
from bridge.realtime.client import RealtimeClient, RealtimeRejected
from bridge.realtime.config import RealtimeSettings, RealtimeTarget
from bridge.realtime.emulator import Emulator, EmulatorConfig, EmulatorRecord
from bridge.realtime.profile import SessionProfile, TurnDetection
from bridge.realtime.recovery import RecoveryPolicy
from tests.support.audio import tone
from tests.support.client_events import Events
from tests.support.realtime_oracle import validate_client_event

FRAME = 960  # 20 ms of PCM16 at 24 kHz
PROFILE = SessionProfile(instructions="echo", turn_detection=TurnDetection(
    silence_duration_ms=300))


SPEECH = tone(600, dbfs=-14.0)
SILENCE = b"\x00" * (48 * 600)


def talk(client: RealtimeClient) -> None:
    """One caller turn: 600 ms of tone then 600 ms of silence, in 20 ms frames."""
    audio = SPEECH + SILENCE
    for i in range(0, len(audio), FRAME):
        client.append_audio(audio[i:i + FRAME])


def target(emu: Emulator, **env: str) -> RealtimeTarget:
    base = {"AZURE_OPENAI_ENDPOINT": emu.url.replace("ws://", "http://"),
            "AZURE_OPENAI_DEPLOYMENT_NAME": "gpt-realtime",
            "AZURE_OPENAI_API_KEY": "emu-key"}
    base.update(env)
    return RealtimeSettings.from_env(base).target()


def make(emu: Emulator, **kw: Any) -> RealtimeClient:
    kw.setdefault("recovery", RecoveryPolicy(backoff_s=0.01,
                                             connect_attempts=kw.pop("connect_attempts", 3)))
    return RealtimeClient(kw.pop("target", None) or target(emu), kw.pop("profile", PROFILE),
                          **kw)


def conformance(record: EmulatorRecord) -> None:
    for session in record.sessions:
        for event in session.received:
            validate_client_event(event, session.dialect)


async def round_trip(client: RealtimeClient, events: Events) -> ev.ResponseDone:
    talk(client)
    await events.read_until(ev.SpeechStarted)
    await events.read_until(ev.InputCommitted)
    await events.read_until(ev.AudioDelta)
    return await events.read_until(ev.ResponseDone)


def emulator(**kw: Any) -> Emulator:
    kw.setdefault("api_key", "emu-key")
    kw.setdefault("pace", 0.0)
    return Emulator(EmulatorConfig(**kw))


async def test_echo_round_trip() -> None:
    async with emulator() as emu:
        client = make(emu)
        await client.connect()
        events = Events(client)
        done = await round_trip(client, events)
        assert done.status == "completed"
        audio = b"".join(e.audio for e in events.seen if isinstance(e, ev.AudioDelta))
        assert len(audio) >= len(SPEECH) // 2  # the caller's turn came back
        record = emu.record.sessions[0]
        assert record.headers["api-key"] != "emu-key"  # redacted by the emulator
        assert record.session_updates == 1
        assert record.appended_audio_ms == pytest.approx(1200, abs=20)
        await client.close()
        conformance(emu.record)


async def test_on_message_runs_as_bytes_arrive_and_before_each_message_is_handled() -> None:
    # The media clock's hook (MediaClock.poll): called from the connection's
    # data_received (before websockets parses the bytes) and before each message's events
    # are emitted.
    async with emulator() as emu:
        client = make(emu)
        calls: list[int] = []
        client.on_message = lambda: calls.append(client.stats.events_received)
        await client.connect()
        events = Events(client)
        await round_trip(client, events)
        received = client.stats.events_received
        assert received >= 8
        assert calls == sorted(calls)
        # Before each message k was handled, the hook ran with k messages handled so far.
        assert set(range(received)) <= set(calls)
        # ... and more often than that: as bytes arrived, too.
        assert len(calls) > received
        await client.close()


async def test_without_a_hook_messages_are_read_as_usual() -> None:
    async with emulator() as emu:
        client = make(emu)
        await client.connect()
        # The socket's hook only feeds the keepalive (no preemption hook was given).
        assert client._conn is not None and callable(getattr(client._conn.ws, "hook", None))
        events = Events(client)
        done = await round_trip(client, events)
        assert done.status == "completed"
        await client.close()


@pytest.mark.parametrize("code", [1006, 1011])
async def test_reconnect_after_drop_reseeds_and_carries_on(code: int) -> None:
    async with emulator() as emu:
        client = make(emu)
        await client.connect()
        events = Events(client)
        await client.add_user_text("my account number is 1234")
        await round_trip(client, events)
        await emu.drop(code)
        assert str(code) in (await events.read_until(ev.Reconnecting)).reason
        await events.read_until(ev.Reconnected)
        await emu.wait_for(lambda r: len(r) == 2 and r.sessions[1].session_updates == 1, 5.0)
        second = emu.record.sessions[1]
        await emu.wait_for(lambda r: "my account number is 1234" in second.user_texts, 5.0)
        # ...and carries on: a full turn on the new session.
        done = await round_trip(client, events)
        assert done.status == "completed"
        assert second.turns == 1
        await client.close()
        conformance(emu.record)


async def test_session_expired_1001_reconnects() -> None:
    async with emulator(session_max_s=1.0) as emu:
        client = make(emu, wall_clock=lambda: 0.0)  # no rotation: the server expires it
        await client.connect()
        events = Events(client)
        await client.add_user_text("before expiry")
        error = await events.read_until(ev.ServerError)
        assert error.code == "session_expired"
        reconnecting = await events.read_until(ev.Reconnecting)
        assert "1001" in reconnecting.reason and "session_expired" in reconnecting.reason
        await events.read_until(ev.Reconnected)
        await emu.wait_for(lambda r: len(r) >= 2 and "before expiry" in r.sessions[1].user_texts,
                           5.0)
        assert emu.record.sessions[0].close_code == 1001
        await client.close()
        conformance(emu.record)


async def test_wrong_key_is_refused_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="bridge.realtime")
    async with emulator() as emu:
        client = make(emu, target=target(emu, AZURE_OPENAI_API_KEY="wrong-key"),
                      connect_attempts=4)
        with pytest.raises(RealtimeAuthError, match="401"):
            await client.connect()
        refused = [r for r in caplog.records if "bad credentials" in r.getMessage()]
        assert len(refused) == 1
        assert len(emu.record) == 0
        assert all("wrong-key" not in r.getMessage() for r in caplog.records)


async def test_entra_bearer_token_accepted_by_the_emulator() -> None:
    tokens = iter(["tok-a", "tok-b"])

    async def provider() -> str:
        return next(tokens)

    async with emulator(api_key=None, bearer_token="tok-a") as emu:
        client = make(emu, target=target(emu, AZURE_OPENAI_API_KEY=""),
                      token_provider=provider)
        assert client.target.use_entra
        await client.connect()
        events = Events(client)
        # The next token is one the emulator does not accept: the reconnect is refused,
        # which proves a fresh token was fetched, and the client gives up at once.
        await emu.drop(1006)
        lost = await events.read_until(ev.UpstreamLost)
        assert lost.fatal_auth
        await client.close()


SCRIPT = """
[[rule]]
on_turn = 1
say = "Transferring you."
call = "transfer_call"
args = { target = "sales" }

[[rule]]
on_tool_output = "transfer_call"
say = "Done."
"""


async def test_scripted_tool_call_and_truncation(tmp_path: Path) -> None:
    script = tmp_path / "rules.toml"
    script.write_text(SCRIPT)
    async with emulator(script=str(script)) as emu:
        client = make(emu)
        await client.connect()
        events = Events(client)
        talk(client)
        call = await events.read_until(ev.FunctionCall)
        assert (call.name, call.arguments.replace(" ", "")) == ("transfer_call",
                                                              '{"target":"sales"}')
        done = await events.read_until(ev.ResponseDone)
        assert done.response_id == call.response_id and done.status == "completed"
        await client.send_tool_output(call.call_id, '{"ok": true}')
        await client.create_response()
        await events.read_until(ev.ResponseCreated)
        delta = await events.read_until(ev.AudioDelta)
        await events.read_until(ev.ResponseDone)
        await client.truncate(delta.item_id, 120)
        await emu.wait_for(lambda r: bool(r.truncations), 5.0)
        (cut,) = emu.record.truncations
        assert (cut.item_id, cut.audio_end_ms) == (delta.item_id, 120)
        assert emu.record.tool_outputs == [(call.call_id, '{"ok": true}')]
        await client.close()
        conformance(emu.record)


async def test_preview_dialect_round_trip() -> None:
    async with emulator() as emu:
        client = make(emu, target=target(emu, AZURE_OPENAI_API_VERSION="2025-04-01-preview"))
        assert client.target.dialect == "preview"
        await client.connect()
        events = Events(client)
        done = await round_trip(client, events)
        assert done.status == "completed"
        record = emu.record.sessions[0]
        assert record.dialect == "preview"
        assert record.query["api-version"] == "2025-04-01-preview"
        await client.close()
        conformance(emu.record)


async def test_rotation_against_the_emulator() -> None:
    async with emulator() as emu:
        clock = [time.time()]  # a virtual wall clock
        client = make(emu, rotate_margin_s=60.0, wall_clock=lambda: clock[0])
        await client.add_user_text("keep this")
        await client.connect()
        events = Events(client)
        clock[0] += 1790.0  # 10 s before expiry: due at the next quiet moment
        client.set_playout_active(False)
        rotated = await events.read_until(ev.SessionRotated)
        assert rotated.previous_session_id != rotated.session_id
        await emu.wait_for(lambda r: len(r) == 2 and not r.sessions[0].open, 5.0)
        assert emu.record.sessions[0].close_code == 1000
        await emu.wait_for(lambda r: "keep this" in r.sessions[1].user_texts, 5.0)
        await asyncio.wait_for(round_trip(client, events), 10.0)
        assert emu.record.sessions[1].turns == 1
        await client.close()
        conformance(emu.record)


async def test_g711_passthrough_with_an_azure_transcription_deployment() -> None:
    """A G.711 caller passed through untranscoded: µ-law both ways, the transcription
    model given as an Azure deployment name, noise reduction for a handset; audio is
    counted in milliseconds of µ-law (8 bytes per ms), so a truncation lands where the
    caller stopped hearing."""
    profile = SessionProfile(audio_format="pcmu",
                             turn_detection=TurnDetection(silence_duration_ms=300),
                             transcription_model="my-transcribe-deployment",
                             noise_reduction="near_field")
    async with emulator() as emu:
        client = make(emu, profile=profile)
        await client.connect()
        config = emu.record.sessions[0].config
        assert config["audio"]["input"]["format"] == {"type": "audio/pcmu"}
        assert config["audio"]["output"]["format"] == {"type": "audio/pcmu"}
        assert config["audio"]["input"]["transcription"]["model"] == "my-transcribe-deployment"
        assert config["audio"]["input"]["noise_reduction"] == {"type": "near_field"}
        events = Events(client)
        ulaw = g711.ulaw_encode(level_tone(440.0, 600, 8000, dbfs=-14.0) + bytes(2 * 8 * 600))
        for i in range(0, len(ulaw), 160):  # 20 ms of µ-law per append
            client.append_audio(ulaw[i:i + 160])
        heard = await events.read_until(ev.UserTranscript)
        done = await events.read_until(ev.ResponseDone)
        assert done.status == "completed"
        deltas = [e for e in events.seen if isinstance(e, ev.AudioDelta)]
        echoed = sum(len(e.audio) for e in deltas)
        assert abs(echoed - 8 * 600) <= 8 * 10  # the 600 ms utterance, in µ-law bytes
        assert emu.record.sessions[0].appended_audio_ms == pytest.approx(1200)
        await client.truncate(deltas[0].item_id, 300)
        await emu.wait_for(lambda r: bool(r.truncations), 5.0)
        (cut,) = emu.record.truncations
        assert (cut.item_id, cut.audio_end_ms) == (deltas[0].item_id, 300)
        assert heard.item_id == emu.record.sessions[0].user_items[0].item_id
        await client.close()
        conformance(emu.record)


async def test_a_refused_session_update_is_not_retried() -> None:
    # The service validates the session itself (here idle_timeout_ms below its 5000 ms
    # minimum): the same update would be refused again, so connect() gives up at once.
    profile = SessionProfile(turn_detection=TurnDetection(idle_timeout_ms=1000))
    async with emulator() as emu:
        client = make(emu, profile=profile, connect_attempts=4, open_timeout_s=3.0)
        with pytest.raises(RealtimeRejected, match="integer_below_min_value"):
            await client.connect()
        assert len(emu.record) == 1
        assert emu.record.sessions[0].error_codes() == ["integer_below_min_value"]
        await client.close()
