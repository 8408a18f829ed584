"""The dashboard's session and actions over real HTTP (a browser's cookie jar in httpx), and
the start-up banner's exposure warnings from a real bridge."""

from __future__ import annotations

import asyncio
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx

from bridge import metrics
from bridge.bench.sip import free_udp_port
from bridge.call.leg import LegInfo, Source
from bridge.call.memory import MemoryLeg
from bridge.config import load_settings, settings_from_mapping
from bridge.serve import Bridge
from tests.support.waiting import until

TOKEN = "dashboard-exposure-token-0123456789"


async def start_call(bridge: Bridge) -> tuple[asyncio.Task[Any], str]:
    assert bridge.manager is not None
    leg = MemoryLeg(LegInfo(call_id="mem-x", source=Source.MEMORY, caller="+15550100",
                            called="100"), clock=bridge.manager.clock)
    task = asyncio.ensure_future(bridge.manager.handle(leg))
    await until(lambda: bool(bridge.manager and bridge.manager.calls))
    (call_id,) = bridge.manager.calls
    return task, call_id


def refused(reason: str) -> float:
    return float(metrics.HTTP_REFUSED.labels(reason=reason)._value.get())


async def test_a_cross_origin_hang_up_is_refused_and_a_same_origin_one_with_csrf_works(
        tmp_path: Path) -> None:
    settings = load_settings(None, {"VOICEBRIDGE_HTTP_PORT": "0", "VOICEBRIDGE_HTTP_TOKEN": TOKEN,
                                    "VOICEBRIDGE_RECORDS_PATH": str(tmp_path / "c.db")})
    settings = replace(settings, sip=replace(settings.sip, enabled=False))
    origin_before, csrf_before = refused("origin"), refused("csrf")
    async with Bridge(settings, env={}) as bridge, httpx.AsyncClient() as browser:
        task, call_id = await start_call(bridge)
        base = bridge.http_url
        try:
            login = await browser.get(f"{base}/login?token={TOKEN}")
            assert login.status_code == 302
            cookie = login.headers["Set-Cookie"]
            assert cookie.startswith("voicebridge_session=")
            assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
            assert TOKEN not in cookie                      # a signed session, not the token
            page = (await browser.get(f"{base}/dashboard")).text
            csrf = re.search(r'<meta name="csrf-token" content="([^"]+)">', page)
            assert csrf is not None
            hangup = f"{base}/calls/{call_id}/hangup"
            with_csrf = {"X-CSRF-Token": csrf.group(1)}

            # another site's page posting with the operator's session: refused
            evil = await browser.post(hangup, headers={**with_csrf,
                                                       "Origin": "https://evil.example"})
            assert evil.status_code == 403 and evil.json()["detail"].startswith("cross-origin")
            # same origin, but no CSRF token (or a wrong one): refused
            for headers in ({"Origin": base}, {"Origin": base, "X-CSRF-Token": "guess"}):
                assert (await browser.post(hangup, headers=headers)).status_code == 403
            # the raw token as a cookie no longer logs anyone in
            async with httpx.AsyncClient() as stranger:
                old = await stranger.post(hangup, headers={"Cookie": f"voicebridge_token={TOKEN}",
                                                           "Origin": base})
                assert old.status_code == 401
            assert call_id in bridge.manager.calls          # all of that did nothing
            assert refused("origin") == origin_before + 1
            assert refused("csrf") == csrf_before + 2

            ok = await browser.post(hangup, headers={**with_csrf, "Origin": base})
            assert ok.status_code == 202
            record = await asyncio.wait_for(task, 10)
            assert record.end_reason == "operator"
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


def exposed_settings(tmp_path: Path, *, sip_host: str, http_host: str, public: bool,
                     allow_from: list[str]) -> Any:
    low = free_udp_port() & ~1
    return settings_from_mapping({
        "sip": {"host": sip_host, "port": 0, "transports": ["udp"], "allow_from": allow_from},
        "rtp": {"port_low": low, "port_high": low + 9},
        "http": {"host": http_host, "port": 0, "token": TOKEN},
        "webrtc": {"public": public},
        "records": {"path": str(tmp_path / "c.db")},
    }, env={})


async def test_the_banner_warns_about_open_listeners(tmp_path: Path) -> None:
    open_all = exposed_settings(tmp_path, sip_host="0.0.0.0", http_host="0.0.0.0", public=True,
                                allow_from=[])
    async with Bridge(open_all, env={}) as bridge:
        banner = bridge.banner()
    warnings = [line for line in banner.splitlines() if "WARNING" in line]
    assert len(warnings) == 2, banner
    assert "SIP listens on 0.0.0.0 with no allowlist" in warnings[0]
    assert "[sip] allow_from" in warnings[0]
    assert "HTTP listens on 0.0.0.0 and the softphone is public" in warnings[1]
    assert "PUBLIC: anyone who reaches it may call" in banner

    guarded = exposed_settings(tmp_path, sip_host="0.0.0.0", http_host="0.0.0.0", public=False,
                               allow_from=["192.0.2.0/24"])
    async with Bridge(guarded, env={}) as bridge:
        banner = bridge.banner()
    assert "WARNING" not in banner, banner
    assert "calls need the dashboard login or a call token" in banner

    local = exposed_settings(tmp_path, sip_host="127.0.0.1", http_host="127.0.0.1",
                             public=True, allow_from=[])
    async with Bridge(local, env={}) as bridge:
        banner = bridge.banner()
    assert "WARNING" not in banner, banner        # public, but only to this machine
    assert "PUBLIC" in banner
