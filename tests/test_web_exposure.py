"""Who may call from a browser, over real HTTP and real aiortc peers on loopback, against a
real bridge and its in-process emulator: anonymous offers refused and never upstream, call
tokens single-use and short-lived, offers rate-limited, dialplans restricted, and no
Realtime session before the leg's ICE and DTLS connect."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import httpx
import pytest

from bridge import metrics
from bridge.config import Settings, load_settings
from bridge.errors import ConfigError
from bridge.serve import Bridge
from bridge.webrtc.client import WebRtcCaller
from tests.support.audio import tone
from tests.support.waiting import until

TOKEN = "exposure-test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
BAD_SDP = {"type": "offer", "sdp": "v=0\r\n"}


def settings_for(tmp_path: Path, **env: str) -> Settings:
    base = {"VOICEBRIDGE_HTTP_PORT": "0", "VOICEBRIDGE_RECORDS_PATH": str(tmp_path / "c.db"),
            "VOICEBRIDGE_HTTP_TOKEN": TOKEN}
    settings = load_settings(None, {**base, **env})
    return replace(settings, sip=replace(settings.sip, enabled=False))


def rejected(reason: str) -> float:
    return float(metrics.CALLS_REJECTED.labels(reason=reason)._value.get())


def sessions(bridge: Bridge) -> int:
    assert bridge.emulator is not None
    return len(bridge.emulator.record.sessions)


@pytest.fixture
async def bridge(tmp_path: Path) -> AsyncIterator[Bridge]:
    settings = settings_for(tmp_path, VOICEBRIDGE_WEBRTC_MEDIA_TIMEOUT_MS="4000",
                            VOICEBRIDGE_WEBRTC_RATE_BURST="20")
    async with Bridge(settings, env={}) as running:
        yield running


async def logged_in(client: httpx.AsyncClient, bridge: Bridge) -> str:
    """Log ``client`` in (its cookie jar keeps the session); the page's CSRF token."""
    assert (await client.get(f"{bridge.http_url}/login?token={TOKEN}")).status_code == 302
    page = (await client.get(f"{bridge.http_url}/")).text
    found = re.search(r'"csrf": "([^"]+)"', page)
    assert found, "the softphone page carries the session's CSRF token"
    return found.group(1)


async def call_token(client: httpx.AsyncClient, bridge: Bridge, csrf: str) -> str:
    response = await client.post(f"{bridge.http_url}/webrtc/token",
                                 headers={"X-CSRF-Token": csrf})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["expires_in"] == bridge.settings.webrtc.call_token_ttl_s
    return str(body["token"])


async def test_an_anonymous_offer_is_refused_and_never_reaches_the_realtime_api(
        bridge: Bridge) -> None:
    legs_before = metrics.WEBRTC_LEGS_ACTIVE._value.get()
    before = rejected("webrtc_unauthorized")
    for token in ("", "wrong-token-0123456789"):
        caller = WebRtcCaller(bridge.http_url, pcm=tone(400, freq=440, rate=8000), token=token)
        try:
            with pytest.raises(httpx.HTTPStatusError) as refused:
                await caller.call()
            assert refused.value.response.status_code == 401
            assert "call token" in refused.value.response.json()["error"]
        finally:
            await caller.close()
    assert rejected("webrtc_unauthorized") == before + 2
    # no leg was made, no call started, no upstream session opened
    assert metrics.WEBRTC_LEGS_ACTIVE._value.get() == legs_before
    assert not bridge.manager.calls and sessions(bridge) == 0
    webrtc = bridge.app.extensions["voicebridge"].webrtc
    assert not webrtc.tasks
    # a token request without the operator's session is refused as well
    async with httpx.AsyncClient() as client:
        assert (await client.post(f"{bridge.http_url}/webrtc/token")).status_code == 401


