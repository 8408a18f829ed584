"""WebRtcLeg against a real aiortc peer over loopback ICE/DTLS-SRTP."""

from __future__ import annotations

import asyncio
import socket
import struct

import pytest

from bridge.call.leg import Source
from bridge.config import WebRtcConfig
from bridge.webrtc.client import WebRtcCaller
from bridge.webrtc.leg import WebRtcLeg, WebRtcOfferError, answer_audio_codec
from bridge.webrtc.track import OutboundTrack
from tests.support.audio import tone
from tests.support.leg_sink import Sink
from tests.support.waiting import until


async def connect(caller: WebRtcCaller,
                  config: WebRtcConfig | None = None) -> tuple[WebRtcLeg, str]:
    offer = await caller.make_offer()
    leg, answer = await WebRtcLeg.answer(offer, config=config, called="100")
    await caller.accept_answer(answer)
    return leg, answer


def m_audio(sdp: str) -> list[str]:
    line = next(x for x in sdp.splitlines() if x.startswith("m=audio"))
    return line.split()[3:]


async def test_g711_preferred_audio_both_ways_dtmf_and_bye() -> None:
    caller = WebRtcCaller("", pcm=tone(400, freq=440, rate=8000, amp=8000))
    sink = Sink()
    leg, answer = await connect(caller)
    try:
        # aiortc offers opus first; our answer must put G.711 first.
        assert m_audio(answer)[0] == "0"
        assert leg.codec == "pcmu" and leg.sample_rate == 8000 and leg.g711 == "pcmu"
        assert leg.info.source is Source.WEBRTC and leg.info.called == "100"
        leg.attach(sink)
        await until(lambda: len(sink.frames) >= 25)
        assert {len(f) for f in sink.frames} == {320}     # exact 20 ms frames at 8 kHz
        # decoded on the event loop from the packets, not by aiortc's decoder thread
        assert leg._g711_receive is not None
        assert leg._g711_receive.jitter.delivered >= len(sink.frames)
        assert any(max(abs(v) for v in struct.unpack("<160h", f)) > 4000 for f in sink.frames)

        # outbound: feed frames as the media clock would; the caller hears a loud tone
        out = tone(20, freq=1000, rate=8000, amp=8000)
        for _ in range(50):
            leg.write_frame(out)
            await asyncio.sleep(0.02)
        await until(lambda: caller.received.loud_frames(-30) >= 10)
        # sent by the leg itself (not aiortc's sender loop), which never paced silence
        direct = leg._g711_send
        assert direct is not None and direct.direct is True and direct.sent >= 50
        assert leg.track.silent == 0 and not leg.track.queued
        # a pause in the feed: RTP time keeps step with real time (≥ 10 frames skipped)
        before = direct.timeline.next_ts
        await asyncio.sleep(0.25)
        leg.write_frame(out)
        assert (direct.timeline.next_ts - before) % (1 << 32) >= 11 * 160

        await until(lambda: caller.dtmf.readyState == "open")
        caller.send_dtmf("5")
        caller.send_dtmf("#")
        caller.send_dtmf("x")              # not a DTMF digit: ignored
        await until(lambda: sink.digits == ["5", "#"])

        caller.bye_channel.send("bye")
        await asyncio.wait_for(sink.hungup.wait(), 10)
        assert sink.hangups == ["bye"]
    finally:
        await leg.close()
        await caller.close()
    assert leg.pc.connectionState == "closed"
    assert leg.closed
    await leg.close()                         # idempotent


async def test_opus_only_offer_gives_a_48k_leg() -> None:
    caller = WebRtcCaller("", pcm=tone(400, freq=440, rate=48000, amp=8000), rate=48000,
                          codecs=("opus",))
    sink = Sink()
    leg, answer = await connect(caller)
    try:
        assert leg.codec == "opus" and leg.sample_rate == 48000 and leg.g711 == ""
        leg.attach(sink)
        await until(lambda: len(sink.frames) >= 10)
        assert {len(f) for f in sink.frames} == {1920}    # 20 ms mono at 48 kHz
    finally:
        await leg.close()
        await caller.close()


def ice_ports(leg: WebRtcLeg) -> list[tuple[str, int]]:
    """The UDP (address, port) pairs the leg's ICE agent holds: its host candidates."""
    ice = leg.pc.getTransceivers()[0].receiver.transport.transport
    return [(c.ip, c.port) for c in ice.iceGatherer.getLocalCandidates()
            if c.protocol.lower() == "udp" and ":" not in c.ip]


