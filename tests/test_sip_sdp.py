"""SDP parse/serialize and offer/answer against offers written the way real endpoints
write them (tests/vectors/sdp/)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge.errors import SdpError
from bridge.sip.sdp import (
    Direction,
    accept_answer,
    answer_offer,
    make_offer,
    parse_sdp,
    with_version,
)

VECTORS = Path(__file__).parent / "vectors" / "sdp"


def offer(name: str) -> bytes:
    return (VECTORS / f"{name}.sdp").read_bytes()


# file -> (codec, payload type, dtmf payload type, ptime, remote address, remote port)
EXPECTED = {
    "polycom_vvx": ("pcmu", 0, 127, 20, "192.168.1.50", 2222),
    "cisco_gateway": ("pcma", 8, 101, 20, "10.10.10.1", 16434),
    "asterisk": ("pcmu", 0, 101, 30, "203.0.113.5", 10050),
    "baresip": ("pcmu", 0, 101, 20, "127.0.0.1", 10010),
    "linphone": ("pcmu", 0, 100, 20, "192.168.0.12", 7078),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_answer_real_offers(name: str) -> None:
    sdp = parse_sdp(offer(name))
    answer, media = answer_offer(sdp, address="198.51.100.1", port=20000)
    assert (media.codec, media.payload_type, media.dtmf_payload_type, media.ptime_ms,
            media.remote_address, media.remote_port) == EXPECTED[name]
    assert media.may_send
    # RFC 3264 §6: as many m-lines as the offer, refused ones with port 0.
    assert len(answer.media) == len(sdp.media)
    audio = answer.media[0]
    assert audio.port == 20000
    assert audio.formats == (str(media.payload_type), str(media.dtmf_payload_type))
    assert audio.direction() is Direction.SENDRECV
    assert all(m.port == 0 for m in answer.media[1:])
    reparsed = parse_sdp(answer.serialize())
    assert reparsed == answer


def test_caller_preference_among_ours() -> None:
    sdp = parse_sdp(offer("cisco_gateway"))     # offers PCMA before PCMU
    _, media = answer_offer(sdp, address="198.51.100.1", port=20000)
    assert media.codec == "pcma"
    _, media = answer_offer(sdp, address="198.51.100.1", port=20000, codecs=("pcmu",))
    assert media.codec == "pcmu"


def test_dtmf_fmtp_is_echoed() -> None:
    answer, _ = answer_offer(parse_sdp(offer("cisco_gateway")), address="192.0.2.1", port=1)
    assert answer.media[0].fmtp("101") == "0-15"


def test_answer_serializes_exactly() -> None:
    answer, _ = answer_offer(parse_sdp(offer("asterisk")), address="198.51.100.1",
                             port=20000, session_id="42", session_version=7)
    assert answer.serialize() == (
        b"v=0\r\no=voicebridge 42 7 IN IP4 198.51.100.1\r\ns=voicebridge\r\n"
        b"c=IN IP4 198.51.100.1\r\nt=0 0\r\nm=audio 20000 RTP/AVP 0 101\r\n"
        b"a=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\n"
        b"a=fmtp:101 0-16\r\na=ptime:30\r\na=sendrecv\r\n")


@pytest.mark.parametrize("name", ["webrtc_chrome", "srtp_sdes"])
def test_secure_profiles_rejected_cleanly(name: str) -> None:
    sdp = parse_sdp(offer(name))  # parses fine...
    with pytest.raises(SdpError, match="no common audio codec"):
        answer_offer(sdp, address="198.51.100.1", port=20000)  # ...but cannot be answered


@pytest.mark.parametrize("name", sorted(EXPECTED) + ["webrtc_chrome", "srtp_sdes"])
def test_roundtrip_keeps_every_line(name: str) -> None:
    data = offer(name)
    assert parse_sdp(data).serialize() == data


@pytest.mark.parametrize(("attr", "remote", "local", "may_send"), [
    ("sendrecv", Direction.SENDRECV, Direction.SENDRECV, True),
    ("sendonly", Direction.SENDONLY, Direction.RECVONLY, False),
    ("recvonly", Direction.RECVONLY, Direction.SENDONLY, True),
    ("inactive", Direction.INACTIVE, Direction.INACTIVE, False),
])
def test_directions(attr: str, remote: Direction, local: Direction, may_send: bool) -> None:
    text = offer("asterisk").replace(b"a=sendrecv", f"a={attr}".encode())
    answer, media = answer_offer(parse_sdp(text), address="192.0.2.1", port=1)
    assert (media.remote_direction, media.local_direction, media.may_send) == (
        remote, local, may_send)
    assert answer.media[0].direction() is local


def test_zero_address_hold() -> None:
    text = offer("asterisk").replace(b"c=IN IP4 203.0.113.5", b"c=IN IP4 0.0.0.0")
    _, media = answer_offer(parse_sdp(text), address="192.0.2.1", port=1)
    assert media.on_hold and media.local_direction is Direction.RECVONLY


def test_media_level_direction_overrides_session_level() -> None:
    text = offer("polycom_vvx") + b"a=inactive\r\n"   # session says sendrecv
    _, media = answer_offer(parse_sdp(text), address="192.0.2.1", port=1)
    assert media.remote_direction is Direction.INACTIVE


def test_odd_ptime_falls_back_to_20() -> None:
    text = offer("asterisk").replace(b"a=ptime:30", b"a=ptime:17")
    _, media = answer_offer(parse_sdp(text), address="192.0.2.1", port=1)
    assert media.ptime_ms == 20


def test_our_offer_and_their_answer() -> None:
    ours = make_offer(address="198.51.100.1", port=20002, session_id="9", session_version=1)
    assert ours.serialize() == (
        b"v=0\r\no=voicebridge 9 1 IN IP4 198.51.100.1\r\ns=voicebridge\r\n"
        b"c=IN IP4 198.51.100.1\r\nt=0 0\r\nm=audio 20002 RTP/AVP 0 8 101\r\n"
        b"a=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n"
        b"a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=ptime:20\r\n"
        b"a=sendrecv\r\n")
    # The far end answers it the way we would.
    their_answer, _ = answer_offer(ours, address="192.0.2.77", port=5004,
                                   codecs=("pcma",))
    media = accept_answer(ours, their_answer)
    assert (media.codec, media.payload_type, media.dtmf_payload_type) == ("pcma", 8, 101)
    assert (media.remote_address, media.remote_port) == ("192.0.2.77", 5004)
    assert with_version(ours, 2).origin.session_version == 2


def test_answer_accepting_nothing() -> None:
    ours = make_offer(address="198.51.100.1", port=20002)
    refused = parse_sdp(b"v=0\r\no=- 1 1 IN IP4 192.0.2.7\r\ns=-\r\nc=IN IP4 192.0.2.7\r\n"
                        b"t=0 0\r\nm=audio 0 RTP/AVP 0\r\n")
    with pytest.raises(SdpError):
        accept_answer(ours, refused)


@pytest.mark.parametrize("body", [
    b"", b"v=1\r\n", b"o=- 1 1 IN IP4 x\r\n", b"v=0\r\ns=-\r\n",
    b"v=0\r\no=- 1 x IN IP4 192.0.2.1\r\n", b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\nbogus\r\n",
    b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\nm=audio port RTP/AVP 0\r\n",
    b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\nc=IN IP4\r\n", b"\xff\xfe",
])
def test_malformed_sdp(body: bytes) -> None:
    with pytest.raises(SdpError):
        parse_sdp(body)


def test_no_connection_address() -> None:
    text = offer("asterisk").replace(b"c=IN IP4 203.0.113.5\r\n", b"")
    with pytest.raises(SdpError, match="connection"):
        answer_offer(parse_sdp(text), address="192.0.2.1", port=1)
