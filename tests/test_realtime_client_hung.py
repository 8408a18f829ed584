"""A Realtime upstream that hangs with its TCP connection open, against the real client.

The peers are real WebSocket servers on loopback (the test server and the emulator) whose
sockets stop being read, as a stopped process or a stuck proxy behaves: no events, no
pongs, the connection still open. The client must notice within 3 s, drop the socket,
reconnect, and hand the new session the caller's turn that went into the hung one.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from bridge import metrics
from bridge.realtime import events as ev
from bridge.realtime.client import RealtimeClient
from bridge.realtime.config import RealtimeSettings, RealtimeTarget
from bridge.realtime.emulator import Emulator, EmulatorConfig
from bridge.realtime.liveness import LivenessPolicy
from bridge.realtime.profile import SessionProfile, TurnDetection
from bridge.realtime.recovery import RecoveryPolicy
from tests.support.audio import tone
from tests.support.client_events import Events
from tests.support.realtime_server import FakeRealtime


def azure(base: str) -> RealtimeTarget:
    env = {"AZURE_OPENAI_ENDPOINT": base, "AZURE_OPENAI_DEPLOYMENT_NAME": "gpt-realtime",
           "AZURE_OPENAI_API_KEY": "k" * 32}
    return RealtimeSettings.from_env(env).target()


def hung_count(how: str) -> float:
    value = metrics.REGISTRY.get_sample_value(
        "voicebridge_upstream_hung_total", {"kind": "azure", "how": how})
    return value or 0.0


async def test_a_hung_upstream_is_detected_within_3_s_and_reconnected() -> None:
    async with FakeRealtime() as server:
        client = RealtimeClient(azure(server.base), SessionProfile())   # default policy
        await client.connect()
        events = Events(client)
        before = hung_count("keepalive")
        server.hang()
        hung_at = time.monotonic()
        reconnecting = await asyncio.wait_for(events.read_until(ev.Reconnecting), 5.0)
        detected = time.monotonic() - hung_at
        assert detected < 3.0, f"hung upstream noticed after {detected:.2f} s"
        assert "hung" in reconnecting.reason and "nothing received" in reconnecting.reason
        await asyncio.wait_for(events.read_until(ev.Reconnected), 5.0)
        assert len(server.sessions) == 2
        assert client.stats.hung == 1
        assert hung_count("keepalive") == before + 1
        await client.close()


async def test_a_quiet_healthy_session_is_kept() -> None:
    # Nothing to say for 4 s: the pings are answered, so no drop (2 s would be hung).
    async with FakeRealtime() as server:
        client = RealtimeClient(azure(server.base), SessionProfile())
        await client.connect()
        await asyncio.sleep(4.0)
        assert len(server.sessions) == 1 and client.stats.hung == 0
        assert client.connected
        await client.close()


async def test_a_service_that_answers_pings_but_not_requests_trips_the_watchdog() -> None:
    # The socket is alive (pongs come back), the model never answers response.create.
    policy = RecoveryPolicy(liveness=LivenessPolicy(answer_within_s=1.0))
    async with FakeRealtime() as server:              # no responder: nothing answers
        client = RealtimeClient(azure(server.base), SessionProfile(), recovery=policy)
        await client.connect()
        events = Events(client)
        before = hung_count("watchdog")
        started = time.monotonic()
        await client.create_response()
        reconnecting = await asyncio.wait_for(events.read_until(ev.Reconnecting), 5.0)
        assert 0.9 <= time.monotonic() - started < 2.5
        assert "no answer to response.create" in reconnecting.reason
        assert hung_count("watchdog") == before + 1
        await client.close()


PROFILE = SessionProfile(instructions="echo", turn_detection=TurnDetection(
    silence_duration_ms=300))
FRAME = 48 * 20


def speak(client: RealtimeClient, audio: bytes) -> None:
    for at in range(0, len(audio), FRAME):
        client.append_audio(audio[at:at + FRAME])


async def test_a_turn_spoken_into_a_hung_session_is_answered_by_the_next() -> None:
    policy = RecoveryPolicy(liveness=LivenessPolicy(ping_after_s=0.2, dead_after_s=0.8))
    config = EmulatorConfig(pace=0.0)
    async with Emulator(config) as emu:
        target = RealtimeSettings.from_env({}).target(emulator_url=emu.url)
        client = RealtimeClient(target, PROFILE, recovery=policy)
        await client.connect()
        events = Events(client)
        emu.hang()
        # The caller speaks into the hung session: nothing answers.
        speak(client, tone(700, dbfs=-14.0) + b"\x00" * (48 * 100))
        await asyncio.wait_for(events.read_until(ev.Reconnected), 5.0)
        # Live audio goes on after the reconnect (the caller waits in silence)...
        speak(client, b"\x00" * (48 * 600))
        done: Any = await asyncio.wait_for(events.read_until(ev.ResponseDone), 5.0)
        assert done.status == "completed"
        second = emu.record.sessions[1]
        assert second.turns == 1, "the replayed turn was not heard by the new session"
        assert emu.record.sessions[0].turns == 0
        assert client.stats.bytes_replayed >= 48 * 700
        await client.close()
