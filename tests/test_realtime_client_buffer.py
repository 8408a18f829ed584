"""``input_audio_buffer.clear`` / ``.commit`` from the client, on a real WebSocket, in the
shape the ``openai`` package's models accept."""

from __future__ import annotations

import pytest

from bridge.realtime.client import RealtimeClient
from bridge.realtime.config import RealtimeSettings
from bridge.realtime.profile import SessionProfile
from tests.support.realtime_oracle import validate_client_event
from tests.support.realtime_server import FakeRealtime


@pytest.mark.parametrize("version", [None, "2025-04-01-preview"])
async def test_clear_and_commit_reach_the_server(version: str | None) -> None:
    async with FakeRealtime() as server:
        env = {"AZURE_OPENAI_ENDPOINT": server.base, "AZURE_OPENAI_DEPLOYMENT_NAME": "d",
               "AZURE_OPENAI_API_KEY": "k" * 32}
        if version:
            env["AZURE_OPENAI_API_VERSION"] = version
        target = RealtimeSettings.from_env(env).target()
        client = RealtimeClient(target, SessionProfile())
        await client.connect()
        client.append_audio(bytes(960))
        await client.clear_input_audio()
        await client.commit_input_audio()
        await server.wait_for(lambda s: "input_audio_buffer.commit" in s.types(), 5)
        sent = [e for e in server.all_events() if e["type"].startswith("input_audio_buffer.")
                and e["type"] != "input_audio_buffer.append"]
        assert [e["type"] for e in sent] == ["input_audio_buffer.clear",
                                             "input_audio_buffer.commit"]
        for event in sent:
            validate_client_event(event, target.dialect)
        # Cleared audio is not handed to a later session either.
        assert client.upkeep.replay.take() == []
        await client.close()
