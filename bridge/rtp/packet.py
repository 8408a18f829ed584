"""RTP packets (RFC 3550 §5.1): parse and serialize.

Theory of operation
-------------------
Two ways in, one set of rules:

* :func:`parse_fast` is the receive hot path. It validates the whole header (version,
  CSRC list, header extension, padding, size) and returns a plain tuple
  ``(marker, payload_type, sequence, timestamp, ssrc, payload)``. Building a frozen
  dataclass costs ~3 µs in CPython (each field goes through ``object.__setattr__``),
  several times the cost of the parse itself, so the per-packet path never builds one.
* :meth:`RtpPacket.parse` returns the full, typed, frozen value (CSRCs, extension,
  padding kept) for tools, tests and anything off the 50-packets-a-second path.

Both raise :class:`~bridge.errors.RtpError` with a stable ``reason`` (the metrics label)
and nothing else, whatever the bytes: ``short``, ``version``, ``padding``,
``extension``, ``oversized``, ``rtcp``.

RTCP arriving on the RTP port (a peer that multiplexes, RFC 5761, or a confused one)
is recognised by its packet type and reported as ``rtcp`` so that a caller can drop it
without counting it as a broken audio packet.

:func:`pack_header` is the send hot path: one ``struct`` call, no object.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import NewType

from bridge.errors import RtpError

Ssrc = NewType("Ssrc", int)

RTP_VERSION = 2
HEADER_SIZE = 12
#: Default upper bound for a datagram we accept (an Ethernet MTU); anything bigger is
#: not telephony audio and is dropped as ``oversized``.
MAX_PACKET_SIZE = 1500

_HEADER = struct.Struct("!BBHII")
_unpack_header = _HEADER.unpack_from
_pack_header = _HEADER.pack
_EXT_HEADER = struct.Struct("!HH")

# RFC 5761 §4: RTCP packet types 192-223 occupy the second octet where RTP has the
# marker bit and the payload type; RTP payload types 64-95 are therefore avoided.
_RTCP_FIRST = 192
_RTCP_LAST = 223


@dataclass(frozen=True, slots=True)
class RtpExtension:
    """An RTP header extension (RFC 3550 §5.3.1): 16-bit profile word and its data.

    ``data`` is a whole number of 32-bit words (RFC 8285 one-byte/two-byte elements are
    not interpreted here: telephony audio does not need them).
    """

    profile: int
    data: bytes = b""


@dataclass(frozen=True, slots=True)
class RtpPacket:
    """One RTP packet, immutable. ``padding`` is the number of padding octets (0 = none)."""

    payload_type: int
    sequence: int
    timestamp: int
    ssrc: int
    payload: bytes = b""
    marker: bool = False
    csrc: tuple[int, ...] = ()
    extension: RtpExtension | None = None
    padding: int = 0
    version: int = RTP_VERSION

    @classmethod
    def parse(cls, data: bytes, max_size: int = MAX_PACKET_SIZE) -> RtpPacket:
        """Parse one datagram; raises :class:`RtpError` (only) when it is not usable RTP."""
        return parse(data, max_size)

    def serialize(self) -> bytes:
        """The wire form. Raises ``ValueError`` for field values that cannot be encoded."""
        if not 0 <= self.payload_type <= 127:
            raise ValueError(f"payload type {self.payload_type} out of range")
        if len(self.csrc) > 15:
            raise ValueError("at most 15 CSRCs")
        if not 0 <= self.padding <= 255:
            raise ValueError("padding must be 0..255 octets")
        if self.extension is not None and len(self.extension.data) % 4:
            raise ValueError("extension data must be a whole number of 32-bit words")
        b0 = (self.version << 6) | len(self.csrc)
        if self.padding:
            b0 |= 0x20
        if self.extension is not None:
            b0 |= 0x10
        parts = [_pack_header(b0, (self.marker << 7) | self.payload_type,
                              self.sequence & 0xFFFF, self.timestamp & 0xFFFFFFFF,
                              self.ssrc & 0xFFFFFFFF)]
        if self.csrc:
            parts.append(struct.pack(f"!{len(self.csrc)}I", *self.csrc))
        if self.extension is not None:
            parts.append(_EXT_HEADER.pack(self.extension.profile, len(self.extension.data) // 4))
            parts.append(self.extension.data)
        parts.append(self.payload)
        if self.padding:
            # RFC 3550 §5.1: "The last octet of the padding contains a count of how many
            # padding octets should be ignored, including itself."
            parts.append(bytes(self.padding - 1) + bytes((self.padding,)))
        return b"".join(parts)


def is_rtcp(data: bytes) -> bool:
    """True for a datagram that looks like RTCP (version 2, packet type 192-223)."""
    return len(data) >= 2 and data[0] >> 6 == RTP_VERSION and _RTCP_FIRST <= data[1] <= _RTCP_LAST


def _bounds(data: bytes, max_size: int) -> tuple[int, int, int, int]:
    """Validate the header; return ``(b1, csrc_count, payload_start, payload_end)``."""
    size = len(data)
    if size > max_size:
        raise RtpError("oversized", f"{size} > {max_size} bytes")
    if size < 2:
        raise RtpError("short", f"{size} bytes")
    b0 = data[0]
    if b0 >> 6 != RTP_VERSION:
        raise RtpError("version", f"version {b0 >> 6}")
    b1 = data[1]
    if _RTCP_FIRST <= b1 <= _RTCP_LAST:
        # Before the length check: an RTCP BYE is only 8 bytes long.
        raise RtpError("rtcp", f"packet type {b1}")
    if size < HEADER_SIZE:
        raise RtpError("short", f"{size} bytes")
    cc = b0 & 0x0F
    start = HEADER_SIZE + 4 * cc
    if start > size:
        raise RtpError("short", f"{cc} CSRCs do not fit in {size} bytes")
    if b0 & 0x10:
        if start + 4 > size:
            raise RtpError("extension", "extension header truncated")
        words = (data[start + 2] << 8) | data[start + 3]
        start += 4 + 4 * words
        if start > size:
            raise RtpError("extension", f"extension of {words} words does not fit")
    end = size
    if b0 & 0x20:
        # RFC 3550 §5.1: the count includes the last octet itself, so 0 is invalid, and
        # it cannot eat into the header.
        pad = data[-1]
        if pad == 0 or start + pad > size:
            raise RtpError("padding", f"padding count {pad}")
        end = size - pad
    return b1, cc, start, end


def parse_fast(data: bytes, max_size: int = MAX_PACKET_SIZE
               ) -> tuple[bool, int, int, int, int, bytes]:
    """Validate and return ``(marker, payload_type, sequence, timestamp, ssrc, payload)``.

    Same checks and errors as :func:`parse`, without building an object; CSRCs and the
    header extension are validated and skipped.
    """
    if HEADER_SIZE <= len(data) <= max_size and data[0] == 0x80:
        # The header nearly every telephony packet has: version 2, no padding, no
        # extension, no CSRC. Only the RTCP check remains to be made.
        b0, b1, seq, ts, ssrc = _unpack_header(data)
        if not _RTCP_FIRST <= b1 <= _RTCP_LAST:
            return b1 > 127, b1 & 0x7F, seq, ts, ssrc, data[HEADER_SIZE:]
    b1, _cc, start, end = _bounds(data, max_size)
    _b0, _b1, seq, ts, ssrc = _unpack_header(data)
    return b1 > 127, b1 & 0x7F, seq, ts, ssrc, data[start:end]


def parse(data: bytes, max_size: int = MAX_PACKET_SIZE) -> RtpPacket:
    """Parse one datagram into an :class:`RtpPacket`; raises :class:`RtpError` only."""
    b1, cc, start, end = _bounds(data, max_size)
    b0, _b1, seq, ts, ssrc = _unpack_header(data)
    csrc = struct.unpack_from(f"!{cc}I", data, HEADER_SIZE) if cc else ()
    extension = None
    if b0 & 0x10:
        at = HEADER_SIZE + 4 * cc
        profile, words = _EXT_HEADER.unpack_from(data, at)
        extension = RtpExtension(profile, bytes(data[at + 4:at + 4 + 4 * words]))
    return RtpPacket(
        payload_type=b1 & 0x7F, sequence=seq, timestamp=ts, ssrc=ssrc,
        payload=bytes(data[start:end]), marker=b1 > 127, csrc=tuple(csrc),
        extension=extension, padding=len(data) - end, version=b0 >> 6,
    )


def pack_header(marker: bool, payload_type: int, sequence: int, timestamp: int,
                ssrc: int) -> bytes:
    """The 12-byte fixed header (no CSRC, no extension, no padding): the send hot path."""
    return _pack_header(0x80, (0x80 if marker else 0) | payload_type, sequence & 0xFFFF,
                        timestamp & 0xFFFFFFFF, ssrc)


__all__ = [
    "HEADER_SIZE", "MAX_PACKET_SIZE", "RTP_VERSION", "RtpError", "RtpExtension", "RtpPacket",
    "Ssrc", "is_rtcp", "pack_header", "parse", "parse_fast",
]
