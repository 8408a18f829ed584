"""The Realtime client against a real WebSocket server on loopback: URL and header shapes,
credentials kept out of logs, Entra tokens, reconnect, fatal failures, response tracking,
barge-in, truncation and session rotation. Every event the client sends is checked
against the openai package's models for the target's dialect."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from typing import Any

import pytest
from azure.core.credentials import AccessToken
from websockets.asyncio.server import ServerConnection

from bridge.errors import RealtimeAuthError, RealtimeUnavailable
from bridge.realtime import events as ev
from bridge.realtime.client import RealtimeClient, RealtimeRejected
from bridge.realtime.config import RealtimeSettings, RealtimeTarget
from bridge.realtime.profile import SessionProfile
from bridge.realtime.recovery import RecoveryPolicy
from tests.support.client_events import Events
from tests.support.realtime_oracle import validate_client_event
from tests.support.realtime_server import FakeRealtime

AZ_KEY = "azkey-0123456789abcdef"
OA_KEY = "sk-proj-SECRETSECRET"


def azure(base: str, *, key: str | None = AZ_KEY, version: str | None = None) -> RealtimeTarget:
    env = {"AZURE_OPENAI_ENDPOINT": base.replace("ws://", "http://"),
           "AZURE_OPENAI_DEPLOYMENT_NAME": "my-realtime"}
    if key:
        env["AZURE_OPENAI_API_KEY"] = key
    if version:
        env["AZURE_OPENAI_API_VERSION"] = version
    return RealtimeSettings.from_env(env).target()


def client_for(target: RealtimeTarget, **kw: Any) -> RealtimeClient:
    policy = {k: kw.pop(k) for k in ("budget_s", "connect_attempts", "max_drops",
                                     "flap_window_s") if k in kw}
    kw.setdefault("recovery", RecoveryPolicy(backoff_s=0.01, **policy))
    kw.setdefault("open_timeout_s", 5.0)
    return RealtimeClient(target, kw.pop("profile", SessionProfile()), **kw)


def check_conformance(server: FakeRealtime, dialect: str) -> None:
    events = server.all_events()
    assert events, "the server received nothing"
    for event in events:
        validate_client_event(event, dialect)


# -- URL and header shapes ------------------------------------------------------------------

async def test_azure_ga_url_and_headers() -> None:
    async with FakeRealtime() as server:
        client = client_for(azure(server.base))
        await client.connect()
        (s,) = server.sessions
        assert s.path == "/openai/v1/realtime?model=my-realtime"
        assert s.headers["api-key"] == AZ_KEY
        assert "Authorization" not in s.headers
        assert "OpenAI-Beta" not in s.headers
        assert "Sec-WebSocket-Extensions" not in s.headers  # compression=None
        await server.wait_for(lambda srv: srv.types() == ["session.update"])
        await client.close()
        check_conformance(server, "ga")


async def test_azure_preview_url_and_headers() -> None:
    async with FakeRealtime(dialect="preview") as server:
        client = client_for(azure(server.base, version="2025-04-01-preview"))
        await client.connect()
        (s,) = server.sessions
        assert s.path == "/openai/realtime?api-version=2025-04-01-preview&deployment=my-realtime"
        assert s.headers["api-key"] == AZ_KEY
        assert "OpenAI-Beta" not in s.headers
        update = server.sessions[0].events[0]
        assert update["type"] == "session.update"
        assert update["session"]["input_audio_format"] == "pcm16"
        await client.add_user_text("hello")
        await client.create_response()
        await server.wait_for(lambda srv: len(srv.types()) == 3)
        await client.close()
        check_conformance(server, "preview")


async def test_openai_url_and_headers() -> None:
    async with FakeRealtime() as server:
        target = RealtimeSettings.from_env({"OPENAI_API_KEY": OA_KEY,
                                            "OPENAI_REALTIME_URL": server.base}).target()
        client = client_for(target)
        await client.connect()
        (s,) = server.sessions
        assert s.path == "/v1/realtime?model=gpt-realtime"
        assert s.headers["Authorization"] == f"Bearer {OA_KEY}"
        assert "api-key" not in s.headers
        assert "OpenAI-Beta" not in s.headers
        await client.close()


async def test_no_key_or_token_in_any_log_record_or_error(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    token = "eyJ0eXAiOiJKV1QiLCJhbGciOi.ENTRA-TOKEN"

    async def provider() -> str:
        return token

    errors: list[str] = []
    async with FakeRealtime() as server:
        for target, kw in [(azure(server.base), {}),
                           (azure(server.base, version="2025-04-01-preview"), {}),
                           (RealtimeSettings.from_env({"OPENAI_API_KEY": OA_KEY,
                                                       "OPENAI_REALTIME_URL": server.base}
                                                      ).target(), {}),
                           (azure(server.base, key=None), {"token_provider": provider}),
                           # The preview path also takes the key in the query string.
                           (RealtimeTarget("azure-preview", f"{server.base}/openai/realtime?"
                                           "api-version=2025-04-01-preview&deployment=d&"
                                           f"api-key={AZ_KEY}", "preview", AZ_KEY), {})]:
            client = client_for(target, **kw)
            await client.connect()
            client.append_audio(b"\x00" * 960)
            await client.add_user_text("hi")
            events = Events(client)
            await server.drop(1006)
            await events.read_until(ev.Reconnected)
            await client.close()
        # Failures: refused handshake, refused after upgrade, and a failing token provider.
        server.reject_status = 401
        with pytest.raises(RealtimeAuthError) as refused:
            await client_for(azure(server.base)).connect()
        errors.append(str(refused.value))
        server.reject_status = None
        server.close_on_connect = 3000
        with pytest.raises(RealtimeAuthError) as closed:
            await client_for(RealtimeSettings.from_env(
                {"OPENAI_API_KEY": OA_KEY, "OPENAI_REALTIME_URL": server.base}).target()
            ).connect()
        errors.append(str(closed.value))

    async def broken() -> str:
        raise RuntimeError(f"token endpoint said no to {token}")

    with pytest.raises(RealtimeAuthError) as failing:
        await client_for(azure("ws://127.0.0.1:9", key=None), token_provider=broken).connect()
    errors.append(str(failing.value))
    errors.append(repr(failing.value.__cause__))

    ours = [r for r in caplog.records if not r.name.startswith("websockets.server")]
    assert len(ours) > 10  # DEBUG really was captured
    for record in ours:
        text = record.getMessage() + (record.exc_text or "")
        for secret in (AZ_KEY, OA_KEY, token):
            assert secret not in text, (record.name, record.levelname)
    for message in errors:
        for secret in (AZ_KEY, OA_KEY, token):
            assert secret not in message


@pytest.mark.parametrize("url", [
    "ws://127.0.0.1:notaport/openai/realtime?api-version=1&deployment=d&api-key=" + AZ_KEY,
    "wss://[::1/openai/realtime?api-version=1&deployment=d&api-key=" + AZ_KEY,
    "https://127.0.0.1:9/openai/realtime?api-version=1&deployment=d&api-key=" + AZ_KEY,
])
async def test_unusable_url_is_refused_without_showing_its_key(url: str) -> None:
    client = client_for(RealtimeTarget("azure-preview", url, "preview", AZ_KEY),
                        connect_attempts=4)
    with pytest.raises(RealtimeRejected, match="not a usable WebSocket URL") as info:
        await client.connect()
    assert AZ_KEY not in str(info.value)
    assert "api-key=***" in str(info.value)
    assert info.value.__cause__ is None and info.value.__suppress_context__


# -- Entra ID -------------------------------------------------------------------------------

async def test_entra_token_is_fetched_fresh_on_every_connect() -> None:
    calls = 0

    async def provider() -> str:
        nonlocal calls
        calls += 1
        return f"entra-token-{calls}"

    async with FakeRealtime() as server:
        target = azure(server.base, key=None)
        assert target.use_entra
        client = client_for(target, token_provider=provider)
        await client.connect()
        events = Events(client)
        assert server.sessions[0].headers["Authorization"] == "Bearer entra-token-1"
        assert "api-key" not in server.sessions[0].headers
        await server.drop(1006)
        await events.read_until(ev.Reconnected)
        assert server.sessions[1].headers["Authorization"] == "Bearer entra-token-2"
        assert calls == 2
        await client.close()


class FakeAzureCredential:
    """Stands in for ``azure.identity.aio.DefaultAzureCredential``: an async credential
    with ``get_token`` and ``close``, no network. Each token expires inside azure-core's
    300 s refresh window, so the bearer-token provider must fetch a new one per call."""

    made: list[FakeAzureCredential] = []

    def __init__(self, **kwargs: Any) -> None:
        self.scopes: list[tuple[str, ...]] = []
        self.closed = False
        FakeAzureCredential.made.append(self)

    async def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        self.scopes.append(scopes)
        return AccessToken(f"entra-fake-{len(self.scopes)}", int(time.time()) + 200)

    async def close(self) -> None:
        self.closed = True


async def test_entra_through_azure_identity_with_a_fake_credential(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """No key and no token provider given: the client builds its own Entra provider
    (DefaultAzureCredential + get_bearer_token_provider, the real azure-identity code),
    asks for the Cognitive Services scope, presents a refreshed token on the reconnect,
    and closes the credential with the client."""
    monkeypatch.setattr("azure.identity.aio.DefaultAzureCredential", FakeAzureCredential)
    monkeypatch.setattr(FakeAzureCredential, "made", [])
    async with FakeRealtime() as server:
        client = client_for(azure(server.base, key=None))
        await client.connect()
        events = Events(client)
        (credential,) = FakeAzureCredential.made
        assert credential.scopes == [("https://cognitiveservices.azure.com/.default",)]
        assert server.sessions[0].headers["Authorization"] == "Bearer entra-fake-1"
        assert "api-key" not in server.sessions[0].headers
        await server.drop(1011)
        await events.read_until(ev.Reconnected)
        assert server.sessions[1].headers["Authorization"] == "Bearer entra-fake-2"
        assert not credential.closed
        await client.close()
        assert credential.closed
        assert len(FakeAzureCredential.made) == 1  # one credential for the client's life


# -- fatal failures never loop --------------------------------------------------------------

@pytest.mark.parametrize(("status", "error"), [(401, RealtimeAuthError),
                                                (403, RealtimeAuthError),
                                                (400, RealtimeRejected),
                                                (404, RealtimeRejected)])
async def test_http_refusal_is_not_retried(status: int, error: type[Exception]) -> None:
    async with FakeRealtime(reject_status=status) as server:
        client = client_for(azure(server.base), connect_attempts=4)
        with pytest.raises(error, match=f"HTTP {status}"):
            await client.connect()
        assert len(server.sessions) == 1


@pytest.mark.parametrize(("code", "error"), [(3000, RealtimeAuthError),
                                              (4000, RealtimeRejected)])
async def test_close_after_upgrade_is_not_retried(code: int, error: type[Exception]) -> None:
    async with FakeRealtime(close_on_connect=code) as server:
        client = client_for(azure(server.base), connect_attempts=4)
        with pytest.raises(error, match=str(code)):
            await client.connect()
        assert len(server.sessions) == 1


async def test_busy_upstream_is_retried_then_unavailable() -> None:
    async with FakeRealtime(reject_status=429) as server:
        client = client_for(azure(server.base), connect_attempts=3)
        with pytest.raises(RealtimeUnavailable, match="HTTP 429"):
            await client.connect()
        assert len(server.sessions) == 3


async def test_auth_failure_on_reconnect_gives_up_at_once() -> None:
    async with FakeRealtime() as server:
        client = client_for(azure(server.base))
        await client.connect()
        events = Events(client)
        server.reject_status = 401
        await server.drop(1011)
        lost = await events.read_until(ev.UpstreamLost)
        assert lost.fatal_auth
        assert len(server.sessions) == 2  # one refused attempt, no loop
        assert [e.attempt for e in events.seen if isinstance(e, ev.Reconnecting)] == [1]
        await events.drain_to_end()  # the stream ends after UpstreamLost
        await client.close()


async def test_close_3000_mid_call_is_lost_without_reconnect() -> None:
    async with FakeRealtime() as server:
        client = client_for(azure(server.base))
        await client.connect()
        events = Events(client)
        await server.drop(3000)
        lost = await events.read_until(ev.UpstreamLost)
        assert lost.fatal_auth
        assert len(server.sessions) == 1
        assert not [e for e in events.seen if isinstance(e, ev.Reconnecting)]
        await client.close()


async def test_gives_up_when_the_reconnect_budget_runs_out() -> None:
    # Reconnecting is bounded by time, not by a count: attempts go on (jittered back-off)
    # until the budget has passed since the loss, then the leg is lost at once.
    async with FakeRealtime() as server:
        client = client_for(azure(server.base), budget_s=1.0)
        client.recovery = RecoveryPolicy(budget_s=1.0, backoff_s=0.05, backoff_max_s=0.2)
        await client.connect()
        events = Events(client)
        server.reject_status = 503
        lost_at = time.monotonic()
        await server.drop(1006)
        lost = await events.read_until(ev.UpstreamLost)
        took = time.monotonic() - lost_at
        assert not lost.fatal_auth
        assert "1 s reconnect budget" in lost.reason and "HTTP 503" in lost.reason
        attempts = [e.attempt for e in events.seen if isinstance(e, ev.Reconnecting)]
        assert len(attempts) >= 4 and attempts == list(range(1, len(attempts) + 1))
        assert len(server.sessions) == 1 + len(attempts)
        assert 0.9 <= took < 1.8
        await client.close()


async def test_a_budget_of_zero_gives_up_at_once() -> None:
    async with FakeRealtime() as server:
        client = client_for(azure(server.base), budget_s=0.0)
        await client.connect()
        events = Events(client)
        await server.drop(1006)
        lost = await events.read_until(ev.UpstreamLost)
        assert "0 s reconnect budget" in lost.reason
        assert len(server.sessions) == 1        # no attempt at all
        await client.close()


# -- reconnect re-seeds the conversation ----------------------------------------------------

def assistant_turn(rid: str, item: str, text: str, audio_ms: int) -> list[dict[str, Any]]:
    audio = base64.b64encode(b"\x00\x01" * 24 * audio_ms).decode()
    return [
        {"type": "response.created", "event_id": "s", "response": {"id": rid}},
        {"type": "response.output_item.added", "event_id": "s", "response_id": rid,
         "output_index": 0, "item": {"id": item, "type": "message", "role": "assistant"}},
        {"type": "response.output_audio.delta", "event_id": "s", "response_id": rid,
         "item_id": item, "output_index": 0, "content_index": 0, "delta": audio},
        {"type": "response.output_audio_transcript.done", "event_id": "s", "response_id": rid,
         "item_id": item, "output_index": 0, "content_index": 0, "transcript": text},
        {"type": "response.done", "event_id": "s", "response": {"id": rid,
                                                                 "status": "completed"}},
    ]


@pytest.mark.parametrize("code", [1006, 1011, 1001, 1012])
async def test_reconnect_reseeds_session_and_conversation(code: int) -> None:
    async with FakeRealtime() as server:
        client = client_for(azure(server.base))
        await client.connect()
        events = Events(client)
        await client.add_user_text("Hello, I need help with my order")
        for e in [{"type": "input_audio_buffer.committed", "event_id": "s",
                   "item_id": "item_u1"},
                  {"type": "conversation.item.input_audio_transcription.completed",
                   "event_id": "s", "item_id": "item_u1", "content_index": 0,
                   "transcript": "order 42"},
                  *assistant_turn("r1", "item_a1", "Sure, order 42 ships today.", 500)]:
            await server.send(e)
        await events.read_until(ev.ResponseDone)
        if code == 1001:
            await server.send({"type": "error", "event_id": "s", "error": {
                "type": "invalid_request_error", "code": "session_expired",
                "message": "Your session hit the maximum duration of 30 minutes."}})
        await server.drop(code)
        reconnecting = await events.read_until(ev.Reconnecting)
        assert reconnecting.attempt == 1 and str(code) in reconnecting.reason
        if code == 1001:
            assert "session_expired" in reconnecting.reason
        reconnected = await events.read_until(ev.Reconnected)
        assert reconnected.session_id == "sess_2"
        await server.wait_for(lambda srv: len(srv.types()) >= 4)
        assert server.types() == ["session.update", "conversation.item.create",
                                  "conversation.item.create", "conversation.item.create"]
        texts = [(e["item"]["role"], e["item"]["content"][0]["text"])
                 for e in server.sessions[1].events[1:]]
        assert texts == [("user", "Hello, I need help with my order"),
                         ("user", "order 42"),
                         ("assistant", "Sure, order 42 ships today.")]
        # ...and carries on: audio and events flow on the new session.
        client.append_audio(b"\x00\x00" * 480)
        await server.wait_for(lambda srv: "input_audio_buffer.append" in srv.types())
        await server.send({"type": "input_audio_buffer.speech_started", "event_id": "s",
                           "audio_start_ms": 20, "item_id": "item_u9"})
        assert (await events.read_until(ev.SpeechStarted)).item_id == "item_u9"
        assert client.stats.reconnects == 1
        await client.close()
        check_conformance(server, "ga")


async def test_what_happens_during_the_reconnect_handshake_is_in_the_reseed() -> None:
    """The seed is built once the new session is configured: a key the caller pressed
    (text for the model) while the handshake ran is in it, not lost."""
    async with FakeRealtime() as server:
        held = server.hold_update[2] = asyncio.Event()
        client = client_for(azure(server.base))
        await client.connect()
        events = Events(client)
        await client.add_user_text("Hello")
        await server.drop(1006)
        await server.wait_for(lambda srv: len(srv.sessions) == 2 and any(
            e["type"] == "session.update" for e in srv.sessions[1].events))
        await client.add_user_text("caller pressed 5")     # mid-handshake
        held.set()
        await events.read_until(ev.Reconnected)
        await server.wait_for(lambda srv: len(srv.types()) >= 3)
        texts = [e["item"]["content"][0]["text"] for e in server.sessions[1].events
                 if e["type"] == "conversation.item.create"]
        assert texts == ["Hello", "caller pressed 5"]
        await client.close()


async def test_response_running_at_the_drop_is_closed_for_the_call() -> None:
    async with FakeRealtime() as server:
        client = client_for(azure(server.base))
        await client.connect()
        events = Events(client)
        await server.send(assistant_turn("r1", "a1", "x", 100)[0])
        await events.read_until(ev.ResponseCreated)
        assert client.response_active
        await server.drop(1006)
        done = await events.read_until(ev.ResponseDone)
        assert (done.response_id, done.status, done.reason) == ("r1", "failed",
                                                                "connection_lost")
        assert not client.response_active
        await events.read_until(ev.Reconnected)
        await client.close()


async def test_junk_from_the_server_is_skipped_and_the_session_carries_on(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="bridge.realtime")
    async with FakeRealtime() as server:
        client = client_for(azure(server.base))
        await client.connect()
        events = Events(client)
        (conn,) = server.live
        for junk in ['{"type": "response.output_audio.delta", "delta": "AAA',   # cut short
                     "[1, 2, 3]", b"\x00\x01binary",
                     json.dumps({"type": "response.mcp_call.in_progress", "item_id": "x"}),
                     json.dumps({"type": "input_audio_buffer.speech_started",
                                 "item_id": "u0"})]:                # lacks audio_start_ms
            await conn.send(junk)
        await server.send({"type": "input_audio_buffer.speech_started", "event_id": "s",
                           "audio_start_ms": 20, "item_id": "u1", "obfuscation": "zz",
                           "some_future_field": {"nested": [1]}})
        started = await events.read_until(ev.SpeechStarted)
        assert started == ev.SpeechStarted("u1", 20)
        assert [type(e) for e in events.seen] == [ev.SessionReady, ev.SpeechStarted]
        assert client.connected
        assert any("malformed JSON" in r.getMessage() for r in caplog.records)
        await client.close()


# -- responses, tools, barge-in, truncation -------------------------------------------------

async def respond_on_create(server: FakeRealtime, conn: ServerConnection,
                            event: dict[str, Any]) -> None:
    if event["type"] == "response.create":
        n = sum(1 for e in server.all_events() if e["type"] == "response.create")
        await conn.send(json.dumps({"type": "response.created", "event_id": "s",
                                    "response": {"id": f"r{n}"}}))


async def test_create_response_is_queued_while_one_is_active() -> None:
    async with FakeRealtime(responder=respond_on_create) as server:
        client = client_for(azure(server.base))
        await client.connect()
        events = Events(client)
        await client.create_response("first")
        await client.create_response("second")
        await events.read_until(ev.ResponseCreated)
        assert client.response_active
        assert server.types().count("response.create") == 1
        await server.send({"type": "response.done", "event_id": "s",
                           "response": {"id": "r1", "status": "completed"}})
        await server.wait_for(lambda srv: srv.types().count("response.create") == 2)
        creates = [e for e in server.all_events() if e["type"] == "response.create"]
        assert [c["response"]["instructions"] for c in creates] == ["first", "second"]
        await client.close()
        check_conformance(server, "ga")


async def test_create_colliding_with_a_server_response_runs_after_it() -> None:
    async def busy(server: FakeRealtime, conn: ServerConnection, event: dict[str, Any]) -> None:
        if event["type"] == "response.create" and server.types().count("response.create") == 1:
            # Server VAD started a response at the same moment: the create is refused.
            await conn.send(json.dumps({"type": "response.created", "event_id": "s",
                                        "response": {"id": "r_vad"}}))
            await conn.send(json.dumps({"type": "error", "event_id": "s", "error": {
                "type": "invalid_request_error",
                "code": "conversation_already_has_active_response",
                "message": "busy", "event_id": event["event_id"]}}))

    async with FakeRealtime(responder=busy) as server:
        client = client_for(azure(server.base))
        await client.connect()
        events = Events(client)
        await client.create_response("after the tool")
        await events.read_until(ev.ServerError)
        assert client.response_active
        await server.send({"type": "response.done", "event_id": "s",
                           "response": {"id": "r_vad", "status": "completed"}})
        await server.wait_for(lambda srv: srv.types().count("response.create") == 2)
        await client.close()


async def test_barge_in_suppresses_stale_audio_and_tools_of_the_cancelled_response() -> None:
    async with FakeRealtime() as server:
        client = client_for(azure(server.base))
        await client.connect()
        events = Events(client)
        turn = assistant_turn("r1", "a1", "long answer", 200)
        for e in turn[:3]:
            await server.send(e)
        await events.read_until(ev.AudioDelta)
        await server.send({"type": "input_audio_buffer.speech_started", "event_id": "s",
                           "audio_start_ms": 900, "item_id": "u2"})
        await server.send(turn[2])  # still in flight when the server cancelled
        await server.send({"type": "response.output_item.added", "event_id": "s",
                           "response_id": "r1", "output_index": 1,
                           "item": {"id": "f1", "type": "function_call", "name": "hang_up",
                                    "call_id": "c1"}})
        await server.send({"type": "response.output_item.done", "event_id": "s",
                           "response_id": "r1", "output_index": 1,
                           "item": {"id": "f1", "type": "function_call", "name": "hang_up",
                                    "call_id": "c1", "arguments": "{}",
                                    "status": "completed"}})
        await server.send({"type": "response.done", "event_id": "s", "response": {
            "id": "r1", "status": "cancelled",
            "status_details": {"type": "cancelled", "reason": "turn_detected"}}})
        done = await events.read_until(ev.ResponseDone)
        assert done.reason == "turn_detected"
        after = events.seen[events.seen.index(next(e for e in events.seen
                                                   if isinstance(e, ev.SpeechStarted))):]
        assert not [e for e in after if isinstance(e, ev.AudioDelta | ev.FunctionCall)]
        await client.close()


async def test_function_call_tool_output_and_truncation() -> None:
    async with FakeRealtime() as server:
        client = client_for(azure(server.base))
        await client.connect()
        events = Events(client)
        for e in assistant_turn("r1", "a1", "one two three four five six seven eight", 1000):
            await server.send(e)
        await events.read_until(ev.ResponseDone)
        await client.truncate("a1", 5000)      # clamped to the 1000 ms received
        await client.truncate("unknown", 300)  # not an item of this session: not sent
        await client.truncate("a1", 0)         # 0 ms: never sent (the server would refuse)
        await server.send({"type": "response.output_item.added", "event_id": "s",
                           "response_id": "r2", "output_index": 0,
                           "item": {"id": "f1", "type": "function_call",
                                    "name": "transfer_call", "call_id": "c1"}})
        await server.send({"type": "response.output_item.done", "event_id": "s",
                           "response_id": "r2", "output_index": 0,
                           "item": {"id": "f1", "type": "function_call",
                                    "name": "transfer_call", "call_id": "c1",
                                    "arguments": '{"target":"sales"}',
                                    "status": "completed"}})
        call = await events.read_until(ev.FunctionCall)
        assert (call.name, call.call_id, call.arguments) == ("transfer_call", "c1",
                                                            '{"target":"sales"}')
        await client.send_tool_output("c1", '{"ok": true}')
        await server.wait_for(lambda srv: "conversation.item.create" in srv.types())
        truncs = [e for e in server.all_events() if e["type"] == "conversation.item.truncate"]
        assert [(t["item_id"], t["audio_end_ms"], t["content_index"]) for t in truncs] == [
            ("a1", 1000, 0)]
        output = server.sessions[0].events[-1]
        assert output["item"] == {"type": "function_call_output", "call_id": "c1",
                                  "output": '{"ok": true}'}
        assert client.history.texts() == []  # the last report said 0 ms were heard
        await client.close()
        check_conformance(server, "ga")


async def test_tool_output_after_a_reconnect_recreates_the_call_item() -> None:
    async with FakeRealtime() as server:
        client = client_for(azure(server.base))
        await client.connect()
        events = Events(client)
        item = {"id": "f1", "type": "function_call", "name": "lookup", "call_id": "c7",
                "arguments": '{"order": 42}', "status": "completed"}
        await server.send({"type": "response.output_item.added", "event_id": "s",
                           "response_id": "r1", "output_index": 0,
                           "item": {**item, "status": "in_progress"}})
        await server.send({"type": "response.output_item.done", "event_id": "s",
                           "response_id": "r1", "output_index": 0, "item": item})
        call = await events.read_until(ev.FunctionCall)
        await server.drop(1006)  # the tool is still running when the socket drops
        await events.read_until(ev.Reconnected)
        await client.send_tool_output(call.call_id, '{"status": "shipped"}')
        await server.wait_for(lambda srv: len(srv.sessions) == 2 and len(srv.types()) == 3)
        created = [e["item"] for e in server.sessions[1].events[1:]]
        assert created == [
            {"type": "function_call", "call_id": "c7", "name": "lookup",
             "arguments": '{"order": 42}'},
            {"type": "function_call_output", "call_id": "c7", "output": '{"status": "shipped"}'},
        ]
        await client.close()
        check_conformance(server, "ga")


async def test_interrupted_reply_nobody_heard_is_not_reseeded() -> None:
    async with FakeRealtime() as server:
        client = client_for(azure(server.base))
        await client.connect()
        events = Events(client)
        heard, unheard = assistant_turn("r1", "a1", "First answer.", 400), \
            assistant_turn("r2", "a2", "Second answer, cut off.", 400)
        for e in heard:
            await server.send(e)
        await events.read_until(ev.ResponseDone)
        for e in unheard[:4]:
            await server.send(e)
        await events.read_until(ev.TranscriptDone)
        await server.send({"type": "input_audio_buffer.speech_started", "event_id": "s",
                           "audio_start_ms": 100, "item_id": "u1"})
        await events.read_until(ev.SpeechStarted)
        # The call played none of a2, so it reports nothing (no truncate at 0 ms).
        assert client.history.texts() == [("assistant", "First answer.")]
        await client.close()


async def test_cancel_before_the_response_is_created() -> None:
    async with FakeRealtime(responder=respond_on_create) as server:
        client = client_for(azure(server.base))
        await client.connect()
        events = Events(client)
        await client.create_response("hello")
        await client.cancel_response()  # not created yet: cancelled once it is
        created = await events.read_until(ev.ResponseCreated)
        await server.wait_for(lambda srv: "response.cancel" in srv.types())
        await server.send(assistant_turn(created.response_id, "a1", "x", 100)[2])
        await server.send({"type": "response.done", "event_id": "s", "response": {
            "id": created.response_id, "status": "cancelled"}})
        await events.read_until(ev.ResponseDone)
        assert not [e for e in events.seen if isinstance(e, ev.AudioDelta)]
        assert not client.response_active
        await client.close()
        check_conformance(server, "ga")


async def test_truncated_assistant_text_is_reseeded_as_heard() -> None:
    async with FakeRealtime() as server:
        client = client_for(azure(server.base))
        await client.connect()
        events = Events(client)
        for e in assistant_turn("r1", "a1", "one two three four five six seven eight", 1000):
            await server.send(e)
        await events.read_until(ev.ResponseDone)
        await client.truncate("a1", 500)
        await server.drop(1006)
        await events.read_until(ev.Reconnected)
        await server.wait_for(lambda srv: len(srv.sessions) == 2 and len(srv.types()) == 2)
        seeded = server.sessions[1].events[1]["item"]
        assert seeded["role"] == "assistant"
        assert seeded["content"] == [{"type": "output_text", "text": "one two three four"}]
        await client.close()


# -- audio ----------------------------------------------------------------------------------

async def test_append_audio_is_sent_verbatim_and_dropped_before_ready() -> None:
    async with FakeRealtime() as server:
        client = client_for(azure(server.base))
        client.append_audio(b"\x01\x02" * 480)  # before connect: dropped, counted
        await client.connect()
        frames = [bytes([i]) * 960 for i in range(5)]
        for frame in frames:
            client.append_audio(frame)
        await server.wait_for(lambda srv: srv.types().count("input_audio_buffer.append") == 5)
        sent = [base64.b64decode(e["audio"]) for e in server.all_events()
                if e["type"] == "input_audio_buffer.append"]
        assert sent == frames
        assert (client.stats.frames_appended, client.stats.frames_dropped) == (5, 1)
        await client.close()
        client.append_audio(frames[0])  # after close: dropped, no error
        assert client.stats.frames_dropped == 2
        check_conformance(server, "ga")


# -- rotation -------------------------------------------------------------------------------

async def test_session_is_rotated_before_expiry_at_a_quiet_moment() -> None:
    now = [0.0]
    async with FakeRealtime(expires_in_s=1800) as server:
        now[0] = time.time()  # a virtual wall clock
        client = client_for(azure(server.base), rotate_margin_s=120.0,
                            wall_clock=lambda: now[0])
        await client.add_user_text("remember me")
        await client.connect()
        events = Events(client)
        client.set_playout_active(True)
        client.set_playout_active(False)  # quiet, but the rotation is not due yet
        now[0] += 1750  # 50 s before expiry: due
        client.set_playout_active(True)  # not quiet: the due rotation must wait
        assert client.stats.rotation_attempts == 0
        client.set_playout_active(False)
        rotated = await events.read_until(ev.SessionRotated)
        assert (rotated.previous_session_id, rotated.session_id) == ("sess_1", "sess_2")
        await server.wait_for(lambda srv: len(srv.types()) == 2)
        assert server.types(1) == ["session.update", "conversation.item.create"]
        assert client.session_id == "sess_2"
        client.append_audio(b"\x00" * 960)
        await server.wait_for(lambda srv: "input_audio_buffer.append" in srv.types(1))
        assert "input_audio_buffer.append" not in server.types(0)
        await server.wait_for(lambda srv: len(srv.live) == 1)  # the old socket was closed
        assert not [e for e in events.seen if isinstance(e, ev.Reconnecting)]
        await client.close()
        check_conformance(server, "ga")


async def test_rotation_waits_until_response_playout_caller_and_turn_are_all_quiet() -> None:
    """Each busy state on its own holds a due rotation back; the rotation starts at the
    first moment none holds (checked synchronously: every trigger below runs the rotation
    check before the event reaches the call)."""
    async with FakeRealtime(responder=respond_on_create) as server:
        now = [time.time()]
        client = client_for(azure(server.base), rotate_margin_s=120.0,
                            wall_clock=lambda: now[0])
        await client.connect()
        events = Events(client)
        now[0] += 1750  # 50 s before expiry: due from here on
        # A response of the call's own is running.
        await client.create_response("hello")
        await events.read_until(ev.ResponseCreated)
        client.set_playout_active(True)
        client.set_playout_active(False)
        assert client.stats.rotation_attempts == 0
        # Its audio is still playing out when it is done.
        client.set_playout_active(True)
        await server.send({"type": "response.done", "event_id": "s",
                           "response": {"id": "r1", "status": "completed"}})
        await events.read_until(ev.ResponseDone)
        assert client.stats.rotation_attempts == 0
        # The caller starts speaking as the playout ends.
        await server.send({"type": "input_audio_buffer.speech_started", "event_id": "s",
                           "audio_start_ms": 900, "item_id": "u1"})
        await events.read_until(ev.SpeechStarted)
        client.set_playout_active(False)
        assert client.stats.rotation_attempts == 0
        # The caller's turn ends; server VAD is about to answer it on this session.
        turn_end: list[dict[str, Any]] = [
            {"type": "input_audio_buffer.speech_stopped", "event_id": "s",
             "audio_end_ms": 2400, "item_id": "u1"},
            {"type": "input_audio_buffer.committed", "event_id": "s", "item_id": "u1"}]
        for e in turn_end:
            await server.send(e)
        await events.read_until(ev.InputCommitted)
        assert client.stats.rotation_attempts == 0
        # The answer comes and goes: now nothing is happening.
        await server.send({"type": "response.created", "event_id": "s",
                           "response": {"id": "r_vad"}})
        await server.send({"type": "response.done", "event_id": "s",
                           "response": {"id": "r_vad", "status": "completed"}})
        await events.read_until(ev.ResponseDone)
        assert client.stats.rotation_attempts == 1
        rotated = await events.read_until(ev.SessionRotated)
        assert rotated.previous_session_id == "sess_1"
        await client.close()


async def test_an_upstream_that_keeps_dropping_is_given_up() -> None:
    # Every reconnect succeeds, every new session drops again: without a bound on drops
    # the per-drop retry count starts afresh each time and the caller waits for ever.
    async with FakeRealtime() as server:
        client = client_for(azure(server.base), max_drops=2, flap_window_s=60.0)
        await client.connect()
        events = Events(client)
        for _ in range(2):
            await server.drop(1011)
            await events.read_until(ev.Reconnected)
        await server.drop(1011)
        lost = await events.read_until(ev.UpstreamLost)
        assert not lost.fatal_auth
        assert "3 sessions dropped within 60 s" in lost.reason
        assert len(server.sessions) == 3  # no fourth session was opened
        await events.drain_to_end()
        await client.close()


async def test_drops_far_apart_are_each_reconnected() -> None:
    async with FakeRealtime() as server:
        # A window of 0 s: no two drops count together however close they come.
        client = client_for(azure(server.base), max_drops=1, flap_window_s=0.0)
        await client.connect()
        events = Events(client)
        for _ in range(3):
            await server.drop(1006)
            await events.read_until(ev.Reconnected)
        assert client.stats.reconnects == 3
        await client.close()
