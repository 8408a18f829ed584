"""The real service's answers to bad events, bad handshakes, expiry and drops."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from bridge.realtime.emulator import Emulator, EmulatorConfig, Truncation
from tests.support.audio import silence, tone
from tests.support.emulator_client import GA_PATH, PREVIEW_PATH, RawClient, vad
from tests.support.realtime_oracle import assert_conforms


@pytest.fixture
async def emu() -> AsyncIterator[Emulator]:
    async with Emulator(EmulatorConfig(pace=0)) as emulator:
        yield emulator


@pytest.fixture
async def client(emu: Emulator) -> AsyncIterator[RawClient]:
    c = await RawClient.open(emu.url)
    await c.read_until("session.created")
    yield c
    await c.close()


async def answered_response(client: RawClient) -> str:
    """Have the emulator speak one 1 s echo; return the assistant item id."""
    await client.configure(vad())
    await client.send_audio(silence(100) + tone(1000) + silence(400))
    done = await client.read_until("response.done")
    return str(done["response"]["output"][0]["id"])


async def test_truncate_beyond_the_items_audio(client: RawClient, emu: Emulator) -> None:
    item = await answered_response(client)
    event_id = await client.send({"type": "conversation.item.truncate", "item_id": item,
                                  "content_index": 0, "audio_end_ms": 1500})
    error = await client.error()
    assert error["code"] == "invalid_value"
    assert error["message"] == "Audio content of 1000ms is already shorter than 1500ms"
    assert error["event_id"] == event_id
    await client.send({"type": "conversation.item.truncate", "item_id": item,
                       "content_index": 0, "audio_end_ms": 640})
    truncated = await client.read_until("conversation.item.truncated")
    assert truncated["audio_end_ms"] == 640
    assert emu.record.sessions[0].truncations == [Truncation(item, 640, 1000)]
    # the item is now 640 ms long
    await client.send({"type": "conversation.item.truncate", "item_id": item,
                       "content_index": 0, "audio_end_ms": 700})
    assert "640ms" in (await client.error())["message"]


async def test_truncate_an_item_without_audio(client: RawClient) -> None:
    await client.send({"type": "conversation.item.create", "item": {
        "type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]}})
    item = (await client.read_until("conversation.item.added"))["item"]["id"]
    event_id = await client.send({"type": "conversation.item.truncate", "item_id": item,
                                  "content_index": 0, "audio_end_ms": 0})
    error = await client.error()
    assert (error["code"], error["event_id"]) == ("invalid_value", event_id)
    event_id = await client.send({"type": "conversation.item.truncate", "item_id": "item_nope",
                                  "content_index": 0, "audio_end_ms": 10})
    error = await client.error()
    assert (error["code"], error["event_id"]) == ("invalid_value", event_id)


async def test_cancel_with_nothing_active(client: RawClient) -> None:
    event_id = await client.send({"type": "response.cancel"})
    error = await client.error()
    assert (error["code"], error["event_id"]) == ("response_cancel_not_active", event_id)


async def test_cancel_an_active_response() -> None:
    async with Emulator(EmulatorConfig(pace=2.0)) as emu:
        client = await RawClient.open(emu.url)
        try:
            await client.send({"type": "response.create"})
            await client.read_until("response.output_audio.delta")
            await client.send({"type": "response.cancel"})
            done = await client.read_until("response.done")
        finally:
            await client.close()
    assert done["response"]["status"] == "cancelled"
    assert done["response"]["status_details"]["reason"] == "client_cancelled"


async def test_create_while_one_is_active() -> None:
    async with Emulator(EmulatorConfig(pace=2.0)) as emu:
        client = await RawClient.open(emu.url)
        try:
            await client.send({"type": "response.create"})
            created = await client.read_until("response.created")
            event_id = await client.send({"type": "response.create"})
            error = await client.error()
            await client.read_until("response.done")
        finally:
            await client.close()
    assert (error["code"], error["event_id"]) == ("conversation_already_has_active_response",
                                                  event_id)
    assert created["response"]["id"] in error["message"]
    assert emu.record.sessions[0].response_creates == 2
    assert len(client.of("response.created")) == 1


async def test_unknown_event_type(client: RawClient) -> None:
    event_id = await client.send({"type": "response.explode"})
    error = await client.error()
    assert (error["code"], error["param"], error["event_id"]) == ("invalid_value", "type",
                                                                  event_id)


async def test_malformed_json(client: RawClient) -> None:
    await client.ws.send('{"type": "response.create"')
    error = await client.error()
    assert error["code"] == "invalid_json"


async def test_binary_frame(client: RawClient) -> None:
    await client.ws.send(b"\x00\x01")
    error = await client.error()
    assert error["code"] == "invalid_event"


async def test_commit_under_100_ms(client: RawClient) -> None:
    await client.send_audio(tone(80))
    event_id = await client.send({"type": "input_audio_buffer.commit"})
    error = await client.error()
    assert (error["code"], error["event_id"]) == ("input_audio_buffer_commit_empty", event_id)
    assert "80.00ms" in error["message"]


async def test_bad_base64_audio(client: RawClient) -> None:
    event_id = await client.send({"type": "input_audio_buffer.append", "audio": "!!notb64"})
    error = await client.error()
    assert (error["code"], error["event_id"]) == ("invalid_value", event_id)


async def test_rejected_update_changes_nothing(client: RawClient, emu: Emulator) -> None:
    good = await client.configure(vad(silence_duration_ms=250))
    bad_format = vad(silence_duration_ms=900)
    bad_format["audio"]["input"]["format"] = {"type": "audio/pcm", "rate": 16000}
    event_id = await client.send({"type": "session.update",
                                  "session": {"type": "realtime", **bad_format}})
    error = await client.error()
    assert (error["code"], error["param"], error["event_id"]) == (
        "invalid_value", "session.audio.input.format.rate", event_id)
    for session, code in (({"temperature": 0.8}, "unknown_parameter"),
                          ({"audio": {"input": {"turn_detection": {
                              "type": "server_vad", "threshold": 1.5}}}},
                           "decimal_above_max_value"),
                          ({"audio": {"output": {"format": {"type": "audio/opus"}}}},
                           "invalid_value")):
        await client.send({"type": "session.update", "session": {"type": "realtime", **session}})
        assert (await client.error())["code"] == code
    await client.send({"type": "session.update", "session": {"instructions": "x"}})
    assert (await client.error())["code"] == "missing_required_parameter"  # session.type
    assert emu.record.sessions[0].config == good["session"]
    assert emu.record.sessions[0].session_updates == 1
    # still the 250 ms silence: the turn ends 250 ms after the speech
    await client.send_audio(silence(100) + tone(500) + silence(300))
    stopped = await client.read_until("input_audio_buffer.speech_stopped")
    assert stopped["audio_end_ms"] == 600 + 250


async def test_voice_cannot_change_after_audio(client: RawClient) -> None:
    await client.send({"type": "response.create"})
    await client.read_until("response.done")
    await client.send({"type": "session.update", "session": {
        "type": "realtime", "audio": {"output": {"voice": "cedar"}}}})
    assert (await client.error())["param"] == "session.audio.output.voice"


async def test_errors_conform(client: RawClient) -> None:
    await client.send({"type": "nope"})
    await client.ws.send("{")
    await client.send({"type": "response.cancel"})
    for _ in range(3):
        await client.read_until("error")
    for event in client.events:
        assert_conforms(event)


async def test_auth_rejected_with_401_before_upgrade() -> None:
    cfg = EmulatorConfig(api_key="k-123", bearer_token="t-456", pace=0)
    async with Emulator(cfg) as emu:
        for headers in ({}, {"api-key": "wrong"}, {"Authorization": "Bearer wrong"}):
            with pytest.raises(InvalidStatus) as info:
                await connect(emu.url + GA_PATH, additional_headers=headers)
            assert info.value.response.status_code == 401
        for headers in ({"api-key": "k-123"}, {"Authorization": "Bearer t-456"},
                        {"Authorization": "Bearer k-123"}):
            client = await RawClient.open(emu.url, additional_headers=headers)
            await client.read_until("session.created")
            await client.close()
        # the preview dialect also takes the key in the query string
        client = await RawClient.open(emu.url, PREVIEW_PATH + "&api-key=k-123")
        await client.read_until("session.created")
        await client.close()
        assert len(emu.record.sessions) == 4  # the refused ones never became sessions
        for rec in emu.record.sessions:
            flat = json.dumps(rec.headers) + json.dumps(rec.query)
            assert "k-123" not in flat and "t-456" not in flat


@pytest.mark.parametrize(("path", "status"), [
    ("/", 404), ("/openai/v1/realtimex?model=m", 404), ("/v1/realtime", 400),
    ("/openai/realtime?deployment=m", 400), ("/openai/v1/realtime?model=m&api-version=1", 401),
])
async def test_bad_paths(emu: Emulator, path: str, status: int) -> None:
    with pytest.raises(InvalidStatus) as info:
        await connect(emu.url + path)
    assert info.value.response.status_code == status


async def test_beta_header_is_refused_like_openai(emu: Emulator) -> None:
    client = await RawClient.open(emu.url, additional_headers={"OpenAI-Beta": "realtime=v1"})
    error = await client.error()
    assert error["code"] == "beta_api_shape_disabled"
    with pytest.raises(ConnectionClosed):
        await client.recv()
    assert client.ws.close_code == 4000


async def test_session_expiry_closes_with_1001() -> None:
    async with Emulator(EmulatorConfig(session_max_s=0.3, pace=0)) as emu:
        client = await RawClient.open(emu.url)
        created = await client.read_until("session.created")
        error = await client.error()
        assert error["code"] == "session_expired"
        with pytest.raises(ConnectionClosed):
            await client.recv()
        assert client.ws.close_code == 1001
        await emu.wait_for(lambda r: not r.sessions[0].open, 5.0)
        assert emu.record.sessions[0].close_code == 1001
        assert created["session"]["expires_at"] >= 0


@pytest.mark.parametrize("code", [1006, 1011, 1012])
async def test_drop(code: int) -> None:
    async with Emulator(EmulatorConfig(pace=0)) as emu:
        client = await RawClient.open(emu.url)
        await client.read_until("session.created")
        await emu.wait_for(lambda r: len(r.live) == 1, 5.0)
        await emu.drop(code)
        with pytest.raises(ConnectionClosed):
            while True:
                await client.recv()
        assert client.ws.close_code == code
        if code == 1006:
            assert client.ws.protocol.close_rcvd is None  # no close frame: the TCP connection died
        await emu.wait_for(lambda r: not r.sessions[0].open, 5.0)


async def test_wait_for_times_out(emu: Emulator) -> None:
    with pytest.raises(TimeoutError):
        await emu.wait_for(lambda r: len(r.sessions) > 0, 0.05)


async def test_record_elides_audio(emu: Emulator) -> None:
    client = await RawClient.open(emu.url)
    try:
        await client.send_audio(tone(100))
        audio = base64.b64encode(tone(100)).decode()
        await client.send({"type": "conversation.item.create", "item": {
            "type": "message", "role": "user",
            "content": [{"type": "input_audio", "audio": audio}]}})
        await client.read_until("conversation.item.added")
    finally:
        await client.close()
    rec = emu.record.sessions[0]
    assert rec.received_types[:5] == ["input_audio_buffer.append"] * 5
    assert audio not in json.dumps(rec.received)
    await asyncio.sleep(0)
