"""Real RtpEndpoints on loopback: audio, DTMF, latching (RTP bleed), hold, ports."""

from __future__ import annotations

import asyncio
import random
import socket
from collections.abc import AsyncIterator, Callable

import pytest

from bridge import metrics
from bridge.codecs.g711 import alaw_decode, alaw_encode, ulaw_decode, ulaw_encode
from bridge.codecs.level import tone
from bridge.rtp.endpoint import FRAME_BYTES, PortAllocator, PortsExhausted, RtpEndpoint
from bridge.rtp.packet import pack_header, parse
from tests.support.waiting import until

HOST = "127.0.0.1"


@pytest.fixture
async def pair() -> AsyncIterator[tuple[RtpEndpoint, RtpEndpoint, PortAllocator]]:
    alloc = PortAllocator(43000, 43999)
    a = await RtpEndpoint.open(HOST, alloc)
    b = await RtpEndpoint.open(HOST, alloc)
    try:
        yield a, b, alloc
    finally:
        a.close()
        b.close()


def frames(n: int) -> list[bytes]:
    pcm = tone(440, 20 * n, 8000)
    return [pcm[i * FRAME_BYTES:(i + 1) * FRAME_BYTES] for i in range(n)]


@pytest.mark.parametrize(("codec", "pt", "enc", "dec"), [
    ("pcmu", 0, ulaw_encode, ulaw_decode), ("pcma", 8, alaw_encode, alaw_decode)])
async def test_audio_both_ways(pair: tuple[RtpEndpoint, RtpEndpoint, PortAllocator],
                               codec: str, pt: int, enc: Callable[[bytes], bytes],
                               dec: Callable[[bytes], bytes]) -> None:
    a, b, _ = pair
    a.configure((HOST, b.local_port), codec, pt, 101)
    b.configure((HOST, a.local_port), codec, pt, 101)
    got_a: list[bytes] = []
    got_b: list[bytes] = []
    a.on_audio, b.on_audio = got_a.append, got_b.append
    sent = frames(10)
    for f in sent:
        a.send_audio(f)
    await until(lambda: len(got_b) == 10)
    assert got_b == [dec(enc(f)) for f in sent]          # exactly G.711 of what was sent
    assert b.stats.latched == (HOST, a.local_port)
    for f in sent[:3]:
        b.send_audio(f)                                   # symmetric: back to the latch
    await until(lambda: len(got_a) == 3)
    assert got_a == [dec(enc(f)) for f in sent[:3]]
    assert (a.stats.sent, a.stats.received, b.stats.received) == (10, 3, 10)


async def test_ptime_30_packets_become_20ms_frames(
        pair: tuple[RtpEndpoint, RtpEndpoint, PortAllocator]) -> None:
    a, b, _ = pair
    a.configure((HOST, b.local_port), "pcmu", 0, None, ptime_ms=30)
    b.configure((HOST, a.local_port), "pcmu", 0, None, ptime_ms=30)
    got: list[bytes] = []
    b.on_audio = got.append
    sent = frames(6)
    for f in sent:
        a.send_audio(f)
    await until(lambda: len(got) == 6)
    assert a.stats.sent == 4                              # 6 x 20 ms = 4 x 30 ms
    assert all(len(f) == FRAME_BYTES for f in got)
    assert b"".join(got) == ulaw_decode(ulaw_encode(b"".join(sent)))


async def test_dtmf_both_ways(pair: tuple[RtpEndpoint, RtpEndpoint, PortAllocator]) -> None:
    a, b, _ = pair
    a.configure((HOST, b.local_port), "pcmu", 0, 101)
    b.configure((HOST, a.local_port), "pcmu", 0, 101)
    digits: list[str] = []
    b.on_dtmf = digits.append
    audio: list[bytes] = []
    b.on_audio = audio.append
    a.send_audio(frames(1)[0])
    await a.send_dtmf("1#9", tone_ms=60, gap_ms=40)
    await until(lambda: len(digits) == 3)
    assert digits == ["1", "#", "9"]
    assert b.stats.dtmf_received == 3 and a.stats.dtmf_sent == 3
    assert b.stats.lost == 0 and len(audio) == 1          # events are not audio
    back: list[str] = []
    a.on_dtmf = back.append
    await b.send_dtmf("*", tone_ms=60, gap_ms=0)
    await until(lambda: back == ["*"])