async def test_no_realtime_session_before_ice_and_dtls_connect(bridge: Bridge) -> None:
    """An answered offer whose ICE never completes (the answer is never applied) is closed
    after the media timeout and never opens an upstream session; a caller that completes
    ICE gets its session once connected."""
    webrtc = bridge.app.extensions["voicebridge"].webrtc
    before = rejected("webrtc_media_timeout")
    silent = WebRtcCaller(bridge.http_url)
    try:
        async with httpx.AsyncClient() as client:
            offer = {"type": "offer", "sdp": await silent.make_offer()}
            answered = await client.post(f"{bridge.http_url}/webrtc/offer", json=offer,
                                         headers=AUTH)
        assert answered.status_code == 200 and answered.json()["type"] == "answer"
        assert len(webrtc.tasks) == 1                       # the leg waits for its media
        await until(lambda: not webrtc.tasks, 15, what="the leg to time out")
        assert rejected("webrtc_media_timeout") == before + 1
        assert sessions(bridge) == 0 and not bridge.manager.calls
    finally:
        await silent.close()

    caller = WebRtcCaller(bridge.http_url, pcm=tone(400, freq=440, rate=8000), token=TOKEN)
    try:
        await caller.call()
        await until(lambda: bool(bridge.manager.calls), 15, what="the call to start")
        await until(lambda: sessions(bridge) == 1, 15, what="its Realtime session")
        assert caller.pc.connectionState == "connected"
    finally:
        await caller.hang_up()
    await until(lambda: not webrtc.tasks and not bridge.manager.calls, 15)
    assert rejected("webrtc_media_timeout") == before + 1


async def test_a_call_token_works_once_only(bridge: Bridge) -> None:
    async with httpx.AsyncClient() as client:
        csrf = await logged_in(client, bridge)
        # the session alone does not place a call, nor does it get a token without CSRF
        plain = await client.post(f"{bridge.http_url}/webrtc/offer", json=BAD_SDP)
        assert plain.status_code == 401
        assert (await client.post(f"{bridge.http_url}/webrtc/token")).status_code == 403
        foreign = await client.post(f"{bridge.http_url}/webrtc/token",
                                    headers={"X-CSRF-Token": csrf,
                                             "Origin": "https://evil.example"})
        assert foreign.status_code == 403
        token = await call_token(client, bridge, csrf)
        assert token != TOKEN and TOKEN not in token
    caller = WebRtcCaller(bridge.http_url, pcm=tone(400, freq=440, rate=8000), token=token)
    try:
        answer = await caller.call()
        assert answer["type"] == "answer"
        await until(lambda: bool(bridge.manager.calls), 15, what="the call to start")
    finally:
        await caller.hang_up()
    before = rejected("webrtc_unauthorized")
    again = WebRtcCaller(bridge.http_url, token=token)
    try:
        with pytest.raises(httpx.HTTPStatusError) as refused:
            await again.call()
        assert refused.value.response.status_code == 401
    finally:
        await again.close()
    assert rejected("webrtc_unauthorized") == before + 1


async def test_a_call_token_expires(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, VOICEBRIDGE_WEBRTC_CALL_TOKEN_TTL_S="2")
    async with Bridge(settings, env={}) as bridge, httpx.AsyncClient() as client:
        csrf = await logged_in(client, bridge)
        stale = await call_token(client, bridge, csrf)
        issued = asyncio.get_running_loop().time()
        fresh = await call_token(client, bridge, csrf)
        # in time: past the authorization (the SDP is then refused as malformed)
        ok = await client.post(f"{bridge.http_url}/webrtc/offer", json=BAD_SDP,
                               headers={"Authorization": f"Bearer {fresh}"})
        assert ok.status_code == 400
        await asyncio.sleep(max(0.0, issued + 2.5 - asyncio.get_running_loop().time()))
        late = await client.post(f"{bridge.http_url}/webrtc/offer", json=BAD_SDP,
                                 headers={"Authorization": f"Bearer {stale}"})
        assert late.status_code == 401
        assert sessions(bridge) == 0


