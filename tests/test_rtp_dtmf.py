"""RFC 4733 telephone-events: vectors, SIPp captures, sender and receiver."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from bridge.errors import RtpError
from bridge.rtp.dtmf import DIGITS, DtmfReceiver, TelephoneEvent, tone_packets
from bridge.rtp.packet import parse
from bridge.rtp.session import RtpSession
from tests.support.interop import require

VECTORS = Path(__file__).parent / "vectors" / "rfc4733"
SEQUENCES = json.loads((VECTORS / "sequences.json").read_text())
SIPP_DIR = Path("/usr/share/sip-tester")


def read_pcap_udp_payloads(data: bytes) -> list[bytes]:
    """The UDP payloads of a classic libpcap file (Ethernet, Linux SLL or raw IPv4)."""
    magic = data[:4]
    if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1"):
        endian = "<"
    elif magic in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d"):
        endian = ">"
    else:
        raise ValueError("not a pcap file")
    linktype = struct.unpack_from(endian + "I", data, 20)[0]
    link_header = {1: 14, 113: 16, 101: 0, 228: 0}[linktype]
    out, at = [], 24
    while at + 16 <= len(data):
        incl = struct.unpack_from(endian + "I", data, at + 8)[0]
        frame = data[at + 16:at + 16 + incl]
        at += 16 + incl
        ip = frame[link_header:]
        if ip[0] >> 4 != 4 or ip[9] != 17:
            continue
        udp = ip[(ip[0] & 0x0F) * 4:]
        length = struct.unpack_from("!H", udp, 4)[0]
        out.append(bytes(udp[8:length]))
    return out


def receive_all(datagrams: list[bytes], dtmf_pt: int) -> tuple[str, RtpSession]:
    session = RtpSession(payload_type=0, dtmf_payload_type=dtmf_pt, remote=("192.0.2.1", 9))
    digits = ""
    for i, data in enumerate(datagrams):
        digit = session.receive(data, ("192.0.2.1", 9), i * 0.02)
        if digit is not None:
            digits += digit
        while session.pop_audio(i * 0.02) is not None:
            pass
    return digits, session


@pytest.mark.parametrize("name", sorted(SEQUENCES))
def test_vector_packets_decode_to_their_fields(name: str) -> None:
    for p in SEQUENCES[name]["packets"]:
        pkt = parse(bytes.fromhex(p["hex"]))
        assert (pkt.marker, pkt.payload_type, pkt.sequence, pkt.timestamp) == (
            p["marker"], p["payload_type"], p["sequence"], p["timestamp"])
        ev = TelephoneEvent.parse(pkt.payload)
        assert (ev.event, ev.end, ev.volume, ev.duration) == (
            p["event"], p["end"], p["volume"], p["duration"])
        assert ev.serialize() == pkt.payload


@pytest.mark.parametrize("name", sorted(SEQUENCES))
def test_vector_sequences_give_one_digit_per_key_press(name: str) -> None:
    seq = SEQUENCES[name]
    pt = seq["packets"][0]["payload_type"]
    digits, session = receive_all([bytes.fromhex(p["hex"]) for p in seq["packets"]], pt)
    assert digits == seq["digits"]
    assert session.stats.dtmf_received == len(seq["digits"])
    # event packets share the sequence space with audio but are not audio: no concealment
    assert session.stats.lost == 0


def test_own_sipp_layout_pcap() -> None:
    datagrams = read_pcap_udp_payloads((VECTORS / "digit1_sipp_layout.pcap").read_bytes())
    assert len(datagrams) == 10
    assert receive_all(datagrams, 101)[0] == "1"


SIPP_PCAPS = {f"dtmf_2833_{d}.pcap": d for d in "0123456789"}
SIPP_PCAPS.update({"dtmf_2833_pound.pcap": "#", "dtmf_2833_star.pcap": "*"})


@pytest.mark.parametrize("name", sorted(SIPP_PCAPS))
def test_packaged_sipp_dtmf_pcaps(name: str) -> None:
    path = SIPP_DIR / name
    require(path.exists(), f"{path} (Debian sip-tester) not installed")
    datagrams = read_pcap_udp_payloads(path.read_bytes())
    assert len(datagrams) >= 4
    pt = parse(datagrams[0]).payload_type
    digits, session = receive_all(datagrams, pt)
    assert digits == SIPP_PCAPS[name]
    assert session.stats.received == len(datagrams)


def test_end_retransmissions_and_late_updates_are_absorbed() -> None:
    rx = DtmfReceiver()
    start = TelephoneEvent(4, False, 10, 0).serialize()
    end = TelephoneEvent(4, True, 10, 800).serialize()
    assert rx.receive(True, 1000, start) == "4"
    assert [rx.receive(False, 1000, end) for _ in range(3)] == [None, None, None]
    assert rx.receive(True, 5000, start) == "4"            # a second press
    assert rx.receive(False, 1000, end) is None             # straggler of the first
    assert rx.events == 2


def test_short_payload_is_an_rtp_error() -> None:
    with pytest.raises(RtpError) as info:
        DtmfReceiver().receive(True, 0, b"\x01\x02\x03")
    assert info.value.reason == "dtmf"
    with pytest.raises(RtpError):
        TelephoneEvent.parse(b"")


def test_tone_packets_layout() -> None:
    packets = tone_packets("#", tone_ms=100, interval_ms=50, volume=10)
    # start (marker, duration 0), one update at 50 ms, three end packets 50 ms apart
    assert [p.offset for p in packets] == [0.0, 0.05, 0.1, 0.15, 0.2]
    assert [p.marker for p in packets] == [True, False, False, False, False]
    events = [TelephoneEvent.parse(p.payload) for p in packets]
    assert [e.duration for e in events] == [0, 400, 800, 800, 800]
    assert [e.end for e in events] == [False, False, True, True, True]
    assert {e.event for e in events} == {11} and {e.volume for e in events} == {10}
    assert packets[0].payload == bytes.fromhex("0b0a0000")
    assert packets[-1].payload == bytes.fromhex("0b8a0320")


def test_digit_mapping() -> None:
    for code, digit in enumerate(DIGITS):
        assert TelephoneEvent(code).digit == digit
        assert TelephoneEvent.parse(tone_packets(digit)[0].payload).event == code
    assert TelephoneEvent.parse(tone_packets("d")[0].payload).event == 15
    assert TelephoneEvent(16).digit is None
    with pytest.raises(ValueError):
        tone_packets("x")


def test_session_sends_events_receiver_reports_them_once() -> None:
    tx = RtpSession(payload_type=0, dtmf_payload_type=101, remote=("192.0.2.2", 8000))
    rx = RtpSession(payload_type=0, dtmf_payload_type=101, remote=("192.0.2.1", 7000))
    src = ("192.0.2.1", 7000)
    now, got = 0.0, ""
    for _ in range(3):                                       # some audio first
        for pkt in tx.send_audio(b"\xff" * 160, now):
            rx.receive(pkt, src, now)
        now += 0.02
    wire = []
    for digit in "12#":
        start = now
        ts = tx.begin_event(start)
        for p in tone_packets(digit):
            wire.append(tx.event_packet(p.payload, p.marker, start + p.offset))
        tx.end_event(start + 0.1, 800)
        now = start + 0.3
        assert all(parse(w).timestamp == ts for w in wire[-5:])
        assert parse(wire[-5]).marker and not any(parse(w).marker for w in wire[-4:])
    for w in wire:
        d = rx.receive(w, src, now)
        got += d or ""
    assert got == "12#"
    assert tx.stats.dtmf_sent == 3
    pkt = tx.send_audio(b"\xff" * 160, now)[0]               # audio resumes: new talkspurt
    assert parse(pkt).marker
