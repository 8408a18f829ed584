"""Fuzzing: the SIP and SDP parsers only ever raise their documented exceptions.

Fed whole (random bytes, and mutations of the RFC 4475 vectors and the SDP vectors), and
the stream parser fed in arbitrary chunks down to one byte at a time. The UAS core is
fed the same and must never raise at all.
"""

from __future__ import annotations

from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.errors import SdpError, SipParseError
from bridge.sip.message import StreamParser, parse_message
from bridge.sip.sdp import answer_offer, parse_sdp
from bridge.sip.settings import SipSettings
from bridge.sip.ua import UserAgent

TORTURE = sorted((Path(__file__).parent / "vectors" / "rfc4475").glob("*.dat"))
SDPS = sorted((Path(__file__).parent / "vectors" / "sdp").glob("*.sdp"))
VECTOR_BYTES = [p.read_bytes() for p in TORTURE]
SDP_BYTES = [p.read_bytes() for p in SDPS]

FUZZ = settings(max_examples=200, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@st.composite
def mutated(draw: st.DrawFn, corpus: list[bytes]) -> bytes:
    data = bytearray(draw(st.sampled_from(corpus)))
    for _ in range(draw(st.integers(1, 8))):
        if not data:
            break
        kind = draw(st.sampled_from(["flip", "insert", "delete", "truncate", "dup"]))
        pos = draw(st.integers(0, len(data) - 1))
        if kind == "flip":
            data[pos] = draw(st.sampled_from(
                [0, 0x20, 0x09, 0x0A, 0x0D, 0x22, 0x3A, 0x3B, 0x2C, 0x3C, 0x3E, 0x3D, 0xFF,
                 0x5C, 0x40]))
        elif kind == "insert":
            data[pos:pos] = draw(st.sampled_from(
                [b"\r\n", b" ", b";", b",", b'"', b"<", b">", b"\r\n ", b"%", b"::", b"@@",
                 b"Content-Length: 99999\r\n", b"\x00"]))
        elif kind == "delete":
            del data[pos:pos + draw(st.integers(1, 20))]
        elif kind == "truncate":
            del data[pos:]
        else:
            data[pos:pos] = data[pos:pos + draw(st.integers(1, 40))]
    return bytes(data)


def _parse_or_documented(data: bytes) -> None:
    try:
        message = parse_message(data)
    except SipParseError as exc:
        assert isinstance(exc.status, int) and 400 <= exc.status <= 599
        return
    message.serialize()  # whatever parses also serializes


@FUZZ
@given(st.binary(max_size=2000))
def test_random_bytes(data: bytes) -> None:
    _parse_or_documented(data)


@FUZZ
@given(mutated(VECTOR_BYTES))
def test_mutated_torture_vectors(data: bytes) -> None:
    _parse_or_documented(data)


@FUZZ
@given(mutated(VECTOR_BYTES))
def test_uas_core_never_raises(data: bytes) -> None:
    ua = UserAgent(SipSettings(), host="192.0.2.200", port=5060)
    ua.receive(data, ("192.0.2.1", 5060), "udp", 0.0)
    ua.receive(data, ("192.0.2.1", 40000), "tcp", 0.0)
    ua.handle_timer(100.0)
    ua.datagrams_to_send()
    ua.data_to_send()
    ua.events()


def _feed_stream(chunks: list[bytes]) -> list[bytes]:
    parser = StreamParser()
    bodies: list[bytes] = []
    for chunk in chunks:
        parser.feed(chunk)
        while True:
            try:
                message = parser.next_message()
            except SipParseError:
                if parser.broken:
                    return bodies
                continue
            if message is None:
                break
            bodies.append(message.body)
    return bodies


@FUZZ
@given(st.lists(st.binary(max_size=60), max_size=40))
def test_stream_parser_random_chunks(chunks: list[bytes]) -> None:
    _feed_stream(chunks)


@FUZZ
@given(mutated(VECTOR_BYTES), st.integers(1, 17))
def test_stream_parser_mutated_in_small_chunks(data: bytes, size: int) -> None:
    _feed_stream([data[i:i + size] for i in range(0, len(data), size)])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from([0, 1, 2, 3]), min_size=1, max_size=4), st.integers(1, 9))
def test_stream_parser_reassembles_byte_at_a_time(picks: list[int], size: int) -> None:
    """Whole valid messages back to back come out whole, however the bytes are cut."""
    framed = [VECTOR_BYTES[i] for i in range(len(VECTOR_BYTES))
              if TORTURE[i].stem in ("esc01", "lwsdisp", "transports", "mpart01")]
    data = b"".join(framed[i] for i in picks)
    chunks = [data[i:i + size] for i in range(0, len(data), size)]
    assert _feed_stream(chunks) == [parse_message(framed[i]).body for i in picks]


@FUZZ
@given(st.one_of(mutated(SDP_BYTES), st.binary(max_size=500),
                 st.text(max_size=300).map(lambda t: ("v=0\r\n" + t).encode())))
def test_sdp_parser_and_answer(data: bytes) -> None:
    try:
        sdp = parse_sdp(data)
    except SdpError:
        return
    sdp.serialize()
    try:
        answer, _media = answer_offer(sdp, address="192.0.2.1", port=20000)
    except SdpError:
        return
    parse_sdp(answer.serialize())
