"""G.711 RTP to the browser, sent from the media clock's tick by the leg itself.

Theory of operation
-------------------
Even with encoded packets, aiortc's sender costs a task wake-up, an ``av.Packet``,
``Fraction`` time-base arithmetic and three awaited coroutines per frame.
:class:`G711Send` writes the RTP packet from ``write_frame`` itself: encode (unless the
leg carries the payload as is), RTP header (with the negotiated ``mid`` extension), SRTP
protect with the DTLS transport's session, ``sendto`` on the nominated ICE pair's socket,
all in the media clock's tick. It takes over at the first frame after DTLS is up,
provided the ICE pair is a plain UDP socket (a TURN relay needs aiortc's own send path):
until that decision the leg's track is *parked* (see :mod:`bridge.webrtc.track`), and on a
relayed pair it is unparked and the track path carries the audio. The sender's RTCP
sender-report counters are kept up to date.

Timestamps and marker bits follow :class:`bridge.rtp.timestamps.RtpTimeline`, the rule the
SIP leg sends with: one frame per packet within a talkspurt; after a pause in the feed
longer than 2.5 frames (no call attached) they jump by the elapsed time and the packet
carries the marker bit (RFC 3550 §5.1: the first packet of a talkspurt).

The aiortc internals it needs are reached through :mod:`bridge.internals.aiortc`.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable

from aioice.ice import CandidatePair, StunProtocol
from aiortc.rtcrtptransceiver import RTCRtpTransceiver
from aiortc.rtp import RtpPacket

from bridge.codecs import g711
from bridge.internals import aiortc as internals
from bridge.rtp.timestamps import RtpTimeline
from bridge.webrtc.track import OutboundTrack

log = logging.getLogger(__name__)


class G711Send:
    """G.711 RTP sent from ``write_frame`` itself (see module doc).

    :meth:`send` returns False while it cannot send (not connected yet, or the pair is
    relayed): the caller then uses the track path.
    """

    def __init__(self, call_id: str, law: str, transceiver: RTCRtpTransceiver,
                 payload_type: int, track: OutboundTrack, *, now: Callable[[], float],
                 frame_ms: int = 20) -> None:
        self._call_id = call_id
        self._transceiver = transceiver
        self._sender = transceiver.sender
        self._payload_type = payload_type
        self._track = track
        self._now = now
        self._encode: Callable[[bytes], bytes] | None = (
            g711.ulaw_encode if law == "pcmu" else g711.alaw_encode)
        self._sequence = secrets.randbelow(1 << 16)
        self.timeline = RtpTimeline(secrets.randbelow(1 << 32), 8000, 2.5 * frame_ms / 1000)
        #: None until decided at the first connected frame; then True (ours) or False.
        self.direct: bool | None = None
        self.sent = 0
        self.dropped = 0

    def carry(self) -> None:
        """From now on frames are the law's payload already: sent as is."""
        self._encode = None

    def _pair(self) -> CandidatePair | None:
        dtls = self._sender.transport
        if not internals.dtls_connected(dtls):
            return None
        return internals.nominated_pair(dtls)

    def send(self, frame: bytes) -> bool:
        """Send one frame; False: not ours to send (the track path takes it)."""
        if self.direct is False:
            return False
        pair = self._pair()
        if pair is None:
            if self.direct:
                self.dropped += 1          # the connection went away under a live call
                return True
            return False                   # not connected yet: the parked track keeps it
        if self.direct is None and not self._decide(pair):
            return False
        encode = self._encode
        self._send(pair, frame if encode is None else encode(frame))
        return True

    def _decide(self, pair: CandidatePair) -> bool:
        """Whether this leg sends by itself over ``pair`` (a plain UDP socket)."""
        protocol = pair.protocol
        self.direct = type(protocol) is StunProtocol and \
            getattr(protocol, "transport", None) is not None
        log.debug("webrtc %s: G.711 sent by %s", self._call_id,
                  "the leg" if self.direct else "aiortc (relayed pair)")
        if not self.direct:
            self._track.unpark()
        return self.direct

    def _send(self, pair: CandidatePair, payload: bytes) -> None:
        timestamp, marker = self.timeline.stamp(self._now(), len(payload))
        sender = self._sender
        packet = RtpPacket(payload_type=self._payload_type, marker=int(marker),
                           sequence_number=self._sequence, timestamp=timestamp,
                           ssrc=internals.sender_ssrc(sender), payload=payload)
        packet.extensions.mid = self._transceiver.mid
        data = internals.protect_rtp(sender.transport, packet)
        pair.protocol.transport.sendto(data, pair.remote_addr)
        self._sequence = (self._sequence + 1) & 0xFFFF
        self.sent += 1
        # what the sender's RTCP sender reports say
        internals.count_sent(sender, _ntp_now(), timestamp, len(payload))


def _ntp_now() -> int:
    """NTP timestamp (64-bit fixed point) of the wall clock, for RTCP sender reports."""
    return int((time.time() + 2208988800) * (1 << 32))


__all__ = ["G711Send"]
