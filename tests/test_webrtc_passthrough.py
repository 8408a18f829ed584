"""G.711 passthrough on the WebRTC leg against a real aiortc peer over loopback DTLS-SRTP.

The peer sends hand-made payloads (an ``av.Packet`` per frame: aiortc only packetizes
them) and records the payloads of the RTP packets it receives from its receiver's packet
hook, so both directions compare the bytes inside SRTP. A counting stand-in for
``audioop`` (every G.711 conversion of ``bridge.codecs.g711`` goes through it) proves
nothing is decoded or encoded on the way.
"""

from __future__ import annotations

import asyncio
import fractions
import os
from typing import Any

import av
import pytest
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.rtp import RtpPacket

from bridge.codecs import g711
from bridge.internals import aiortc as internals
from bridge.webrtc.client import WebRtcCaller
from bridge.webrtc.leg import WebRtcLeg
from tests.support.g711_transcodes import Transcodes, count_transcodes
from tests.support.leg_sink import Sink
from tests.support.waiting import until


class PayloadTrack(MediaStreamTrack):
    """Sends the given G.711 payloads as they are, one per 20 ms, then nothing."""

    kind = "audio"

    def __init__(self, payloads: list[bytes]) -> None:
        super().__init__()
        self.payloads = list(payloads)
        self._pts = 0

    async def recv(self) -> av.Packet[Any]:
        await asyncio.sleep(0.02)
        if self.readyState != "live":
            raise MediaStreamError
        while not self.payloads:
            await asyncio.sleep(0.02)
            if self.readyState != "live":
                raise MediaStreamError
        packet = av.Packet(self.payloads.pop(0))
        packet.pts = self._pts
        packet.time_base = fractions.Fraction(1, 8000)
        self._pts += 160
        return packet


@pytest.fixture
def transcodes(monkeypatch: pytest.MonkeyPatch) -> Transcodes:
    return count_transcodes(monkeypatch)


@pytest.mark.parametrize("law", ["pcmu", "pcma"])
async def test_payload_bytes_cross_the_webrtc_leg_unchanged_both_ways(
        transcodes: Transcodes, law: str) -> None:
    inbound = [os.urandom(160) for _ in range(10)]
    caller = WebRtcCaller("", codecs=(law,))
    caller.source = PayloadTrack([])
    offer = await caller.make_offer()
    heard: list[bytes] = []

    async def hook(packet: RtpPacket, arrival_time_ms: int) -> None:
        heard.append(packet.payload)
    internals.hook_receiver(caller.pc.getTransceivers()[0].receiver, hook)
    leg, answer = await WebRtcLeg.answer(offer, called="100")
    try:
        assert leg.g711 == law
        assert not leg.carry_encoded("pcma" if law == "pcmu" else "pcmu")
        assert leg.carry == "pcm16"
        assert leg.carry_encoded(law) and leg.carry == law and leg.carried_frame_bytes == 160
        sink = Sink()
        leg.attach(sink)
        polls: list[None] = []
        leg.poll = lambda: polls.append(None)
        await caller.accept_answer(answer)
        await until(lambda: leg.pc.connectionState == "connected")
        caller.source.payloads.extend(inbound)
        await until(lambda: len(sink.frames) >= 10)
        assert sink.frames[:10] == inbound              # the payloads as they were sent
        assert len(polls) == len(sink.frames)           # the clock polled before each

        outbound = [os.urandom(160) for _ in range(5)]
        for payload in outbound:
            leg.write_frame(payload)
            await asyncio.sleep(0.02)
        leg.write_silence()
        await until(lambda: len(heard) >= 6)
        assert heard[:5] == outbound
        assert heard[5] == (b"\xff" if law == "pcmu" else b"\xd5") * 160
        assert transcodes.calls == 0
    finally:
        await leg.close()
        await caller.close()


async def test_pcm16_stays_the_default_on_the_webrtc_leg(transcodes: Transcodes) -> None:
    payload = os.urandom(160)
    caller = WebRtcCaller("", codecs=("pcmu",))
    caller.source = PayloadTrack([])
    offer = await caller.make_offer()
    leg, answer = await WebRtcLeg.answer(offer, called="100")
    try:
        sink = Sink()
        leg.attach(sink)
        await caller.accept_answer(answer)
        await until(lambda: leg.pc.connectionState == "connected")
        caller.source.payloads.append(payload)
        await until(lambda: len(sink.frames) >= 1)
        assert leg.carry == "pcm16"
        assert sink.frames[0] == g711.ulaw_decode(payload)
        assert transcodes.calls >= 1
    finally:
        await leg.close()
        await caller.close()
