"""Writes the RTP vector packets of this folder (run once; the .bin files are the vectors).

Built with plain ``struct`` from the RFC 3550 §5.1 layout, independently of
``bridge.rtp.packet``; ``manifest.json`` states what each packet must parse to, or the
exact ``RtpError.reason`` it must be rejected with.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

HERE = Path(__file__).parent

# µ-law 1 kHz tone at -10 dBm0-ish: the 8-sample period repeated over 20 ms.
TONE = bytes([0x1E, 0x0D, 0x0D, 0x1E, 0x9E, 0x8D, 0x8D, 0x9E]) * 20


def header(b0: int, b1: int, seq: int, ts: int, ssrc: int) -> bytes:
    return struct.pack("!BBHII", b0, b1, seq, ts, ssrc)


def main() -> None:
    valid: dict[str, tuple[bytes, dict[str, object]]] = {
        "pcmu_20ms.bin": (
            header(0x80, 0x00, 0x1234, 0x0001E240, 0x5EED0001) + TONE,
            dict(payload_type=0, marker=False, sequence=0x1234, timestamp=0x0001E240,
                 ssrc=0x5EED0001, csrc=[], extension=None, padding=0, payload_len=160)),
        "pcma_marker.bin": (
            header(0x80, 0x88, 0xFFFF, 0xFFFFFF60, 0x0BADCAFE) + bytes([0xD5]) * 160,
            dict(payload_type=8, marker=True, sequence=0xFFFF, timestamp=0xFFFFFF60,
                 ssrc=0x0BADCAFE, csrc=[], extension=None, padding=0, payload_len=160)),
        "csrc2.bin": (
            header(0x82, 0x00, 7, 1120, 0x11111111)
            + struct.pack("!II", 0x22222222, 0x33333333) + TONE,
            dict(payload_type=0, marker=False, sequence=7, timestamp=1120, ssrc=0x11111111,
                 csrc=[0x22222222, 0x33333333], extension=None, padding=0,
                 payload_len=160)),
        "extension_onebyte.bin": (
            # RFC 8285 one-byte header (profile 0xBEDE), one word: ID 1, len 0 (1 byte)
            # of audio level, then padding.
            header(0x90, 0x00, 8, 1280, 0x11111111)
            + struct.pack("!HH", 0xBEDE, 1) + bytes([0x10, 0x2A, 0x00, 0x00]) + TONE,
            dict(payload_type=0, marker=False, sequence=8, timestamp=1280, ssrc=0x11111111,
                 csrc=[], extension=[0xBEDE, "102a0000"], padding=0, payload_len=160)),
        "padding4.bin": (
            header(0xA0, 0x00, 9, 1440, 0x11111111) + TONE + bytes([0, 0, 0, 4]),
            dict(payload_type=0, marker=False, sequence=9, timestamp=1440, ssrc=0x11111111,
                 csrc=[], extension=None, padding=4, payload_len=160)),
        "all_features.bin": (
            header(0xB1, 0x80, 10, 1600, 0x11111111) + struct.pack("!I", 0x44444444)
            + struct.pack("!HH", 0x1000, 0) + TONE[:80] + bytes([0, 2]),
            dict(payload_type=0, marker=True, sequence=10, timestamp=1600, ssrc=0x11111111,
                 csrc=[0x44444444], extension=[0x1000, ""], padding=2, payload_len=80)),
    }
    pcmu = valid["pcmu_20ms.bin"][0]
    invalid: dict[str, tuple[bytes, str]] = {
        "short_header.bin": (pcmu[:11], "short"),
        "empty.bin": (b"", "short"),
        "version1.bin": (bytes([0x40]) + pcmu[1:], "version"),
        "version0.bin": (bytes([0x00]) + pcmu[1:], "version"),
        "padding_zero.bin": (bytes([0xA0]) + pcmu[1:-1] + b"\x00", "padding"),
        "padding_overflow.bin": (bytes([0xA0]) + pcmu[1:-1] + bytes([200]), "padding"),
        "extension_overflow.bin": (
            header(0x90, 0x00, 1, 160, 1) + struct.pack("!HH", 0xBEDE, 0x100) + TONE,
            "extension"),
        "extension_truncated.bin": (header(0x90, 0x00, 1, 160, 1) + b"\xbe\xde",
                                    "extension"),
        "csrc_overflow.bin": (header(0x8F, 0x00, 1, 160, 1) + bytes(20), "short"),
        "oversized.bin": (header(0x80, 0x00, 1, 160, 1) + bytes(1489), "oversized"),
        # RTCP receiver report (RFC 3550 §6.4.2) with one report block, on the RTP port.
        "rtcp_rr.bin": (struct.pack("!BBHI", 0x81, 201, 7, 0x5EED0002)
                        + struct.pack("!IIIIII", 0x5EED0001, 0x01000002, 0x1234,
                                      16, 0, 0), "rtcp"),
        "rtcp_bye.bin": (struct.pack("!BBHI", 0x81, 203, 1, 0x5EED0002), "rtcp"),
    }
    manifest: dict[str, object] = {"valid": {}, "invalid": {}}
    for name, (data, fields) in valid.items():
        (HERE / name).write_bytes(data)
        manifest["valid"][name] = fields  # type: ignore[index]
    for name, (data, reason) in invalid.items():
        (HERE / name).write_bytes(data)
        manifest["invalid"][name] = reason  # type: ignore[index]
    (HERE / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")


if __name__ == "__main__":
    main()
