"""A G.722 caller to a dialplan that asks for G.711 passthrough: the upstream opened while
ringing is PCM16 (a G.722 leg has no G.711 law to pass through), and the call takes that
same session over, its audio flowing as G.722 both ways."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from bridge.bench.sip import free_udp_port
from bridge.call.clock import MediaClock
from bridge.call.manager import CallManager
from bridge.call.records import MemoryRecordStore
from bridge.realtime.config import RealtimeSettings
from bridge.realtime.emulator import Emulator, EmulatorConfig
from bridge.sip.service import SipLeg, SipService
from bridge.sip.settings import SipSettings
from tests.support.call_harness import make_plans
from tests.support.sip_peers import Uac, udp_peer
from tests.support.waiting import until


@contextlib.asynccontextmanager
async def bridge(tmp: Path, emu: Emulator) -> AsyncIterator[tuple[SipService, CallManager]]:
    target = RealtimeSettings.from_env({}).target(emulator_url=emu.url)
    manager = CallManager(make_plans(tmp, audio_format="g711"), target, MemoryRecordStore(),
                          MediaClock())

    async def on_call(leg: SipLeg) -> None:
        await manager.handle(leg)

    low = free_udp_port() & ~1
    svc = SipService(SipSettings(host="127.0.0.1", port=0, ring_ms=300), on_call,
                     rtp_ports=(low, low + 9), can_admit=manager.can_admit, early=manager)
    await svc.start()
    try:
        yield svc, manager
    finally:
        await manager.shutdown()
        await svc.stop()


def g722_sdp(rtp_port: int) -> bytes:
    return (b"v=0\r\no=phone 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
            + f"m=audio {rtp_port} RTP/AVP 9 0 101\r\n".encode()
            + b"a=rtpmap:9 G722/8000\r\na=rtpmap:0 PCMU/8000\r\n"
            b"a=rtpmap:101 telephone-event/8000\r\n")


async def test_a_g722_call_to_a_g711_plan_uses_its_early_pcm16_session(tmp_path: Path) -> None:
    async with Emulator(EmulatorConfig(greeting_ms=400)) as emu, \
            bridge(tmp_path, emu) as (svc, manager):
        sip, rtp = await udp_peer(), await udp_peer()
        assert sip.transport is not None
        phone = Uac(rport=True)
        target = ("127.0.0.1", svc.port)
        sip.transport.sendto(phone.invite(sdp=g722_sdp(rtp.port)), target)
        await emu.wait_for(lambda r: len(r) == 1 and r.sessions[0].session_updates == 1, 5)
        ok = await sip.recv_sip()
        while ok.status < 200:
            ok = await sip.recv_sip()
        assert ok.status == 200 and b"a=rtpmap:9 G722/8000" in ok.body
        sip.transport.sendto(phone.ack(ok), target)
        first = await asyncio.wait_for(rtp.recv(), 5)          # the greeting, as G.722
        assert first[1] & 0x7F == 9 and len(first) == 12 + 160
        await until(lambda: manager.live == 1, 5)
        call = next(iter(manager.calls.values()))
        assert call.profile.audio_format == "pcm16"
        assert call.record.session_ids == [emu.record.sessions[0].session_id]
        assert len(emu.record.sessions) == 1                    # the early one, taken over
        sip.transport.sendto(phone.in_dialog("BYE"), target)
        await until(lambda: manager.live == 0, 10)
