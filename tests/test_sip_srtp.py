"""SRTP with SDES keys on a real ``voicebridge serve``: a Python caller offers RTP/SAVP,
the emulator echoes its tone bursts back through SRTP both ways; a packet with a bad auth
tag (and a plain RTP packet) sent to the call's port is dropped and counted on /metrics;
the policy's 488s (SRTP required without an offer of it, SDES over plain UDP refused by
default, SRTP off) are counted by reason; no key reaches the log."""

from __future__ import annotations

import asyncio
import base64
import math
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from bridge.bench.sip import ServeProcess
from bridge.bench.uac import CallMedia, SipCaller, stream
from bridge.codecs.g711 import ulaw_decode, ulaw_encode
from bridge.codecs.level import dbfs
from tests.support.waiting import until

DIALPLANS = Path(__file__).parent / "data" / "interop" / "dialplans"
DROPPED = "voicebridge_rtp_dropped_total"
REJECTED = "voicebridge_calls_rejected_total"


def burst() -> bytes:
    """µ-law: 1 s of a warbling tone, then 2 s of silence (the emulator echoes the turn)."""
    n = 8000
    tone = struct.pack(f"<{n}h", *(int(7000 * math.sin(2 * math.pi * (220 + 80 * math.sin(
        2 * math.pi * 3 * i / 8000)) * i / 8000)) for i in range(n)))
    return ulaw_encode(tone + bytes(2 * 16000))


@pytest.fixture(scope="module")
def serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    env = {"VOICEBRIDGE_SIP_TRANSPORTS": "udp", "VOICEBRIDGE_SIP_SRTP": "accept",
           "VOICEBRIDGE_SIP_SDES_OVER_PLAIN": "true", "VOICEBRIDGE_LOG_LEVEL": "DEBUG"}
    with ServeProcess(tmp_path_factory.mktemp("serve"), dialplans=DIALPLANS, env=env,
                      log_level="DEBUG") as bridge:
        yield bridge


def loud(call: CallMedia) -> int:
    assert call.heard is not None
    return sum(1 for p in call.heard if dbfs(ulaw_decode(p)) > -30)


@pytest.mark.parametrize("suite", ["AES_CM_128_HMAC_SHA1_80", "AES_CM_128_HMAC_SHA1_32"])
async def test_an_srtp_call_echoes_and_a_bad_tag_is_dropped_and_counted(
        serve: ServeProcess, suite: str) -> None:
    caller = await SipCaller(("127.0.0.1", serve.sip_port)).open()
    try:
        status, call = await caller.invite(suite=suite, keep_audio=True)
        assert status == 200 and call.srtp is not None, serve.log_tail()
        sender = asyncio.ensure_future(stream([call], burst(), 9.0))
        # The echo of our tone comes back, SRTP-protected with the bridge's key.
        await until(lambda: loud(call) >= 20, 25, what=lambda: (
            f"echo heard over SRTP ({loud(call)} loud of {call.packets}, "
            f"{call.refused} refused)\n{serve.log_tail()}"), poll_s=0.2)
        assert call.refused == 0
        before = serve.metric(DROPPED, 'reason="srtp_auth"')
        good = call.packet(b"\xff" * 160)
        call.send_raw(good[:-1] + bytes([good[-1] ^ 0x01]))        # one bit of the tag
        call.send_raw(struct.pack("!BBHII", 0x80, 0, 7, 7 * 160, 99) + b"\xff" * 160)
        await until(lambda: serve.metric(DROPPED, 'reason="srtp_auth"') >= before + 2, 10,
                    what="two SRTP auth drops on /metrics", poll_s=0.2)
        heard = call.packets
        await until(lambda: call.packets > heard + 25, 10, what="the call goes on")
        sender.cancel()
        assert await caller.bye(call) == 200
    finally:
        caller.close()
    log = serve.log_path.read_text()
    assert base64.b64encode(call.local_key).decode()[:20] not in log


