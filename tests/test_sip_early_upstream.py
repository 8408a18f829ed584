"""A SIP call's upstream opens while its INVITE is answered, not after the ACK.

In-process ``SipService`` and ``CallManager`` with the emulator over a real WebSocket and a
Python caller on loopback UDP: the Realtime session exists while the phone is still
ringing, the call takes it over (one session in all), and a call cancelled while ringing
closes its session.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
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
from tests.support.sip_peers import Uac, UdpPeer, caller_sdp, udp_peer
from tests.support.waiting import until


@contextlib.asynccontextmanager
async def bridge(tmp: Path, emu: Emulator, ring_ms: int = 800,
                 answer_wait_ms: int = 2000) -> AsyncIterator[tuple[SipService, CallManager]]:
    target = RealtimeSettings.from_env({}).target(emulator_url=emu.url)
    manager = CallManager(make_plans(tmp), target, MemoryRecordStore(), MediaClock())

    async def on_call(leg: SipLeg) -> None:
        await manager.handle(leg)

    low = free_udp_port() & ~1
    settings = SipSettings(host="127.0.0.1", port=0, ring_ms=ring_ms,
                           answer_wait_ms=answer_wait_ms)
    svc = SipService(settings, on_call,
                     rtp_ports=(low, low + 9), can_admit=manager.can_admit, early=manager)
    await svc.start()
    try:
        yield svc, manager
    finally:
        await manager.shutdown()
        await svc.stop()


async def invite(svc: SipService) -> tuple[UdpPeer, UdpPeer, Uac, tuple[str, int]]:
    """A caller on loopback sends its INVITE: its SIP and RTP sockets, its UAC state and
    where it sends to."""
    sip, rtp = await udp_peer(), await udp_peer()
    assert sip.transport is not None
    alice = Uac(rport=True)
    target = ("127.0.0.1", svc.port)
    sip.transport.sendto(alice.invite(sdp=caller_sdp(rtp.port)), target)
    return sip, rtp, alice, target


async def test_the_session_is_ready_while_ringing_and_the_call_uses_it(tmp_path: Path) -> None:
    async with Emulator(EmulatorConfig(greeting_ms=400)) as emu, \
            bridge(tmp_path, emu) as (svc, manager):
        sip, rtp, alice, target = await invite(svc)
        assert (await sip.recv_sip()).status == 100
        assert (await sip.recv_sip()).status == 180              # ringing for 0.8 s ...
        await emu.wait_for(lambda r: len(r) == 1 and r.sessions[0].session_updates == 1, 5)
        assert manager.live == 0                                 # ... session ready, no call
        ok = await sip.recv_sip()
        assert ok.status == 200
        sip.transport.sendto(alice.ack(ok), target)
        first = await asyncio.wait_for(rtp.recv(), 5)           # media flows at once
        assert len(first) == 12 + 160
        await until(lambda: manager.live == 1, 5)
        call = next(iter(manager.calls.values()))
        assert call.record.session_ids == [emu.record.sessions[0].session_id]
        sip.transport.sendto(alice.in_dialog("BYE"), target)
        await until(lambda: manager.live == 0, 10)
        assert len(emu.record) == 1 and manager.early.taken == 1


async def test_a_call_cancelled_while_ringing_closes_its_session(tmp_path: Path) -> None:
    async with Emulator(EmulatorConfig()) as emu, bridge(tmp_path, emu) as (svc, manager):
        sip, rtp, alice, target = await invite(svc)
        assert (await sip.recv_sip()).status == 100
        assert (await sip.recv_sip()).status == 180
        await emu.wait_for(lambda r: len(r) == 1, 5)
        sip.transport.sendto(alice.cancel(), target)
        await emu.wait_for(lambda r: r.sessions[0].close_code is not None, 5)
        assert manager.live == 0 and len(manager.early) == 0 and manager.early.dropped == 1


def voiced(packet: bytes) -> bool:
    """A µ-law RTP payload with sound in it (not the 0xff/0x7f of silence)."""
    return sum(1 for b in packet[12:] if b not in (0xFF, 0x7F, 0xFE, 0x7E)) > 40


async def test_without_ringing_the_call_is_answered_once_its_session_is_ready(
        tmp_path: Path) -> None:
    # The session takes 600 ms to open (as a cloud one does): the caller hears ringing,
    # not 600 ms of dead air after the answer.
    async with Emulator(EmulatorConfig(greeting_ms=400, open_delay_ms=600)) as emu, \
            bridge(tmp_path, emu, ring_ms=0) as (svc, manager):
        started = time.monotonic()
        sip, rtp, alice, target = await invite(svc)
        assert (await sip.recv_sip()).status == 100
        assert (await sip.recv_sip()).status == 180
        ok = await sip.recv_sip()
        answered = time.monotonic()
        assert ok.status == 200 and answered - started >= 0.55
        sip.transport.sendto(alice.ack(ok), target)
        while not voiced(await asyncio.wait_for(rtp.recv(), 5)):
            pass
        assert time.monotonic() - answered < 0.4        # the greeting, right away
        sip.transport.sendto(alice.in_dialog("BYE"), target)
        await until(lambda: manager.live == 0 and manager.early.taken == 1, 10)


async def test_an_upstream_that_does_not_open_delays_the_answer_only_so_long(
        tmp_path: Path) -> None:
    async with Emulator(EmulatorConfig(open_delay_ms=2500)) as emu, \
            bridge(tmp_path, emu, ring_ms=0, answer_wait_ms=1000) as (svc, manager):
        sip, rtp = await udp_peer(), await udp_peer()
        assert sip.transport is not None
        alice = Uac(rport=True)
        started = time.monotonic()
        sip.transport.sendto(alice.invite(sdp=caller_sdp(rtp.port)), ("127.0.0.1", svc.port))
        statuses = [(await sip.recv_sip()).status for _ in range(3)]
        assert statuses == [100, 180, 200]
        assert 0.9 <= time.monotonic() - started < 2.0
