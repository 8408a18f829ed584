"""G.722 through PyAV: the codec's round trip, what a peer's bad payloads do, and real
RtpEndpoints on loopback carrying it (frame and packet sizes, the 8000 Hz RTP clock,
DTMF beside it, concealment)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import numpy as np
import pytest

from bridge.codecs.g722 import (
    FILLER_BYTE,
    FRAME_BYTES,
    PAYLOAD_BYTES,
    SAMPLE_RATE,
    G722Decoder,
    G722Encoder,
)
from bridge.codecs.level import tone
from bridge.rtp.endpoint import CODEC_FRAME_BYTES, PortAllocator, RtpEndpoint
from bridge.rtp.packet import pack_header, parse
from bridge.rtp.session import SILENCE_BYTE
from tests.support.sip_peers import udp_peer
from tests.support.waiting import until

HOST = "127.0.0.1"
PT_G722 = 9


def _frames(pcm: bytes) -> list[bytes]:
    return [pcm[i:i + FRAME_BYTES] for i in range(0, len(pcm) - FRAME_BYTES + 1, FRAME_BYTES)]


def _samples(pcm: bytes) -> np.ndarray:
    return np.frombuffer(pcm, dtype="<i2").astype(np.float64)


def _peak_hz(x: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / SAMPLE_RATE)[spectrum.argmax()])


def _rms_db(x: np.ndarray) -> float:
    return float(20 * np.log10(np.sqrt(np.mean(x ** 2)) / 32768))


@pytest.mark.parametrize("freq", [300.0, 1000.0, 5500.0])
def test_tone_keeps_its_frequency_and_level(freq: float) -> None:
    """A tone through encoder and decoder, 20 ms at a time: same frequency, same level.
    5.5 kHz is above anything G.711 could carry."""
    pcm = tone(freq, 1000, SAMPLE_RATE, -12.0)
    enc, dec = G722Encoder(), G722Decoder()
    payloads = [enc.encode(f) for f in _frames(pcm)]
    assert [len(p) for p in payloads] == [PAYLOAD_BYTES] * 50
    out = [dec.decode(p) for p in payloads]
    assert [len(f) for f in out] == [FRAME_BYTES] * 50
    sent, got = _samples(pcm)[1600:], _samples(b"".join(out))[1600:]
    assert abs(_peak_hz(got) - freq) < 20
    assert abs(_rms_db(got) - _rms_db(sent)) < 1.0


def test_sweep_comes_back_as_the_same_waveform() -> None:
    """A 100 Hz - 7 kHz sweep: aligned by the codec's own delay (its QMF filter bank,
    under 3 ms), the decoded waveform is the sent one to within 20 dB."""
    t = np.arange(SAMPLE_RATE) / SAMPLE_RATE
    sent = (8000 * np.sin(2 * np.pi * (100 * t + 3450 * t ** 2))).astype("<i2")
    enc, dec = G722Encoder(), G722Decoder()
    got = _samples(b"".join(dec.decode(enc.encode(f)) for f in _frames(sent.tobytes())))
    ref = sent.astype(np.float64)
    lag = int(np.argmax(np.correlate(got[:8000], ref[:8000], "full"))) - 7999
    assert 0 <= lag <= 48
    n = len(got) - lag - 100
    assert _rms_db(got[lag:lag + n] - ref[:n]) < _rms_db(ref[:n]) - 20


def test_encoder_state_carries_across_frames() -> None:
    """One frame at a time gives what the whole buffer gives: the state is kept."""
    pcm = tone(440, 200, SAMPLE_RATE)
    whole = G722Encoder().encode(pcm)
    enc = G722Encoder()
    assert b"".join(enc.encode(f) for f in _frames(pcm)) == whole
    assert enc.frames == 10


def test_encoder_takes_whole_frames_only() -> None:
    with pytest.raises(ValueError, match="whole 20 ms frames"):
        G722Encoder().encode(bytes(FRAME_BYTES - 2))


def test_empty_payload_is_dropped_and_counted_and_decoding_goes_on() -> None:
    """FFmpeg takes an empty packet as the end of the stream and refuses everything
    after it: the decoder must not pass one on."""
    drops: list[str] = []
    dec = G722Decoder(on_drop=drops.append)
    payload = G722Encoder().encode(tone(440, 20, SAMPLE_RATE))
    assert dec.decode(b"") == b""
    assert (dec.dropped, drops) == (1, ["codec"])
    assert len(dec.decode(payload)) == FRAME_BYTES        # still decoding
    assert dec.dropped == 1


def test_garbage_and_short_payloads_decode_to_their_length_without_error() -> None:
    """Any octet is a G.722 code: random bytes decode (to noise) at two samples per
    byte, and a one-byte payload is two samples; nothing raises, nothing is dropped."""
    dec = G722Decoder()
    rng = np.random.default_rng(7)
    for size in (1, 3, 17, 160, 480, 1400):
        assert len(dec.decode(rng.bytes(size))) == 4 * size
    assert dec.dropped == 0
    good = G722Encoder().encode(bytes(FRAME_BYTES))
    assert len(dec.decode(good)) == FRAME_BYTES


def test_concealment_filler_decodes_to_silence() -> None:
    """A lost packet (the jitter buffer's filler) is silence even in mid-speech, where
    decoding the filler as codes would be a loud burst."""
    assert SILENCE_BYTE["g722"] == FILLER_BYTE
    enc, dec = G722Encoder(), G722Decoder()
    for frame in _frames(tone(700, 400, SAMPLE_RATE, -6.0)):
        dec.decode(enc.encode(frame))
    filler = bytes((FILLER_BYTE,)) * PAYLOAD_BYTES
    assert dec.decode(filler) == bytes(FRAME_BYTES)
    assert dec.concealed == 1


# ------------------------------------------------------------------ on real RTP endpoints

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


async def test_endpoints_carry_g722_at_16khz(pair: tuple[RtpEndpoint, RtpEndpoint]) -> None:
    a, b = pair
    a.configure((HOST, b.local_port), "g722", PT_G722, 101)
    b.configure((HOST, a.local_port), "g722", PT_G722, 101)
    assert a.frame_bytes == CODEC_FRAME_BYTES["g722"] == FRAME_BYTES
    got: list[bytes] = []
    b.on_audio = got.append
    pcm = tone(3000, 400, SAMPLE_RATE, -12.0)
    for frame in _frames(pcm):
        a.send_audio(frame)
    await until(lambda: len(got) == 20)
    assert all(len(f) == FRAME_BYTES for f in got)      # 20 ms at 16 kHz each
    heard = _samples(b"".join(got))[800:]
    assert abs(_peak_hz(heard) - 3000) < 20 and _rms_db(heard) > -20
    # RFC 4733 DTMF beside G.722, on the same 8000 Hz clock: received as digits, and
    # the audio after it goes on.
    digits: list[str] = []
    b.on_dtmf = digits.append
    await a.send_dtmf("7#", tone_ms=60, gap_ms=20)
    await until(lambda: digits == ["7", "#"])
    a.send_audio(bytes(FRAME_BYTES))
    await until(lambda: len(got) == 21)
    assert b.stats.dtmf_received == 2 and b.stats.lost == 0


async def test_g722_packets_on_the_wire_use_the_8000_clock() -> None:
    """What a phone sees: payload type 9, 160 bytes per 20 ms, timestamps +160, and
    DTMF (telephone-event/8000) between the audio packets."""
    alloc = PortAllocator(44000, 44999)
    ep = await RtpEndpoint.open(HOST, alloc)
    phone = await udp_peer()
    try:
        ep.configure((HOST, phone.port), "g722", PT_G722, 101)
        for frame in _frames(tone(440, 60, SAMPLE_RATE)):
            ep.send_audio(frame)
        ep.send_silence(SAMPLE_RATE // 50)
        packets = [parse(await phone.recv()) for _ in range(4)]
        assert [p.payload_type for p in packets] == [PT_G722] * 4
        assert [len(p.payload) for p in packets] == [PAYLOAD_BYTES] * 4
        stamps = [p.timestamp for p in packets]
        assert [(t - stamps[0]) & 0xFFFFFFFF for t in stamps] == [0, 160, 320, 480]
        await ep.send_dtmf("5", tone_ms=60, gap_ms=0)
        events = []
        while len(events) < 3:
            packet = parse(await phone.recv())
            if packet.payload_type == 101:
                events.append(packet)
        assert events[0].payload[0] == 5
    finally:
        ep.close()
        assert phone.transport is not None
        phone.transport.close()


async def test_loss_is_concealed_as_silence_and_the_stream_goes_on() -> None:
    """A phone's G.722 with one packet lost: the gap becomes a 20 ms frame of silence
    (not a burst), and the packets around it, the next one too, come out at the level
    the phone encoded."""
    alloc = PortAllocator(44000, 44999)
    ep = await RtpEndpoint.open(HOST, alloc)
    phone = await udp_peer()
    assert phone.transport is not None
    try:
        ep.configure((HOST, phone.port), "g722", PT_G722, 101)
        got: list[bytes] = []
        ep.on_audio = got.append
        enc = G722Encoder()
        payloads = [enc.encode(f) for f in _frames(tone(500, 200, SAMPLE_RATE, -6.0))]
        for seq, payload in enumerate(payloads):
            if seq != 4:                                    # lost in the network
                phone.transport.sendto(pack_header(seq == 0, PT_G722, seq, 160 * seq, 0x22)
                                       + payload, (HOST, ep.local_port))
        await until(lambda: len(got) == 10, limit_s=10)
        assert got[4] == bytes(FRAME_BYTES)
        assert ep.stats.lost == 1
        assert all(_rms_db(_samples(f)) > -12 for f in got[1:4] + got[5:])
        # a short payload from the phone decodes to its length: no crash, no drop
        phone.transport.sendto(pack_header(False, PT_G722, 10, 1600, 0x22) + os.urandom(3),
                               (HOST, ep.local_port))
        phone.transport.sendto(pack_header(False, PT_G722, 11, 1603, 0x22) + payloads[0][:157],
                               (HOST, ep.local_port))
        await until(lambda: len(got) == 11)
        assert len(got[10]) == FRAME_BYTES and "codec" not in ep.stats.dropped
    finally:
        ep.close()
        assert phone.transport is not None
        phone.transport.close()


async def test_a_new_ssrc_starts_the_decoder_afresh() -> None:
    """The far end switches streams (a transfer, a B2BUA): its new encoder starts from
    scratch, and so must our decoder, else the first packets decode against the old
    stream's state."""
    alloc = PortAllocator(44000, 44999)
    ep = await RtpEndpoint.open(HOST, alloc)
    phone = await udp_peer()
    assert phone.transport is not None
    try:
        ep.configure((HOST, phone.port), "g722", PT_G722, 101)
        got: list[bytes] = []
        ep.on_audio = got.append
        old = G722Encoder()
        for seq, frame in enumerate(_frames(tone(900, 100, SAMPLE_RATE, -6.0))):
            phone.transport.sendto(pack_header(False, PT_G722, seq, 160 * seq, 0xA)
                                   + old.encode(frame), (HOST, ep.local_port))
        await until(lambda: len(got) == 5)
        new = [G722Encoder().encode(f) for f in _frames(tone(300, 20, SAMPLE_RATE, -6.0))]
        phone.transport.sendto(pack_header(True, PT_G722, 500, 90000, 0xB) + new[0],
                               (HOST, ep.local_port))
        await until(lambda: len(got) == 6)
        assert got[5] == G722Decoder().decode(new[0])       # as a fresh decoder hears it
        assert ep.stats.resyncs == 1
    finally:
        ep.close()
        assert phone.transport is not None
        phone.transport.close()


async def test_ptime_30_packets(pair: tuple[RtpEndpoint, RtpEndpoint]) -> None:
    """30 ms G.722 packets are 240 bytes (timestamps +240) and come out as 20 ms frames."""
    a, b = pair
    a.configure((HOST, b.local_port), "g722", PT_G722, None, ptime_ms=30)
    b.configure((HOST, a.local_port), "g722", PT_G722, None, ptime_ms=30)
    got: list[bytes] = []
    b.on_audio = got.append
    for frame in _frames(tone(800, 120, SAMPLE_RATE)):
        a.send_audio(frame)
    await until(lambda: len(got) == 6)
    assert a.stats.sent == 4 and b.stats.received == 4
    assert all(len(f) == FRAME_BYTES for f in got)
