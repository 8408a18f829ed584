"""Writes the RFC 4733 telephone-event vectors of this folder (run once).

Built with plain ``struct`` from the RFC 4733 §2.3 payload layout, independently of
``bridge.rtp.dtmf``. ``sequences.json`` lists packet sequences (hex RTP datagrams, in
arrival order) with every field spelled out and the digits a receiver must report.
``digit1_sipp_layout.pcap`` is a libpcap capture (Ethernet/IPv4/UDP) laid out like the
``dtmf_2833_*.pcap`` files SIPp ships: payload type 101, a 20 ms update interval, the
end packet sent three times with the same sequence number.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

HERE = Path(__file__).parent
DIGITS = "0123456789*#ABCD"


def rtp(marker: bool, pt: int, seq: int, ts: int, ssrc: int, payload: bytes) -> bytes:
    return struct.pack("!BBHII", 0x80, (0x80 if marker else 0) | pt, seq & 0xFFFF,
                       ts & 0xFFFFFFFF, ssrc) + payload


def event(code: int, end: bool, volume: int, duration: int) -> bytes:
    return struct.pack("!BBH", code, (0x80 if end else 0) | volume, duration)


def packet(marker: bool, pt: int, seq: int, ts: int, code: int, end: bool, volume: int,
           duration: int, ssrc: int = 0x4733D7F0) -> dict[str, object]:
    data = rtp(marker, pt, seq, ts, ssrc, event(code, end, volume, duration))
    return dict(hex=data.hex(), marker=marker, payload_type=pt, sequence=seq & 0xFFFF,
                timestamp=ts & 0xFFFFFFFF, event=code, end=end, volume=volume,
                duration=duration)


def key_press(code: int, *, pt: int, seq: int, ts: int, volume: int = 10,
              updates: int = 4, step: int = 400, end_repeats: int = 3,
              same_seq_ends: bool = False) -> list[dict[str, object]]:
    """Start (marker, duration 0), updates every ``step`` samples, the end packet thrice."""
    out = [packet(True, pt, seq, ts, code, False, volume, 0)]
    for i in range(1, updates + 1):
        out.append(packet(False, pt, seq + i, ts, code, False, volume, i * step))
    final = (updates + 1) * step
    for i in range(end_repeats):
        s = seq + updates + 1 + (0 if same_seq_ends else i)
        out.append(packet(False, pt, s, ts, code, True, volume, final))
    return out


def sequences() -> dict[str, dict[str, object]]:
    seqs: dict[str, dict[str, object]] = {}
    seqs["digit9"] = dict(
        description="One key press of '9' at 8 kHz with 50 ms (400-sample) updates, as in "
                    "the RFC 4733 §5 examples: marker on the start packet, the duration "
                    "growing, the end packet sent three times; one timestamp throughout.",
        packets=key_press(9, pt=101, seq=0x2000, ts=0x00010000, volume=7),
        digits="9")
    seqs["all_sixteen"] = dict(
        description="Events 0-15, one key press each: 0-9, *, #, A-D (RFC 4733 §3.2).",
        packets=[p for code in range(16)
                 for p in key_press(code, pt=96, seq=100 + 5 * code,
                                    ts=8000 * code, volume=code, updates=1)],
        digits=DIGITS)
    lost_start = key_press(5, pt=101, seq=40, ts=123456)[1:]
    seqs["start_lost"] = dict(
        description="The start packet (with the marker) is lost: still exactly one '5'.",
        packets=lost_start, digits="5")
    ends_only = key_press(3, pt=101, seq=60, ts=654321)[-3:]
    seqs["only_end_packets"] = dict(
        description="Only the three end packets arrive: exactly one '3'.",
        packets=ends_only, digits="3")
    twice = (key_press(7, pt=101, seq=0xFFF8, ts=0xFFFFFC00, updates=2)
             + key_press(7, pt=101, seq=0xFFFE, ts=0x00000C80, updates=2))
    seqs["same_digit_twice_wrapping"] = dict(
        description="'7' pressed twice; sequence numbers and timestamps wrap between the "
                    "two presses. Two timestamps, two digits.",
        packets=twice, digits="77")
    reordered = key_press(1, pt=101, seq=500, ts=80000)
    reordered[0], reordered[2] = reordered[2], reordered[0]
    reordered += reordered[-2:]                       # retransmissions duplicated again
    seqs["reordered_and_duplicated"] = dict(
        description="'1' with the start packet overtaken by an update and the end packets "
                    "duplicated in transit.",
        packets=reordered, digits="1")
    # RFC 4733 §2.5.1.3: an event longer than the 16-bit duration is cut into segments;
    # a new segment has a new timestamp (previous + 0xFFFF here) and no marker.
    seg1 = [packet(True, 101, 900, 1_000_000, 0, False, 10, 0),
            packet(False, 101, 901, 1_000_000, 0, False, 10, 0xFFFF)]
    seg1 += [packet(False, 101, 902 + i, 1_000_000, 0, False, 10, 0xFFFF) for i in range(3)]
    seg2 = [packet(False, 101, 905, 1_000_000 + 0xFFFF, 0, False, 10, 800)]
    seg2 += [packet(False, 101, 906 + i, 1_000_000 + 0xFFFF, 0, True, 10, 1600)
             for i in range(3)]
    seqs["long_event_segments"] = dict(
        description="A '0' held longer than 8.19 s: two segments, one key press.",
        packets=seg1 + seg2, digits="0")
    seqs["flash_and_unknown"] = dict(
        description="Events outside 0-15 (16 = hook flash in RFC 4734) give no digit.",
        packets=key_press(16, pt=101, seq=10, ts=1000, updates=1), digits="")
    return seqs


def pcap(packets: list[bytes], t0: int = 1_700_000_000) -> bytes:
    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)]
    for i, rtp_bytes in enumerate(packets):
        udp = struct.pack("!HHHH", 6002, 6000, 8 + len(rtp_bytes), 0) + rtp_bytes
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0xB8, 20 + len(udp), i, 0, 64, 17, 0,
                         bytes([127, 0, 0, 1]), bytes([127, 0, 0, 1])) + udp
        frame = bytes(6) + bytes(6) + b"\x08\x00" + ip
        ts_us = 20_000 * min(i, 7)
        out.append(struct.pack("<IIII", t0 + ts_us // 1_000_000, ts_us % 1_000_000,
                               len(frame), len(frame)) + frame)
    return b"".join(out)


def main() -> None:
    (HERE / "sequences.json").write_text(json.dumps(sequences(), indent=1) + "\n")
    layout = key_press(1, pt=101, seq=0x3000, ts=0x0033E000, updates=6, step=320,
                       same_seq_ends=True)
    (HERE / "digit1_sipp_layout.pcap").write_bytes(
        pcap([bytes.fromhex(str(p["hex"])) for p in layout]))


if __name__ == "__main__":
    main()