async def test_second_source_never_reaches_on_audio(
        pair: tuple[RtpEndpoint, RtpEndpoint, PortAllocator]) -> None:
    """RTP from a second, unlatched source during a call is dropped and counted."""
    a, b, _ = pair
    a.configure((HOST, b.local_port), "pcmu", 0, 101)
    b.configure((HOST, a.local_port), "pcmu", 0, 101)
    got: list[bytes] = []
    digits: list[str] = []
    b.on_audio, b.on_dtmf = got.append, digits.append
    a.send_audio(bytes(FRAME_BYTES))
    await until(lambda: len(got) == 1)
    metric_before = source_drops()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as intruder:
        intruder.bind((HOST, 0))
        # valid RTP, negotiated payload type, plausible sequence/timestamp, loud audio
        for i in range(5):
            intruder.sendto(pack_header(False, 0, i, 160 * i, 0xBAD) + b"\x80" * 160,
                            (HOST, b.local_port))
        intruder.sendto(pack_header(True, 101, 9, 0, 0xBAD) + bytes.fromhex("05000000"),
                        (HOST, b.local_port))
        await until(lambda: b.stats.dropped.get("source", 0) == 6)
    a.send_audio(bytes(FRAME_BYTES))
    await until(lambda: len(got) == 2)
    assert got == [bytes(FRAME_BYTES)] * 2                # only the latched caller's audio
    assert digits == []
    assert b.stats.latched == (HOST, a.local_port) and b.stats.received == 2
    assert source_drops() - metric_before == 6


def source_drops() -> float:
    value = metrics.REGISTRY.get_sample_value("voicebridge_rtp_dropped_total",
                                              {"reason": "source"})
    return value or 0.0


async def test_gap_is_concealed_by_the_endpoint_timer(
        pair: tuple[RtpEndpoint, RtpEndpoint, PortAllocator]) -> None:
    _, b, _ = pair
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as caller:
        caller.bind((HOST, 0))
        b.configure(caller.getsockname(), "pcmu", 0, None)
        got: list[bytes] = []
        b.on_audio = got.append
        one, three = b"\x10" * 160, b"\x30" * 160
        caller.sendto(pack_header(True, 0, 1, 0, 7) + one, (HOST, b.local_port))
        caller.sendto(pack_header(False, 0, 3, 320, 7) + three, (HOST, b.local_port))
        # nothing else arrives: only the endpoint's own timer can release frame 3
        await until(lambda: len(got) == 3)
    assert got == [ulaw_decode(one), bytes(FRAME_BYTES), ulaw_decode(three)]
    assert b.stats.lost == 1


async def test_unlatched_host_cannot_win_the_latch(
        pair: tuple[RtpEndpoint, RtpEndpoint, PortAllocator]) -> None:
    a, b, _ = pair
    a.configure((HOST, b.local_port), "pcmu", 0, None)
    b.configure((HOST, a.local_port), "pcmu", 0, None)
    got: list[bytes] = []
    b.on_audio = got.append
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as intruder:
        intruder.bind(("127.0.0.2", 0))               # another host, first to send
        intruder.sendto(pack_header(True, 0, 1, 0, 0xBAD) + b"\x80" * 160,
                        (HOST, b.local_port))
        await until(lambda: b.stats.dropped.get("source", 0) == 1)
    assert b.stats.latched is None and got == []
    a.send_audio(bytes(FRAME_BYTES))
    await until(lambda: len(got) == 1)
    assert b.stats.latched == (HOST, a.local_port)


async def test_hold_stops_sending_and_resume_marks_a_talkspurt(
        pair: tuple[RtpEndpoint, RtpEndpoint, PortAllocator]) -> None:
    a, b, _ = pair
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
        peer.bind((HOST, 0))
        peer.setblocking(False)
        a.configure(peer.getsockname(), "pcmu", 0, None)
        loop = asyncio.get_running_loop()
        a.send_audio(bytes(FRAME_BYTES))
        a.send_audio(bytes(FRAME_BYTES))
        a.set_sending(False)
        assert not a.sending_allowed
        a.send_audio(bytes(FRAME_BYTES))
        a.set_sending(True)
        a.send_audio(bytes(FRAME_BYTES))
        pkts = [parse(await asyncio.wait_for(loop.sock_recv(peer, 2048), 5)) for _ in range(3)]
    assert [p.marker for p in pkts] == [True, False, True]
    assert a.stats.sent == 3


