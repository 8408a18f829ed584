"""End to end in real headless Chromium: softphone page -> WebRTC -> bridge -> emulator.

The page calls as the operator: logged in at ``/login``, it asks ``POST /webrtc/token``
for a single-use call token (with the session's CSRF token) and offers with it; before
the login it says so instead of calling.

Chromium is Debian's (``/usr/bin/chromium``) driven by Playwright; no browser download.
Its microphone is a WAV file of a spoken phrase made at test time with espeak-ng + sox.
"""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import async_playwright

from bridge import metrics
from bridge.config import load_settings
from bridge.serve import Bridge
from tests.support.interop import require_binary
from tests.support.waiting import until

pytestmark = [pytest.mark.interop, pytest.mark.slow]

TOKEN = "chromium-test-token-0123456789"
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
#: Between checks of state that lives in the browser (each check is a round trip to it).
BROWSER_POLL_S = 0.1


def phrase_wav(tmp: Path) -> Path:
    espeak = require_binary("espeak-ng", "speaks the caller's phrase")
    sox = require_binary("sox", "converts it to 48 kHz mono")
    raw = tmp / "phrase-raw.wav"
    out = tmp / "phrase.wav"
    subprocess.run([espeak, "-w", str(raw), "Hello, I would like to check my order please."],
                   check=True, capture_output=True)
    # 48 kHz mono 16-bit, with silence around it so the emulator's VAD hears a turn end
    subprocess.run([sox, str(raw), "-r", "48000", "-c", "1", "-b", "16", str(out),
                    "pad", "0.5", "2.5"], check=True, capture_output=True)
    return out


@pytest.fixture
async def bridge(tmp_path: Path) -> AsyncIterator[Bridge]:
    settings = load_settings(None, {"VOICEBRIDGE_HTTP_PORT": "0",
                                    "VOICEBRIDGE_HTTP_TOKEN": TOKEN,
                                    "VOICEBRIDGE_RECORDS_PATH": str(tmp_path / "calls.db")})
    settings = replace(settings, sip=replace(settings.sip, enabled=False))
    async with Bridge(settings, env={}) as running:
        yield running


async def error_shown(page: Any) -> bool:
    return bool(await page.get_attribute("#state", "data-state") == "error")


INBOUND_ENERGY = """async () => {
  const pc = window.softphone.pc;
  if (!pc) return 0;
  const stats = await pc.getStats();
  let energy = 0;
  stats.forEach((s) => { if (s.type === "inbound-rtp" && s.kind === "audio")
                           energy = s.totalAudioEnergy || 0; });
  return energy;
}"""