def bindable(addr: tuple[str, int]) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.bind(addr)
        except OSError:
            return False
    return True


@pytest.mark.parametrize("who", ["caller", "bridge"])
async def test_hang_up_either_way_closes_the_peer_connection_and_frees_its_ports(
        who: str) -> None:
    caller = WebRtcCaller("")
    leg, _ = await connect(caller)
    sink = Sink()
    leg.attach(sink)
    try:
        await until(lambda: caller.bye_channel.readyState == "open"
                    and "bye" in leg._channels)
        ports = ice_ports(leg)
        assert ports and not any(bindable(a) for a in ports)     # held while the call runs
        if who == "caller":
            caller.bye_channel.send("bye")
            await asyncio.wait_for(sink.hungup.wait(), 10)
            assert sink.hangups == ["bye"]
            await leg.close()                  # what the call does when its leg hangs up
        else:
            await leg.hang_up("agent")
            await asyncio.wait_for(caller.bye.wait(), 10)
        assert leg.pc.connectionState == "closed"
        await until(lambda: all(bindable(a) for a in ports))
    finally:
        await leg.close()
        await caller.close()


async def test_hang_up_from_our_side_reaches_the_caller() -> None:
    caller = WebRtcCaller("")
    leg, _ = await connect(caller)
    sink = Sink()
    leg.attach(sink)
    try:
        await until(lambda: caller.bye_channel.readyState == "open"
                    and "bye" in leg._channels)
        await leg.hang_up("agent")
        await asyncio.wait_for(caller.bye.wait(), 10)
        assert sink.hangups == []          # we ended it: not reported back as far-end hang-up
        assert leg.pc.connectionState == "closed"
    finally:
        await caller.close()


async def test_events_are_queued_until_the_channel_opens() -> None:
    caller = WebRtcCaller("")
    leg, _ = await connect(caller)
    try:
        leg.send_event({"type": "state", "state": "ringing"})
        await until(lambda: len(caller.events) >= 1)
        leg.send_event({"type": "transcript", "role": "agent", "text": "hello"})
        await until(lambda: len(caller.events) >= 2)
        assert [e["type"] for e in caller.events] == ["state", "transcript"]
    finally:
        await leg.close()
        await caller.close()


async def test_offer_without_common_codec_is_refused() -> None:
    caller = WebRtcCaller("", codecs=("opus",))
    offer = await caller.make_offer()
    try:
        with pytest.raises(WebRtcOfferError):
            await WebRtcLeg.answer(offer, config=WebRtcConfig(codecs=("pcmu", "pcma")))
        with pytest.raises(WebRtcOfferError):
            await WebRtcLeg.answer("v=0\r\nnonsense\r\n")
    finally:
        await caller.close()


def test_answer_codec_reads_the_first_payload_type() -> None:
    sdp = ("v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 8 0\r\na=rtpmap:8 PCMA/8000\r\n"
           "a=rtpmap:0 PCMU/8000\r\n")
    assert answer_audio_codec(sdp) == ("pcma", 8000)
    assert answer_audio_codec("m=audio 9 RTP/AVP 0\r\n") == ("pcmu", 8000)
    with pytest.raises(WebRtcOfferError):
        answer_audio_codec("v=0\r\n")


async def test_outbound_track_paces_itself_and_keeps_pts_continuous() -> None:
    track = OutboundTrack(8000)
    loop = asyncio.get_running_loop()
    # fed: returns the queued frame at once
    track.push(b"\1\0" * 160)
    first = await track.recv()
    assert first.pts == 0 and bytes(first.planes[0])[:2] == b"\1\0"
    # not fed: silence after the due time + grace, never earlier
    t0 = loop.time()
    second = await track.recv()
    assert loop.time() - t0 >= 0.02
    assert second.pts == 160 and not any(bytes(second.planes[0]))
    assert track.silent == 1
    # a stalled sender: the queue keeps only the newest frames
    for i in range(6):
        track.push(bytes([i, 0]) * 160)
    assert track.dropped == 3
    third = await track.recv()
    assert bytes(third.planes[0])[:1] == b"\3" and third.pts == 320
    track.stop()


async def test_g711_track_hands_aiortc_encoded_packets() -> None:
    track = OutboundTrack(8000, g711="pcmu")
    track.push(b"\0\0" * 160)
    first = await track.recv()
    assert bytes(first) == b"\xff" * 160          # µ-law silence, one byte per sample
    track.push(b"\0\0" * 160)
    second = await track.recv()
    assert (first.pts, second.pts) == (0, 160) and second.time_base == first.time_base
    track.stop()
