"""RTP packet parse/serialize against literal vectors, and fuzzing of the parsers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.errors import RtpError
from bridge.rtp.dtmf import DtmfReceiver, TelephoneEvent
from bridge.rtp.packet import (
    RtpExtension,
    RtpPacket,
    is_rtcp,
    pack_header,
    parse,
    parse_fast,
)
from bridge.rtp.session import RtpSession

VECTORS = Path(__file__).parent / "vectors" / "rtp"
MANIFEST = json.loads((VECTORS / "manifest.json").read_text())
VALID = sorted(MANIFEST["valid"])
INVALID = sorted(MANIFEST["invalid"])


@pytest.mark.parametrize("name", VALID)
def test_vector_parses_to_the_stated_fields(name: str) -> None:
    data = (VECTORS / name).read_bytes()
    want = MANIFEST["valid"][name]
    pkt = RtpPacket.parse(data)
    assert pkt.version == 2
    assert pkt.payload_type == want["payload_type"]
    assert pkt.marker is want["marker"]
    assert pkt.sequence == want["sequence"]
    assert pkt.timestamp == want["timestamp"]
    assert pkt.ssrc == want["ssrc"]
    assert list(pkt.csrc) == want["csrc"]
    assert pkt.padding == want["padding"]
    assert len(pkt.payload) == want["payload_len"]
    if want["extension"] is None:
        assert pkt.extension is None
    else:
        profile, data_hex = want["extension"]
        assert pkt.extension == RtpExtension(profile, bytes.fromhex(data_hex))


@pytest.mark.parametrize("name", VALID)
def test_vector_round_trips_byte_exact(name: str) -> None:
    data = (VECTORS / name).read_bytes()
    assert parse(data).serialize() == data


@pytest.mark.parametrize("name", VALID)
def test_fast_path_agrees_with_full_parse(name: str) -> None:
    data = (VECTORS / name).read_bytes()
    pkt = parse(data)
    assert parse_fast(data) == (pkt.marker, pkt.payload_type, pkt.sequence, pkt.timestamp,
                                pkt.ssrc, pkt.payload)


@pytest.mark.parametrize("name", INVALID)
def test_malformed_vector_rejected_with_exact_reason(name: str) -> None:
    data = (VECTORS / name).read_bytes()
    for parser in (parse, parse_fast):
        with pytest.raises(RtpError) as info:
            parser(data)
        assert info.value.reason == MANIFEST["invalid"][name]


def test_payload_bytes_are_exact() -> None:
    data = (VECTORS / "padding4.bin").read_bytes()
    assert parse(data).payload == data[12:-4]
    data = (VECTORS / "all_features.bin").read_bytes()
    assert parse(data).payload == data[12 + 4 + 4:-2]


def test_oversized_limit_is_configurable() -> None:
    data = pack_header(False, 0, 1, 2, 3) + bytes(400)
    assert parse(data, max_size=412).sequence == 1
    with pytest.raises(RtpError) as info:
        parse(data, max_size=411)
    assert info.value.reason == "oversized"


def test_pack_header_matches_serialize() -> None:
    pkt = RtpPacket(payload_type=8, sequence=0x10000 + 5, timestamp=(1 << 32) + 7,
                    ssrc=0xCAFEBABE, payload=b"\xd5" * 160, marker=True)
    wire = pkt.serialize()
    assert wire[:12] == bytes.fromhex("8088000500000007cafebabe")
    assert pack_header(True, 8, 5, 7, 0xCAFEBABE) + pkt.payload == wire


def test_serialize_refuses_unencodable_fields() -> None:
    with pytest.raises(ValueError):
        RtpPacket(payload_type=128, sequence=0, timestamp=0, ssrc=0).serialize()
    with pytest.raises(ValueError):
        RtpPacket(payload_type=0, sequence=0, timestamp=0, ssrc=0,
                  extension=RtpExtension(1, b"abc")).serialize()


def test_rtcp_recognised() -> None:
    assert is_rtcp((VECTORS / "rtcp_rr.bin").read_bytes())
    assert is_rtcp((VECTORS / "rtcp_bye.bin").read_bytes())
    assert not is_rtcp((VECTORS / "pcma_marker.bin").read_bytes())   # PT 8 with marker


# -- fuzzing: only the documented exception ever escapes --------------------------------

SEEDS = [(VECTORS / n).read_bytes() for n in VALID + INVALID]


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(0, 6))):
        if not data:
            break
        i = draw(st.integers(0, len(data) - 1))
        data[i] = draw(st.integers(0, 255))
    cut = draw(st.integers(0, len(data)))
    return bytes(data[:cut]) if draw(st.booleans()) else bytes(data)


FUZZ = settings(max_examples=400, deadline=None,
                suppress_health_check=[HealthCheck.too_slow])


def _check_parsers(data: bytes) -> None:
    try:
        pkt = parse(data)
    except RtpError as exc:
        assert exc.reason in {"short", "version", "padding", "extension", "oversized", "rtcp"}
        with pytest.raises(RtpError) as info:
            parse_fast(data)
        assert info.value.reason == exc.reason
        return
    assert parse_fast(data)[5] == pkt.payload
    assert parse(pkt.serialize()) == pkt


@FUZZ
@given(st.binary(max_size=1600))
def test_fuzz_random_bytes(data: bytes) -> None:
    _check_parsers(data)


@FUZZ
@given(mutated())
def test_fuzz_mutated_valid_packets(data: bytes) -> None:
    _check_parsers(data)


@FUZZ
@given(st.binary(max_size=12), st.booleans(), st.integers(0, 0xFFFFFFFF))
def test_fuzz_dtmf_parsers(payload: bytes, marker: bool, ts: int) -> None:
    receiver = DtmfReceiver()
    for parse_event in (TelephoneEvent.parse,
                        lambda p: receiver.receive(marker, ts, p)):
        try:
            parse_event(payload)
        except RtpError as exc:
            assert exc.reason == "dtmf"
            assert len(payload) < 4


@FUZZ
@given(st.lists(st.one_of(mutated(), st.binary(max_size=200)), max_size=20))
def test_fuzz_session_receive_never_raises(datagrams: list[bytes]) -> None:
    session = RtpSession(payload_type=0, dtmf_payload_type=101, remote=("10.0.0.1", 4000))
    for i, data in enumerate(datagrams):
        session.receive(data, ("10.0.0.1", 4000), i * 0.02)
        while session.pop_audio(i * 0.02) is not None:
            pass
