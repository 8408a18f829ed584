"""Chat Completions: the emulator's endpoints and the bridge's client, over real HTTP.

The emulator serves Chat Completions on its Realtime port; the client streams from it with
httpx-sse. Every chunk and completion the client parses is checked against the openai
package's own models (``ChatCompletionChunk``, ``ChatCompletion``), and every request body
it sends against ``CompletionCreateParams``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from bridge.errors import ChatFailed
from bridge.realtime.chat import ChatClient, ChatTarget, chat_target
from bridge.realtime.config import RealtimeTarget
from bridge.realtime.emulator import Emulator, EmulatorConfig
from bridge.realtime.emulator.summariser import summarise

KEY = "chat-test-key-0123"
SYSTEM = ('Summarise the call. Answer with JSON: {"type": "object", "properties": '
          '{"summary": {"type": "string"}, "disposition": {"type": "string"}, "fields": '
          '{"type": "object", "properties": {"intent": {"type": "string"}, '
          '"order_number": {"type": "string"}}}}}')
CALL = "Caller: I want a refund for my order please\nAgent: Of course, which order?"
MESSAGES = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": CALL}]


@pytest.fixture
async def emu() -> AsyncIterator[Emulator]:
    async with Emulator(EmulatorConfig(api_key=KEY, chat_chunk_ms=5)) as running:
        yield running


def http_base(emu: Emulator) -> str:
    return emu.url.replace("ws://", "http://")


def targets(emu: Emulator) -> dict[str, ChatTarget]:
    host = emu.url.removeprefix("ws://")
    azure = RealtimeTarget("azure", f"ws://{host}/openai/v1/realtime?model=rt", "ga", KEY)
    openai = RealtimeTarget("openai", f"ws://{host}/v1/realtime?model=rt", "ga", KEY)
    return {"/openai/v1/chat/completions": chat_target(azure, "gpt-4o"),
            "/openai/deployments/gpt-4o/chat/completions":
                chat_target(azure, "gpt-4o", api_version="2024-10-21"),
            "/v1/chat/completions": chat_target(openai, "gpt-4o")}


def checked_client(target: ChatTarget, seen: list[Any], **kw: Any) -> ChatClient:
    client = ChatClient(target, **kw)

    def check(chunk: dict[str, Any]) -> None:
        model = (ChatCompletionChunk if chunk.get("object") == "chat.completion.chunk"
                 else ChatCompletion)
        seen.append(model.model_validate(chunk))

    client.on_chunk = check
    return client


@pytest.mark.parametrize("stream", [True, False])
async def test_three_url_shapes_stream_and_not(emu: Emulator, stream: bool) -> None:
    for path, target in targets(emu).items():
        seen: list[Any] = []
        deltas: list[str] = []
        result = await checked_client(target, seen).complete(
            MESSAGES, stream=stream, on_delta=deltas.append)
        request = emu.chat.requests[-1]
        assert (request.path, request.status, request.stream) == (path, 200, stream)
        assert request.model == "gpt-4o"
        answer = json.loads(result.text)
        assert answer["summary"].startswith("The caller said: I want a refund")
        assert answer["fields"] == {"intent": "refund", "order_number": None}
        assert result.finish_reason == "stop" and result.usage["total_tokens"] > 0
        if stream:
            assert len(deltas) > 5 and "".join(deltas) == result.text
            assert all(isinstance(c, ChatCompletionChunk) for c in seen)
            assert len(seen) == len(deltas) + 3      # role, pieces, finish, usage
        else:
            assert deltas == [] and [type(c) for c in seen] == [ChatCompletion]


async def test_request_bodies_are_valid_chat_completions_requests(emu: Emulator) -> None:
    from openai.types.chat import completion_create_params as params  # noqa: PLC0415
    from pydantic import TypeAdapter  # noqa: PLC0415

    target = targets(emu)["/openai/v1/chat/completions"]
    fmt = {"type": "json_schema", "json_schema": {"name": "call_summary", "schema": {
        "type": "object", "properties": {"summary": {"type": "string"}}}}}
    await ChatClient(target).complete(MESSAGES, response_format=fmt)
    body = emu.chat.requests[-1].body
    TypeAdapter(params.CompletionCreateParamsStreaming).validate_python(body)
    assert body["stream"] is True and body["response_format"] == fmt


async def test_a_bad_key_is_401_and_not_retried(emu: Emulator) -> None:
    host = emu.url.removeprefix("ws://")
    wrong = RealtimeTarget("azure", f"ws://{host}/openai/v1/realtime?model=rt", "ga", "nope")
    sleeps: list[float] = []

    async def sleep(s: float) -> None:
        sleeps.append(s)

    with pytest.raises(ChatFailed) as failed:
        await ChatClient(chat_target(wrong, "gpt-4o"), sleep=sleep).complete(MESSAGES)
    assert failed.value.status == 401 and failed.value.attempts == 1 and sleeps == []
    assert [r.status for r in emu.chat.requests] == [401]


async def test_malformed_requests_are_400(emu: Emulator) -> None:
    base = http_base(emu)
    auth = {"api-key": KEY}
    async with httpx.AsyncClient() as http:
        bad_json = await http.post(f"{base}/openai/v1/chat/completions", content=b"{",
                                   headers=auth)
        no_messages = await http.post(f"{base}/v1/chat/completions",
                                      json={"model": "m", "messages": []}, headers=auth)
        no_model = await http.post(f"{base}/v1/chat/completions",
                                   json={"messages": MESSAGES}, headers=auth)
        no_version = await http.post(f"{base}/openai/deployments/d/chat/completions",
                                     json={"messages": MESSAGES}, headers=auth)
        elsewhere = await http.post(f"{base}/openai/v1/embeddings", json={}, headers=auth)
    assert [r.status_code for r in (bad_json, no_messages, no_model, no_version)] == [400] * 4
    assert no_messages.json()["error"]["param"] == "messages"
    assert no_model.json()["error"]["param"] == "model"
    assert no_version.json()["error"]["param"] == "api-version"
    assert elsewhere.status_code == 404


async def test_429_is_retried_after_what_retry_after_says(emu: Emulator) -> None:
    emu.chat.refuse(2, 429, retry_after_s=1.5)
    sleeps: list[float] = []

    async def sleep(s: float) -> None:
        sleeps.append(s)

    seen: list[Any] = []
    client = checked_client(targets(emu)["/v1/chat/completions"], seen, sleep=sleep,
                            backoff_s=0.25)
    result = await client.complete(MESSAGES)
    assert [r.status for r in emu.chat.requests] == [429, 429, 200]
    assert sleeps == [1.5, 1.5]                  # Retry-After, not the 0.25 s back-off
    assert result.attempts == 3 and len(result.errors) == 2
    assert all(e.startswith("429") and "retry after 1.5 s" in e for e in result.errors)
    assert json.loads(result.text)["disposition"] == "handled"


async def test_5xx_backs_off_and_gives_up_after_max_attempts(emu: Emulator) -> None:
    emu.chat.refuse(5, 503)
    sleeps: list[float] = []

    async def sleep(s: float) -> None:
        sleeps.append(s)

    client = ChatClient(targets(emu)["/v1/chat/completions"], sleep=sleep, backoff_s=0.5,
                        max_attempts=3)
    with pytest.raises(ChatFailed) as failed:
        await client.complete(MESSAGES)
    assert failed.value.attempts == 3 and failed.value.status == 503
    assert sleeps == [0.5, 1.0]
    assert [r.status for r in emu.chat.requests] == [503] * 3


async def test_a_refused_connection_is_retried_and_recorded() -> None:
    # A port nobody listens on: every attempt is a network error.
    target = ChatTarget("http://127.0.0.1:9/v1/chat/completions", "m",
                        RealtimeTarget("emulator", "ws://127.0.0.1:9/x", "ga"))
    sleeps: list[float] = []

    async def sleep(s: float) -> None:
        sleeps.append(s)

    with pytest.raises(ChatFailed) as failed:
        await ChatClient(target, sleep=sleep, max_attempts=2).complete(MESSAGES)
    assert failed.value.attempts == 2 and failed.value.status is None
    assert "ConnectError" in str(failed.value) and sleeps == [1.0]


def test_the_summariser_is_deterministic_and_rule_based() -> None:
    angry = summarise(SYSTEM, ["Caller: this is terrible, I want a manager\nAgent: Sorry."])
    assert angry["disposition"] == "escalated"
    happy = summarise(SYSTEM, ["Caller: great, thanks\nAgent: Bye.\nAgent: Bye again."])
    assert happy["disposition"] == "resolved"
    assert happy["summary"] == "The caller said: great, thanks. The agent answered 2 times."
    assert summarise(SYSTEM, ["(nothing)"]) == {
        "summary": "The call ended before anyone spoke.", "disposition": "no_conversation",
        "fields": {"intent": "general", "order_number": None}}


async def test_entra_id_tokens_are_fetched_for_every_attempt(emu: Emulator) -> None:
    host = emu.url.removeprefix("ws://")
    entra = RealtimeTarget("azure", f"ws://{host}/openai/v1/realtime?model=rt", "ga",
                           None, use_entra=True)
    fetched: list[int] = []

    async def token() -> str:           # the emulator takes its key as a bearer token
        fetched.append(1)
        return KEY

    async def no_wait(_s: float) -> None:
        return None

    emu.chat.refuse(1, 429, retry_after_s=0.0)
    result = await ChatClient(chat_target(entra, "gpt-4o"), token_provider=token,
                              sleep=no_wait).complete(MESSAGES)
    assert result.attempts == 2 and len(fetched) == 2
    assert json.loads(result.text)["fields"]["intent"] == "refund"

    async def broken() -> str:
        raise OSError("no credential")

    with pytest.raises(ChatFailed) as failed:
        await ChatClient(chat_target(entra, "gpt-4o"), token_provider=broken).complete(
            MESSAGES)
    assert "Entra ID token request failed (OSError)" in str(failed.value)


async def test_the_whole_request_is_bounded_in_time(emu: Emulator) -> None:
    emu.chat.refuse(10, 429, retry_after_s=5.0)      # real waits, longer than the bound
    client = ChatClient(targets(emu)["/v1/chat/completions"], total_s=1.0, max_attempts=10)
    with pytest.raises(ChatFailed) as failed:
        await client.complete(MESSAGES)
    assert "no answer within 1 s" in str(failed.value) and failed.value.attempts == 1
    assert [r.status for r in emu.chat.requests] == [429]
