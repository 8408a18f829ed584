"""Every private name of aiortc and aioice that the bridge relies on, in one place.

Theory of operation
-------------------
The WebRTC leg takes G.711 packets off aiortc's receiver and writes its own SRTP packets
from the media clock's tick (see :mod:`bridge.webrtc.receive` and :mod:`bridge.webrtc.send`
for why: aiortc's decoder thread and sender loop cost more than the whole SIP leg). Doing
that needs names aiortc does not publish:

* ``RTCRtpReceiver``: ``_handle_rtp_packet`` (replaced on one receiver *instance*: the
  DTLS transport awaits it for every decrypted RTP packet), ``_enabled``, and two tables
  ``__codecs`` (negotiated codecs by payload type) and ``__remote_streams`` (per-SSRC
  statistics its RTCP receiver reports are made from);
* ``RTCRtpSender``: ``_ssrc`` and the sender-report counters ``__ntp_timestamp``,
  ``__rtp_timestamp``, ``__octet_count``, ``__packet_count``;
* ``RTCDtlsTransport``: ``_state``, ``_tx_srtp`` (the SRTP session that protects what we
  send) and ``_rtp_header_extensions_map``;
* ``RTCIceTransport._connection`` (the aioice ``Connection``) and its ``_nominated`` pairs.

Nothing else in the project touches an underscore name of those libraries: the accessors
below are the only way in. :func:`check` looks every name up on the classes (methods on
the class, instance attributes in the names its ``__init__`` assigns) and raises
:class:`IncompatibleLibrary` naming each one that is missing; it runs when this module is
imported, so an aiortc release that renamed one fails at start-up, not in the middle of a
call. ``pyproject.toml`` bounds aiortc's version to the releases checked here.
"""

from __future__ import annotations

import types
from collections.abc import Callable, Coroutine
from typing import NamedTuple

import aioice.ice
from aiortc.rtcdtlstransport import RTCDtlsTransport
from aiortc.rtcdtlstransport import State as DtlsState
from aiortc.rtcicetransport import RTCIceTransport
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtcrtpreceiver import RTCRtpReceiver, StreamStatistics
from aiortc.rtcrtpsender import RTCRtpSender
from aiortc.rtp import RtpPacket

from bridge.internals import IncompatibleLibrary
from bridge.internals import missing_names as _missing

#: What a receiver's packet hook is: the transport awaits it per decrypted RTP packet.
PacketHandler = Callable[[RtpPacket, int], Coroutine[object, object, None]]

_CODECS = "_RTCRtpReceiver__codecs"
_STREAMS = "_RTCRtpReceiver__remote_streams"
_NTP = "_RTCRtpSender__ntp_timestamp"
_RTP_TS = "_RTCRtpSender__rtp_timestamp"
_OCTETS = "_RTCRtpSender__octet_count"
_PACKETS = "_RTCRtpSender__packet_count"

#: class name (an attribute of the library object :func:`check` is given) -> private names
REQUIRED: dict[str, tuple[str, ...]] = {
    "RTCRtpReceiver": ("_handle_rtp_packet", "_enabled", _CODECS, _STREAMS),
    "RTCRtpSender": ("_ssrc", _NTP, _RTP_TS, _OCTETS, _PACKETS),
    "RTCDtlsTransport": ("_state", "_tx_srtp", "_rtp_header_extensions_map"),
    "RTCIceTransport": ("_connection",),
    "Connection": ("_nominated",),
}

#: The real libraries, as :func:`check` sees them.
LIBRARY = types.SimpleNamespace(
    RTCRtpReceiver=RTCRtpReceiver, RTCRtpSender=RTCRtpSender,
    RTCDtlsTransport=RTCDtlsTransport, RTCIceTransport=RTCIceTransport,
    Connection=aioice.ice.Connection,
)


def missing_names(library: object) -> list[str]:
    """``Class.name`` for every required private name ``library`` lacks."""
    return _missing(library, REQUIRED)


def check(library: object) -> None:
    """Raise :class:`IncompatibleLibrary` naming every private name ``library`` lacks."""
    missing = missing_names(library)
    if missing:
        raise IncompatibleLibrary(
            "the installed aiortc/aioice lack private names the WebRTC leg relies on: "
            + ", ".join(missing))


# ---- receiver ---------------------------------------------------------------------------

class ReceiverTables(NamedTuple):
    codecs: dict[int, RTCRtpCodecParameters]     # negotiated codecs by payload type
    streams: dict[int, StreamStatistics]         # per remote SSRC, for RTCP reports


def receiver_tables(receiver: RTCRtpReceiver) -> ReceiverTables:
    tables: ReceiverTables = ReceiverTables(getattr(receiver, _CODECS),
                                            getattr(receiver, _STREAMS))
    return tables


def receiver_enabled(receiver: RTCRtpReceiver) -> bool:
    return bool(receiver._enabled)


def hook_receiver(receiver: RTCRtpReceiver, handler: PacketHandler) -> PacketHandler:
    """Route ``receiver``'s decrypted RTP packets to ``handler``; returns aiortc's own
    handler (for packets the hook leaves to aiortc). Only this instance is affected."""
    original: PacketHandler = receiver._handle_rtp_packet
    # An instance attribute shadows the method: the transport calls this one.
    setattr(receiver, "_handle_rtp_packet", handler)  # noqa: B010
    return original


# ---- sender -----------------------------------------------------------------------------

def sender_ssrc(sender: RTCRtpSender) -> int:
    return int(sender._ssrc)


def count_sent(sender: RTCRtpSender, ntp_time: int, rtp_timestamp: int, octets: int) -> None:
    """Account one packet we sent for ``sender`` in what its RTCP sender reports say."""
    setattr(sender, _NTP, ntp_time)
    setattr(sender, _RTP_TS, rtp_timestamp)
    setattr(sender, _OCTETS, getattr(sender, _OCTETS) + octets)
    setattr(sender, _PACKETS, getattr(sender, _PACKETS) + 1)


# ---- DTLS-SRTP and ICE ------------------------------------------------------------------

def dtls_connected(dtls: RTCDtlsTransport) -> bool:
    return dtls._state is DtlsState.CONNECTED


def protect_rtp(dtls: RTCDtlsTransport, packet: RtpPacket) -> bytes:
    """``packet`` serialized with the negotiated header extensions and SRTP-protected."""
    data: bytes = dtls._tx_srtp.protect(packet.serialize(dtls._rtp_header_extensions_map))
    return data


def nominated_pair(dtls: RTCDtlsTransport) -> aioice.ice.CandidatePair | None:
    """The ICE pair (component 1) media goes over, once ICE has nominated one."""
    connection: aioice.ice.Connection | None = getattr(dtls.transport, "_connection", None)
    nominated = getattr(connection, "_nominated", None)
    if not isinstance(nominated, dict):
        return None
    pair: aioice.ice.CandidatePair | None = nominated.get(1)
    return pair


check(LIBRARY)

__all__ = [
    "LIBRARY", "REQUIRED", "PacketHandler", "ReceiverTables", "check", "count_sent",
    "dtls_connected", "hook_receiver", "missing_names", "nominated_pair", "protect_rtp",
    "receiver_enabled", "receiver_tables", "sender_ssrc",
]