def test_port_allocator_even_ports_reuse_and_exhaustion() -> None:
    alloc = PortAllocator(40001, 40007)                  # pairs 40002/3, 40004/5, 40006/7
    ports = [alloc.allocate() for _ in range(3)]
    assert ports == [40002, 40004, 40006]
    with pytest.raises(PortsExhausted, match="40001-40007"):
        alloc.allocate()
    alloc.release(40004)
    alloc.release(40004)                                  # idempotent
    assert alloc.allocate() == 40004
    with pytest.raises(ValueError):
        PortAllocator(40001, 40002)


def _free_even_range(size: int) -> int:
    """An even base port whose next ``size`` ports are free right now (others run tests
    on this machine too, so no fixed numbers)."""
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(30000, 60000, 2)
        socks: list[socket.socket] = []
        try:
            for port in range(base, base + size):
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                socks.append(s)
                s.bind((HOST, port))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free port range")


async def test_close_frees_the_port_and_busy_ports_are_skipped() -> None:
    base = _free_even_range(6)
    alloc = PortAllocator(base, base + 5)
    blocker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        blocker.bind((HOST, base))                        # someone else holds the first
        e1 = await RtpEndpoint.open(HOST, alloc)
        e2 = await RtpEndpoint.open(HOST, alloc)
        assert {e1.local_port, e2.local_port} == {base + 2, base + 4}
        with pytest.raises(PortsExhausted):
            await RtpEndpoint.open(HOST, alloc)
        e1.close()
        e1.close()
        await asyncio.sleep(0)                            # the loop closes the socket
        e3 = await RtpEndpoint.open(HOST, alloc)
        assert e3.local_port == e1.local_port
        e2.close()
        e3.close()
        await asyncio.sleep(0)
        assert alloc.in_use == 0
    finally:
        blocker.close()


async def test_burst_of_frames_arrives_complete_and_in_order(
        pair: tuple[RtpEndpoint, RtpEndpoint, PortAllocator]) -> None:
    # send_audio writes to the socket itself while the transport has nothing queued;
    # a burst (a late media clock catching up) must still leave in order, every frame.
    # (100 frames: the receiving socket's default buffer holds ~256 small datagrams.)
    a, b, _ = pair
    a.configure((HOST, b.local_port), "pcmu", 0, None)
    b.configure((HOST, a.local_port), "pcmu", 0, None)
    got: list[bytes] = []
    b.on_audio = got.append
    sent = frames(100)
    for f in sent:
        a.send_audio(f)
    await until(lambda: len(got) == 100)
    assert got == [ulaw_decode(ulaw_encode(f)) for f in sent]
    assert (a.stats.sent, b.stats.received, b.stats.lost) == (100, 100, 0)
    a.close()
    await asyncio.sleep(0)
    a.send_audio(sent[0])                     # closed: silently nothing
    assert a.stats.sent == 100


@pytest.mark.parametrize(("codec", "pt", "byte"), [("pcmu", 0, 0xFF), ("pcma", 8, 0xD5)])
async def test_silence_goes_out_as_the_codec_s_silence_in_sequence(
        codec: str, pt: int, byte: int) -> None:
    alloc = PortAllocator(44000, 44999)
    ep = await RtpEndpoint.open(HOST, alloc)
    raw = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    raw.bind((HOST, 0))
    raw.settimeout(2.0)
    try:
        ep.configure(raw.getsockname(), codec, pt, 101)
        ep.send_audio(frames(1)[0])
        for _ in range(3):
            ep.send_silence()
        ep.send_silence(80)                       # half a packet: held for the next
        ep.send_silence(80)
        got = [parse(raw.recv(2048)) for _ in range(5)]
    finally:
        ep.close()
        raw.close()
    assert [p.payload_type for p in got] == [pt] * 5
    assert all(p.payload == bytes([byte]) * 160 for p in got[1:])
    assert got[0].payload != got[1].payload           # the tone, then silence
    seqs = [p.sequence for p in got]
    stamps = [p.timestamp for p in got]
    assert [(s - seqs[0]) & 0xFFFF for s in seqs] == [0, 1, 2, 3, 4]
    assert [(t - stamps[0]) & 0xFFFFFFFF for t in stamps] == [0, 160, 320, 480, 640]