async def offer_status(serve: ServeProcess, **kwargs: object) -> int:
    caller = await SipCaller(("127.0.0.1", serve.sip_port)).open()
    try:
        status, call = await caller.invite(**kwargs)  # type: ignore[arg-type]
        if status == 200:
            await caller.bye(call)
        return status
    finally:
        caller.close()


async def test_policy_refusals_are_488_and_counted(tmp_path: Path) -> None:
    env = {"VOICEBRIDGE_SIP_TRANSPORTS": "udp", "VOICEBRIDGE_SIP_SRTP": "require"}
    with ServeProcess(tmp_path / "require", dialplans=DIALPLANS, env=env) as bridge:
        # Required, but offered plain RTP.
        assert await offer_status(bridge) == 488
        assert bridge.metric(REJECTED, 'reason="sip_srtp_required"') == 1
        # SRTP offered, but its key came over plain UDP: refused by default.
        assert await offer_status(bridge, suite="AES_CM_128_HMAC_SHA1_80") == 488
        assert bridge.metric(REJECTED, 'reason="sip_sdes_over_plain"') == 1
    env = {"VOICEBRIDGE_SIP_TRANSPORTS": "udp", "VOICEBRIDGE_SIP_SRTP": "off",
           "VOICEBRIDGE_SIP_SDES_OVER_PLAIN": "true"}
    with ServeProcess(tmp_path / "off", dialplans=DIALPLANS, env=env) as bridge:
        assert await offer_status(bridge, suite="AES_CM_128_HMAC_SHA1_32") == 488
        assert bridge.metric(REJECTED, 'reason="sip_srtp_off"') == 1
        assert await offer_status(bridge) == 200                 # plain RTP is fine


async def test_a_reinvite_rekeys_the_call_and_the_echo_goes_on(serve: ServeProcess) -> None:
    caller = await SipCaller(("127.0.0.1", serve.sip_port)).open()
    try:
        status, call = await caller.invite(suite="AES_CM_128_HMAC_SHA1_80", keep_audio=True)
        assert status == 200
        sender = asyncio.ensure_future(stream([call], burst(), 20.0))
        await until(lambda: loud(call) >= 20, 25, what="echo before re-keying", poll_s=0.2)
        old = call.srtp
        assert await caller.reinvite(call, suite="AES_CM_128_HMAC_SHA1_32") == 200
        assert call.srtp is not old and call.srtp is not None
        assert call.srtp.suite == "AES_CM_128_HMAC_SHA1_32"
        await asyncio.sleep(0.5)                  # packets in flight with the old keys
        assert call.heard is not None
        call.heard.clear()
        refused = call.refused
        await until(lambda: loud(call) >= 20, 25, what=lambda: (
            f"echo after re-keying ({loud(call)} loud, {call.refused} refused)\n"
            f"{serve.log_tail()}"), poll_s=0.2)
        assert call.refused == refused            # everything now unprotects with new keys
        # Switching the call to plain RTP is refused; the SRTP call goes on.
        call_suite = call.suite
        call.suite = None
        assert await caller.reinvite(call) == 488
        call.suite = call_suite
        sender.cancel()
        assert await caller.bye(call) == 200
    finally:
        caller.close()


async def test_a_trunk_policy_overrides_the_default(tmp_path: Path) -> None:
    # The default refuses SRTP; the trunk the caller's address belongs to requires it.
    config = tmp_path / "voicebridge.toml"
    config.write_text('[sip]\nsrtp = "off"\n\n[[sip.trunks]]\nname = "loopback"\n'
                      'match = ["127.0.0.0/8"]\nsrtp = "require"\nsdes_over_plain = true\n')
    env = {"VOICEBRIDGE_SIP_TRANSPORTS": "udp", "VOICEBRIDGE_CONFIG": str(config)}
    with ServeProcess(tmp_path / "serve", dialplans=DIALPLANS, env=env) as bridge:
        assert await offer_status(bridge, suite="AES_CM_128_HMAC_SHA1_32") == 200
        assert await offer_status(bridge) == 488
        assert bridge.metric(REJECTED, 'reason="sip_srtp_required"') == 1
        assert "trunk loopback" in bridge.log_path.read_text()
