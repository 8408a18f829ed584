"""Real RtpEndpoints on loopback with SRTP: audio and RFC 4733 events both ways in both
suites, nothing on the wire in the clear, and packets with the wrong key or in the clear
dropped and counted before they can play or latch; the same keys again keep the context."""

from __future__ import annotations

import secrets
import socket
from collections.abc import AsyncIterator

import pytest

from bridge import metrics
from bridge.codecs.g711 import ulaw_decode, ulaw_encode
from bridge.codecs.level import tone
from bridge.rtp.endpoint import FRAME_BYTES, PortAllocator, RtpEndpoint
from bridge.rtp.packet import pack_header
from tests.support.waiting import until

HOST = "127.0.0.1"


def dropped(reason: str) -> float:
    return metrics.REGISTRY.get_sample_value("voicebridge_rtp_dropped_total",
                                             {"reason": reason}) or 0.0


@pytest.fixture
async def pair() -> AsyncIterator[tuple[RtpEndpoint, RtpEndpoint]]:
    alloc = PortAllocator(44000, 44999)
    a = await RtpEndpoint.open(HOST, alloc)
    b = await RtpEndpoint.open(HOST, alloc)
    try:
        yield a, b
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize("suite", ["AES_CM_128_HMAC_SHA1_80", "AES_CM_128_HMAC_SHA1_32"])
async def test_srtp_audio_and_dtmf_both_ways(pair: tuple[RtpEndpoint, RtpEndpoint],
                                             suite: str) -> None:
    a, b = pair
    ka, kb = secrets.token_bytes(30), secrets.token_bytes(30)
    a.set_srtp((suite, ka, kb))
    b.set_srtp((suite, kb, ka))
    a.configure((HOST, b.local_port), "pcmu", 0, 101)
    b.configure((HOST, a.local_port), "pcmu", 0, 101)
    assert a.srtp and "ka" not in repr(a.stats)
    got: list[bytes] = []
    back: list[bytes] = []
    digits: list[str] = []
    b.on_audio, a.on_audio, b.on_dtmf = got.append, back.append, digits.append
    pcm = tone(440, 200, 8000)
    sent = [pcm[i * FRAME_BYTES:(i + 1) * FRAME_BYTES] for i in range(10)]
    for frame in sent:
        a.send_audio(frame)
    await until(lambda: len(got) == 10)
    assert got == [ulaw_decode(ulaw_encode(f)) for f in sent]
    b.send_audio(sent[0])
    await until(lambda: len(back) == 1)
    await a.send_dtmf("5#", tone_ms=60, gap_ms=40)
    await until(lambda: digits == ["5", "#"])
    assert b.stats.lost == 0


async def test_the_wire_is_encrypted_and_strangers_are_dropped(
        pair: tuple[RtpEndpoint, RtpEndpoint]) -> None:
    a, b = pair
    suite = "AES_CM_128_HMAC_SHA1_80"
    ka, kb = secrets.token_bytes(30), secrets.token_bytes(30)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tap:
        tap.bind((HOST, 0))
        tap.settimeout(5)
        a.set_srtp((suite, ka, kb))
        a.configure(tap.getsockname(), "pcmu", 0, None)
        a.send_audio(bytes(FRAME_BYTES))                  # silence: 0xff bytes in µ-law
        wire = tap.recv(2048)
        assert len(wire) == 12 + 160 + 10 and wire[12:172] != b"\xff" * 160
        # b is SRTP with keys the sender does not have; a plain RTP packet, too.
        b.set_srtp((suite, kb, secrets.token_bytes(30)))
        b.configure(tap.getsockname(), "pcmu", 0, None)
        heard: list[bytes] = []
        b.on_audio = heard.append
        auth = dropped("srtp_auth")
        tap.sendto(wire, (HOST, b.local_port))
        tap.sendto(pack_header(False, 0, 1, 160, 77) + b"\xff" * 160, (HOST, b.local_port))
        short = dropped("srtp_short")
        tap.sendto(wire[:14], (HOST, b.local_port))
        await until(lambda: dropped("srtp_auth") == auth + 2
                    and dropped("srtp_short") == short + 1)
        assert heard == [] and b.stats.latched is None and b.stats.received == 0
        assert b.stats.dropped == {"srtp_auth": 2, "srtp_short": 1}


async def test_the_same_keys_keep_the_context(pair: tuple[RtpEndpoint, RtpEndpoint]) -> None:
    a, _b = pair
    keys = ("AES_CM_128_HMAC_SHA1_32", secrets.token_bytes(30), secrets.token_bytes(30))
    a.set_srtp(keys)
    context = a._srtp
    a.set_srtp((keys[0], keys[1], keys[2]))
    assert a._srtp is context
    a.set_srtp((keys[0], keys[1], secrets.token_bytes(30)))
    assert a._srtp is not context and a.srtp
    a.set_srtp(None)
    assert not a.srtp