async def test_softphone_calls_the_echo_agent(bridge: Bridge, tmp_path: Path) -> None:
    chromium = require_binary("chromium", "the WebRTC caller")
    wav = phrase_wav(tmp_path)
    ARTIFACTS.mkdir(exist_ok=True)
    args = [
        "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
        f"--use-file-for-fake-audio-capture={wav}",
        "--autoplay-policy=no-user-gesture-required", "--no-sandbox", "--disable-gpu",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--no-first-run", "--disable-features=WebRtcHideLocalIpsWithMdns",
    ]
    frames_in = metrics.FRAMES_IN.labels(source="webrtc")
    frames_before = frames_in._value.get()
    async with async_playwright() as p:
        context = await p.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=chromium, headless=True, args=args,
            viewport={"width": 1100, "height": 720})
        try:
            page = await context.new_page()
            await page.goto(f"{bridge.http_url}/")
            await page.click("#call")               # not logged in: no call token
            await until(lambda: error_shown(page), 15, what="the login-needed error",
                        poll_s=BROWSER_POLL_S)
            assert "operator's login" in await page.inner_text("#info")
            assert not bridge.manager.calls and not bridge.emulator.record.sessions
            tokens = bridge.app.extensions["voicebridge"].tokens
            await page.goto(f"{bridge.http_url}/login?token={TOKEN}")
            await page.goto(f"{bridge.http_url}/")
            await page.click("#call")

            async def connected() -> bool:
                return await page.get_attribute("#state", "data-state") == "connected"
            await until(connected, 20, what="the call to connect", poll_s=BROWSER_POLL_S)

            # The emulator echoes the caller's phrase: inbound audio energy grows.
            first = await page.evaluate(INBOUND_ENERGY)

            async def energy_grew() -> bool:
                return float(await page.evaluate(INBOUND_ENERGY)) > float(first) + 0.01
            await until(energy_grew, 30, what="inbound audio energy during the reply",
                        poll_s=BROWSER_POLL_S)

            async def agent_said_something() -> bool:
                return await page.locator("#transcript li.agent").count() > 0
            await until(agent_said_something, 30, what="the agent's transcript on the page",
                        poll_s=BROWSER_POLL_S)

            events = await page.evaluate("window.softphone.events")
            call_id = next(e["call_id"] for e in events if e["type"] == "call.started")
            assert call_id in bridge.manager.calls
            assert len(tokens) == 0                 # the page's call token was spent

            await page.click('#keypad .key[data-digit="5"]')

            async def dtmf_reached_the_dialplan() -> bool:
                call = bridge.manager.calls.get(call_id)
                return call is not None and any(d.digit == "5" for d in call.record.dtmf)
            await until(dtmf_reached_the_dialplan, 10, what="DTMF 5 in the call record",
                        poll_s=BROWSER_POLL_S)
            await page.screenshot(path=str(ARTIFACTS / "softphone.png"))

            await page.click("#hangup")

            async def call_freed() -> bool:
                webrtc = bridge.app.extensions["voicebridge"].webrtc
                return call_id not in bridge.manager.calls and not webrtc.tasks
            await until(call_freed, 15, what="the call to end and its leg to close",
                        poll_s=BROWSER_POLL_S)
            assert await page.get_attribute("#state", "data-state") == "ended"
            record = await bridge.manager.store.get(call_id)
            assert record is not None and record.end_reason == "caller_hangup"
            assert record.end_detail == "bye"      # the page's bye channel, not a timeout
            assert any(d.digit == "5" and d.direction == "in" for d in record.dtmf)
            assert any(e.role == "agent" for e in record.transcript)
            assert metrics.WEBRTC_LEGS_ACTIVE._value.get() == 0
            assert frames_in._value.get() > frames_before + 50

            # The dashboard's call page, logged in through the session cookie.
            await page.goto(f"{bridge.http_url}/calls/{call_id}")
            assert await page.locator("svg.timeline rect.speech.agent").count() >= 1
            await page.screenshot(path=str(ARTIFACTS / "call-page.png"), full_page=True)
            await page.goto(f"{bridge.http_url}/dashboard")
            assert await page.locator(f'#recent tr[data-call="{call_id}"]').count() == 1
            await page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)

            # Failures are said plainly: the microphone refused, the bridge unreachable.
            denied = await context.new_page()
            await denied.add_init_script(
                "navigator.mediaDevices.getUserMedia = () => Promise.reject("
                "new DOMException('Permission denied', 'NotAllowedError'));")
            await denied.goto(f"{bridge.http_url}/")
            await denied.click("#call")
            await until(lambda: error_shown(denied), 10, what="the microphone error",
                        poll_s=BROWSER_POLL_S)
            assert "blocked the microphone" in await denied.inner_text("#info")
            await denied.screenshot(path=str(ARTIFACTS / "softphone-mic-denied.png"))
            assert not await denied.is_disabled("#call")        # can try again

            gone = await context.new_page()
            await gone.goto(f"{bridge.http_url}/")
            await gone.route("**/webrtc/offer", lambda route: route.abort())
            await gone.click("#call")
            await until(lambda: error_shown(gone), 15, what="the unreachable-bridge error",
                        poll_s=BROWSER_POLL_S)
            assert "Cannot reach the bridge" in await gone.inner_text("#info")
            await gone.screenshot(path=str(ARTIFACTS / "softphone-unreachable.png"))
            assert not bridge.manager.calls
        finally:
            await context.close()