async def test_offers_and_tokens_are_rate_limited_per_address(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, VOICEBRIDGE_WEBRTC_RATE_PER_MINUTE="6",
                            VOICEBRIDGE_WEBRTC_RATE_BURST="2")
    before = rejected("webrtc_rate_limited")
    async with Bridge(settings, env={}) as bridge, httpx.AsyncClient() as client:
        url = f"{bridge.http_url}/webrtc/offer"
        statuses = [(await client.post(url, json=BAD_SDP, headers=AUTH)).status_code
                    for _ in range(2)]
        assert statuses == [400, 400]                   # the burst: through to the SDP check
        limited = await client.post(url, json=BAD_SDP, headers=AUTH)
        assert limited.status_code == 429
        wait = int(limited.headers["Retry-After"])
        assert 1 <= wait <= 10                          # one token refills in 10 s at 6/min
        token = await client.post(f"{bridge.http_url}/webrtc/token", headers=AUTH)
        assert token.status_code == 429 and "Retry-After" in token.headers
        # the operator's pages are not rate-limited
        assert (await client.get(f"{bridge.http_url}/calls", headers=AUTH)).status_code == 200
    assert rejected("webrtc_rate_limited") == before + 2


async def test_the_browser_reaches_only_the_allowed_dialplans(tmp_path: Path) -> None:
    before = rejected("webrtc_dialplan")
    async with Bridge(settings_for(tmp_path), env={}) as bridge, httpx.AsyncClient() as client:
        url = f"{bridge.http_url}/webrtc/offer"
        # the front desk (called 2000) is not for browsers by default: 403 before any SDP
        desk = await client.post(url, json={**BAD_SDP, "called": "2000"}, headers=AUTH)
        assert desk.status_code == 403 and "cannot be called" in desk.json()["error"]
        # any number that lands on the default dialplan goes on (to the SDP check)
        for called in ("", "12345"):
            other = await client.post(url, json={**BAD_SDP, "called": called}, headers=AUTH)
            assert other.status_code == 400, called
    assert rejected("webrtc_dialplan") == before + 1
    opened = settings_for(tmp_path, VOICEBRIDGE_WEBRTC_DIALPLANS="front-desk")
    async with Bridge(opened, env={}) as bridge, httpx.AsyncClient() as client:
        url = f"{bridge.http_url}/webrtc/offer"
        desk = await client.post(url, json={**BAD_SDP, "called": "2000"}, headers=AUTH)
        assert desk.status_code == 400                  # allowed now
        echo = await client.post(url, json=BAD_SDP, headers=AUTH)
        assert echo.status_code == 403                  # the list replaces the default
    with pytest.raises(ConfigError, match="no dialplan named 'nope'"):
        async with Bridge(settings_for(tmp_path, VOICEBRIDGE_WEBRTC_DIALPLANS="nope"), env={}):
            pass


async def test_a_public_softphone_needs_no_token(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, VOICEBRIDGE_WEBRTC_PUBLIC="true")
    async with Bridge(settings, env={}) as bridge, httpx.AsyncClient() as client:
        offer = await client.post(f"{bridge.http_url}/webrtc/offer", json=BAD_SDP)
        assert offer.status_code == 400                 # past the authorization
        token = await client.post(f"{bridge.http_url}/webrtc/token")
        assert token.status_code == 200 and token.json()["token"]
        page = (await client.get(f"{bridge.http_url}/")).text
        assert '"public": true' in page
        foreign = await client.post(f"{bridge.http_url}/webrtc/offer", json=BAD_SDP,
                                    headers={"Origin": "https://evil.example"})
        assert foreign.status_code == 403


async def test_offers_over_the_leg_limit_are_busy(tmp_path: Path) -> None:
    before = rejected("webrtc_busy")
    settings = settings_for(tmp_path, VOICEBRIDGE_WEBRTC_MAX_LEGS="0")
    async with Bridge(settings, env={}) as bridge, httpx.AsyncClient() as client:
        busy = await client.post(f"{bridge.http_url}/webrtc/offer", json=BAD_SDP, headers=AUTH)
        assert busy.status_code == 503 and busy.headers["Retry-After"] == "5"
    assert rejected("webrtc_busy") == before + 1
