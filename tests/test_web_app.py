"""The HTTP app in-process (Quart test client) around a real bridge: calls over in-memory
legs against the built-in emulator."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from bridge.call.leg import LegInfo, Source
from bridge.call.memory import MemoryLeg
from bridge.config import Settings, load_settings
from bridge.serve import Bridge
from tests.support.audio import tone
from tests.support.waiting import until

TOKEN = "web-test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def settings_for(tmp_path: Path, **env: str) -> Settings:
    base = {"VOICEBRIDGE_HTTP_PORT": "0", "VOICEBRIDGE_RECORDS_PATH": str(tmp_path / "c.db")}
    settings = load_settings(None, {**base, **env})
    return replace(settings, sip=replace(settings.sip, enabled=False))


@pytest.fixture
async def bridge(tmp_path: Path) -> AsyncIterator[Bridge]:
    async with Bridge(settings_for(tmp_path, VOICEBRIDGE_HTTP_TOKEN=TOKEN), env={}) as b:
        yield b


async def start_call(bridge: Bridge, n: int = 1) -> tuple[MemoryLeg, asyncio.Task[Any], str]:
    leg = MemoryLeg(LegInfo(call_id=f"mem-{n}", source=Source.MEMORY, caller="+15550100",
                            called="100"), clock=bridge.manager.clock)
    task = asyncio.ensure_future(bridge.manager.handle(leg))
    await until(lambda: bool(bridge.manager.calls))
    (call_id,) = [c for c, call in bridge.manager.calls.items() if call.leg is leg]
    return leg, task, call_id


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


PROTECTED = [("GET", "/calls"), ("GET", "/calls/events"), ("GET", "/dashboard"),
             ("GET", "/calls/c_nope"), ("GET", "/calls/c_nope/timeline.svg"),
             ("POST", "/calls/c_nope/hangup")]


async def test_call_data_and_admin_actions_need_the_token(bridge: Bridge) -> None:
    leg, task, call_id = await start_call(bridge)
    client = bridge.app.test_client()
    try:
        for method, path in [*PROTECTED, ("GET", f"/calls/{call_id}"),
                             ("POST", f"/calls/{call_id}/hangup")]:
            for headers in ({}, {"Authorization": "Bearer wrong-token-0123456789"},
                            {"Cookie": "voicebridge_token=wrong"}):
                response = await client.open(path, method=method, headers=headers)
                assert response.status_code == 401, (method, path, headers)
                assert "WWW-Authenticate" in response.headers
        assert call_id in bridge.manager.calls        # the refused hang-up did nothing
        # open routes
        assert (await client.get("/healthz")).status_code == 200
        assert (await client.get("/metrics")).status_code == 200
        assert (await client.get("/")).status_code == 200
        # with the token
        listing = await (await client.get("/calls", headers=AUTH)).get_json()
        assert [c["call_id"] for c in listing["live"]] == [call_id]
        page = await client.get(f"/calls/{call_id}", headers={**AUTH, "Accept": "text/html"})
        assert page.status_code == 200 and "<svg" in await page.get_data(as_text=True)
        data = await (await client.get(f"/calls/{call_id}?format=json", headers=AUTH)).get_json()
        assert data["call_id"] == call_id and data["live"] is True
        hung = await client.post(f"/calls/{call_id}/hangup", headers=AUTH)
        assert hung.status_code == 202
        record = await asyncio.wait_for(task, 10)
        assert record.end_reason == "operator"
        assert (await client.post(f"/calls/{call_id}/hangup", headers=AUTH)).status_code == 404
        listing = await (await client.get("/calls", headers=AUTH)).get_json()
        assert listing["live"] == [] and listing["recent"][0]["call_id"] == call_id
        svg = await client.get(f"/calls/{call_id}/timeline.svg", headers=AUTH)
        assert svg.content_type.startswith("image/svg+xml")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_login_sets_a_cookie_that_opens_the_dashboard(bridge: Bridge) -> None:
    client = bridge.app.test_client()
    assert (await client.get("/login?token=nope")).status_code == 401
    response = await client.get(f"/login?token={TOKEN}")
    assert response.status_code == 302 and response.headers["Location"] == "/dashboard"
    cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert (await client.get("/dashboard")).status_code == 200     # cookie jar
    assert (await client.get("/calls")).status_code == 200


async def test_without_a_configured_token_a_run_token_opens_it_and_nothing_else(
        tmp_path: Path) -> None:
    async with Bridge(settings_for(tmp_path), env={}) as bridge:
        assert bridge.token_generated
        run_token = bridge.settings.http.token
        assert run_token and len(run_token) >= 32 and run_token in bridge.login_url
        client = bridge.app.test_client()
        for method, path in PROTECTED:
            for headers in ({}, AUTH, {"Authorization": "Bearer "}):
                response = await client.open(path, method=method, headers=headers)
                assert response.status_code == 401, (method, path, headers)
        assert (await client.get("/login?token=")).status_code == 401
        ok = await client.get("/calls", headers={"Authorization": f"Bearer {run_token}"})
        assert ok.status_code == 200
    async with Bridge(settings_for(tmp_path), env={}) as other:
        assert other.settings.http.token != run_token          # a new one every run
    async with Bridge(settings_for(tmp_path, VOICEBRIDGE_HTTP_TOKEN=TOKEN), env={}) as fixed:
        assert not fixed.token_generated and fixed.settings.http.token == TOKEN
        assert TOKEN not in fixed.banner()


async def test_softphone_can_be_switched_off_and_cors_is_closed(tmp_path: Path) -> None:
    async with Bridge(settings_for(tmp_path, VOICEBRIDGE_HTTP_SOFTPHONE="false"),
                      env={}) as bridge:
        client = bridge.app.test_client()
        assert (await client.get("/")).status_code == 404
        offer = await client.post("/webrtc/offer", json={"type": "offer", "sdp": "v=0"})
        assert offer.status_code == 404
        response = await client.get("/healthz", headers={"Origin": "https://evil.example"})
        assert "Access-Control-Allow-Origin" not in response.headers
    async with Bridge(settings_for(tmp_path, VOICEBRIDGE_HTTP_CORS_ORIGINS="https://ops.example"),
                      env={}) as bridge:
        client = bridge.app.test_client()
        ok = await client.get("/healthz", headers={"Origin": "https://ops.example"})
        assert ok.headers["Access-Control-Allow-Origin"] == "https://ops.example"
        other = await client.get("/healthz", headers={"Origin": "https://evil.example"})
        assert "Access-Control-Allow-Origin" not in other.headers


async def test_bad_offers_are_refused(bridge: Bridge) -> None:
    client = bridge.app.test_client()
    assert (await client.post("/webrtc/offer", data="not json", headers=AUTH)).status_code == 400
    bad = await client.post("/webrtc/offer", json={"type": "offer", "sdp": "v=0\r\n"},
                            headers=AUTH)
    assert bad.status_code == 400
    assert "error" in await bad.get_json()


async def test_readiness_reports_the_upstream(bridge: Bridge) -> None:
    client = bridge.app.test_client()
    ready = await client.get("/readyz")
    body = await ready.get_json()
    assert ready.status_code == 200 and body["ready"] is True
    assert body["checks"]["upstream"]["ok"] is True
    # the upstream goes away: readiness says so (after the cached answer expires)
    await bridge.emulator.__aexit__(None, None, None)
    bridge._upstream_checked = None
    ready = await client.get("/readyz")
    body = await ready.get_json()
    assert ready.status_code == 503 and body["checks"]["upstream"]["ok"] is False


async def test_metrics_parse_and_move_during_a_call(bridge: Bridge) -> None:
    client = bridge.app.test_client()
    before = samples(await (await client.get("/metrics")).get_data(as_text=True))
    started_key = ("voicebridge_calls_started_total", (("source", "memory"),))
    ended_key = ("voicebridge_calls_ended_total", (("reason", "caller_hangup"),))
    active_key = ("voicebridge_calls_active", (("source", "memory"),))
    leg, task, call_id = await start_call(bridge)
    # the caller speaks, then is silent: the emulator's VAD ends the turn and echoes it
    leg.play(tone(800, freq=300.0, rate=8000, amp=9000))
    leg.play_silence(1500)

    await until(lambda: any(e.role == "agent" and "echo" in e.text
                            for e in bridge.manager.calls[call_id].record.transcript), 20)
    during = samples(await (await client.get("/metrics")).get_data(as_text=True))
    assert during[started_key] == before.get(started_key, 0) + 1
    assert during[active_key] == before.get(active_key, 0) + 1
    connects = ("voicebridge_upstream_connects_total", (("kind", "emulator"),))
    assert during[connects] >= before.get(connects, 0) + 1
    leg.far_end_hangup()
    await asyncio.wait_for(task, 10)
    after = samples(await (await client.get("/metrics")).get_data(as_text=True))
    assert after[ended_key] == before.get(ended_key, 0) + 1
    assert after[active_key] == before.get(active_key, 0)
    latency = ("voicebridge_turn_latency_seconds_count", ())
    assert after[latency] >= before.get(latency, 0) + 1


async def test_sse_streams_call_events(bridge: Bridge) -> None:
    client = bridge.app.test_client()
    async with client.request("/calls/events", headers=AUTH) as connection:
        assert (await asyncio.wait_for(connection.receive(), 5)).startswith(b"retry:")
        leg, task, call_id = await start_call(bridge)
        leg.far_end_hangup()
        await asyncio.wait_for(task, 10)
        seen: list[dict[str, Any]] = []
        buffer = b""

        async def read() -> None:
            nonlocal buffer
            while not any(e.get("type") == "call.ended" for e in seen):
                buffer += await connection.receive()
                while b"\n\n" in buffer:
                    chunk, buffer = buffer.split(b"\n\n", 1)
                    for line in chunk.decode().splitlines():
                        if line.startswith("data: "):
                            seen.append(json.loads(line[6:]))
        await asyncio.wait_for(read(), 10)
        await connection.disconnect()
    assert [e["type"] for e in seen if e["call_id"] == call_id][0] == "call.started"
    assert {"call.started", "call.ended"} <= {e["type"] for e in seen}
