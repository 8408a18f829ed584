"""G.711 passthrough on the SIP leg over real loopback UDP: payload bytes as is, both ways.

The far end is a plain UDP socket writing and reading RTP by hand, so what is compared is
exactly the bytes on the wire. Every G.711 conversion goes through ``audioop`` in
``bridge.codecs.g711``; a counting stand-in for it proves none happens on this path.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import AsyncIterator

import pytest

from bridge.call.leg import LegInfo, Source
from bridge.codecs import g711
from bridge.rtp.endpoint import PortAllocator, RtpEndpoint
from bridge.rtp.packet import pack_header, parse
from bridge.sip.leg import SipLeg
from bridge.sip.sdp import Direction, NegotiatedMedia
from bridge.sip.ua import CallKey
from tests.support.g711_transcodes import Transcodes, count_transcodes
from tests.support.leg_sink import Sink
from tests.support.waiting import until

HOST = "127.0.0.1"


@pytest.fixture
def transcodes(monkeypatch: pytest.MonkeyPatch) -> Transcodes:
    return count_transcodes(monkeypatch)


@pytest.fixture
async def far_end() -> AsyncIterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((HOST, 0))
    sock.setblocking(False)
    yield sock
    sock.close()


async def sip_leg(far: socket.socket, codec: str, pt: int) -> SipLeg:
    rtp = await RtpEndpoint.open(HOST, PortAllocator(44000, 44999))
    media = NegotiatedMedia(HOST, far.getsockname()[1], codec, pt, None, 20,
                            Direction.SENDRECV, Direction.SENDRECV)
    info = LegInfo(call_id="pass-1", source=Source.SIP)
    leg = SipLeg(lambda _command: None, CallKey("pass-1"), info, rtp, media)
    leg._media_updated(media)
    return leg


def payloads(n: int, size: int = 160) -> list[bytes]:
    return [os.urandom(size) for _ in range(n)]


@pytest.mark.parametrize(("codec", "pt"), [("pcmu", 0), ("pcma", 8)])
async def test_payload_bytes_cross_the_sip_leg_unchanged_both_ways(
        far_end: socket.socket, transcodes: Transcodes, codec: str, pt: int) -> None:
    leg = await sip_leg(far_end, codec, pt)
    try:
        other = "pcma" if codec == "pcmu" else "pcmu"
        assert not leg.carry_encoded(other) and leg.carry == "pcm16"
        assert leg.carry_encoded(codec)
        assert leg.carry == codec and leg.carried_frame_bytes == 160
        sink = Sink()
        leg.attach(sink)
        polls = [0]
        leg.poll = lambda: polls.__setitem__(0, polls[0] + 1)
        sent_in = payloads(8)
        for i, payload in enumerate(sent_in):
            far_end.sendto(pack_header(i == 0, pt, 100 + i, 1000 + 160 * i, 7) + payload,
                           (HOST, leg.rtp.local_port))
        await until(lambda: len(sink.frames) == 8)
        assert sink.frames == sent_in                 # the wire's bytes, not decoded
        assert polls[0] == 8                          # the clock polled before each frame

        sent_out = payloads(5)
        for payload in sent_out:
            leg.write_frame(payload)
        leg.write_silence()
        loop = asyncio.get_running_loop()
        got = [parse(await loop.sock_recv(far_end, 2048)) for _ in range(6)]
        assert [p.payload for p in got[:5]] == sent_out
        assert got[5].payload == (b"\xff" if codec == "pcmu" else b"\xd5") * 160
        assert {p.payload_type for p in got} == {pt}
        assert transcodes.calls == 0
    finally:
        await leg.hang_up("done")


async def test_pcm16_stays_the_default_and_decodes(far_end: socket.socket,
                                                   transcodes: Transcodes) -> None:
    leg = await sip_leg(far_end, "pcmu", 0)
    try:
        sink = Sink()
        leg.attach(sink)
        payload = os.urandom(160)
        far_end.sendto(pack_header(True, 0, 1, 0, 7) + payload, (HOST, leg.rtp.local_port))
        await until(lambda: len(sink.frames) == 1)
        assert leg.carry == "pcm16"
        assert sink.frames == [g711.ulaw_decode(payload)] and len(sink.frames[0]) == 320
        assert transcodes.calls == 2                  # the decode, and the one in the check
    finally:
        await leg.hang_up("done")


async def test_carried_law_survives_a_reinvite_to_the_other_law(
        far_end: socket.socket) -> None:
    leg = await sip_leg(far_end, "pcmu", 0)
    try:
        assert leg.carry_encoded("pcmu")
        sink = Sink()
        leg.attach(sink)
        leg._media_updated(NegotiatedMedia(HOST, far_end.getsockname()[1], "pcma", 8, None,
                                           20, Direction.SENDRECV, Direction.SENDRECV))
        alaw = g711.alaw_encode(b"\x10\x20" * 160)
        far_end.sendto(pack_header(True, 8, 1, 0, 7) + alaw, (HOST, leg.rtp.local_port))
        await until(lambda: len(sink.frames) == 1)
        assert sink.frames == [g711.ulaw_encode(g711.alaw_decode(alaw))]   # still µ-law
    finally:
        await leg.hang_up("done")
