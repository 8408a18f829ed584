"""A G.722 call through the SipService on loopback sockets: the leg runs at 16 kHz (no
G.711 passthrough), a phone's G.722 packets become 20 ms frames of 320 samples, and what
the call writes goes out as payload type 9, 160 bytes per packet, silence included."""

from __future__ import annotations

import contextlib
import struct
from collections.abc import AsyncIterator, Awaitable, Callable

import numpy as np

from bridge.bench.sip import free_udp_port
from bridge.codecs.g722 import FRAME_BYTES, PAYLOAD_BYTES, G722Decoder, G722Encoder
from bridge.codecs.level import tone
from bridge.sip.service import SipLeg, SipService
from bridge.sip.settings import SipSettings
from tests.support.sip_peers import Recorder, SipSink, Uac, udp_peer
from tests.support.waiting import until

PT_G722 = 9


@contextlib.asynccontextmanager
async def service(on_call: Callable[[SipLeg], Awaitable[None]]) -> AsyncIterator[SipService]:
    low = free_udp_port() & ~1
    svc = SipService(SipSettings(host="127.0.0.1", port=0), on_call, rtp_ports=(low, low + 19))
    await svc.start()
    try:
        yield svc
    finally:
        await svc.stop()


def phone_sdp(rtp_port: int, formats: str = "0 9 101") -> bytes:
    return (b"v=0\r\no=phone 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
            + f"m=audio {rtp_port} RTP/AVP {formats}\r\n".encode()
            + b"a=rtpmap:0 PCMU/8000\r\na=rtpmap:9 G722/8000\r\n"
            b"a=rtpmap:101 telephone-event/8000\r\n")


def rtp_packet(seq: int, ts: int, payload: bytes, pt: int = PT_G722) -> bytes:
    return struct.pack("!BBHII", 0x80, pt, seq, ts, 0x4321) + payload


async def _hang_up_later(leg: SipLeg, sink: SipSink) -> None:
    await sink.hangup.wait()


async def test_a_g722_call_runs_at_16khz_both_ways() -> None:
    rec = Recorder(_hang_up_later)
    async with service(rec) as svc:
        sip, rtp = await udp_peer(), await udp_peer()
        assert sip.transport is not None and rtp.transport is not None
        phone = Uac(rport=True)
        target = ("127.0.0.1", svc.port)
        sip.transport.sendto(phone.invite(sdp=phone_sdp(rtp.port)), target)
        assert (await sip.recv_sip()).status == 100
        ok = await sip.recv_sip()
        assert ok.status == 200 and b"a=rtpmap:9 G722/8000\r\n" in ok.body
        our_rtp = int(ok.body.decode().split("m=audio ")[1].split()[0])
        sip.transport.sendto(phone.ack(ok), target)
        await until(lambda: rec.legs)
        leg, sink = rec.legs[0], rec.sinks[0]
        assert (leg.sample_rate, leg.frame_bytes, leg.g711) == (16000, FRAME_BYTES, "")
        assert not leg.carry_encoded("pcmu")        # no G.711 passthrough on G.722

        # The phone speaks G.722: 20 ms frames of 16 kHz PCM reach the call.
        enc = G722Encoder()
        sent = tone(6000, 100, 16000, -12.0)          # above what G.711 carries
        for i in range(5):
            payload = enc.encode(sent[i * FRAME_BYTES:(i + 1) * FRAME_BYTES])
            rtp.transport.sendto(rtp_packet(i, 160 * i, payload), ("127.0.0.1", our_rtp))
        await until(lambda: len(sink.audio) == 5)
        assert [len(f) for f in sink.audio] == [FRAME_BYTES] * 5
        heard = np.frombuffer(b"".join(sink.audio[1:]), dtype="<i2").astype(np.float64)
        spectrum = np.abs(np.fft.rfft(heard))
        assert abs(np.fft.rfftfreq(len(heard), 1 / 16000)[spectrum.argmax()] - 6000) < 30

        # The call writes 16 kHz frames: G.722 on the wire, 160 bytes, clock 8000.
        leg.write_frame(tone(1000, 20, 16000))
        leg.write_silence()
        packets = [await rtp.recv() for _ in range(2)]
        assert [p[1] & 0x7F for p in packets] == [PT_G722] * 2
        assert [len(p) - 12 for p in packets] == [PAYLOAD_BYTES] * 2
        ts = [struct.unpack("!I", p[4:8])[0] for p in packets]
        assert (ts[1] - ts[0]) & 0xFFFFFFFF == 160
        level = np.frombuffer(G722Decoder().decode(packets[0][12:]), dtype="<i2")
        assert np.abs(level[100:]).max() > 3000          # the tone, not silence

        sip.transport.sendto(phone.in_dialog("BYE"), target)
        await until(rec.finished.is_set)


async def test_an_answer_in_the_ack_choosing_g722_makes_a_16khz_leg() -> None:
    """INVITE without SDP: our offer lists G.722 first; the phone's answer in the ACK
    picks it, and the leg handed to the call is a 16 kHz one."""
    rec = Recorder(_hang_up_later)
    async with service(rec) as svc:
        sip, rtp = await udp_peer(), await udp_peer()
        assert sip.transport is not None and rtp.transport is not None
        phone = Uac(rport=True)
        target = ("127.0.0.1", svc.port)
        sip.transport.sendto(phone.invite(sdp=None), target)
        assert (await sip.recv_sip()).status == 100
        ok = await sip.recv_sip()
        assert b"RTP/AVP 9 0 8 101\r\n" in ok.body
        sip.transport.sendto(phone.ack(ok, body=phone_sdp(rtp.port, "9 101")), target)
        await until(lambda: rec.legs)
        leg = rec.legs[0]
        assert (leg.sample_rate, leg.g711) == (16000, "")
        leg.write_frame(bytes(FRAME_BYTES))
        packet = await rtp.recv()
        assert packet[1] & 0x7F == PT_G722 and len(packet) == 12 + PAYLOAD_BYTES
        sip.transport.sendto(phone.in_dialog("BYE"), target)
        await until(rec.finished.is_set)
