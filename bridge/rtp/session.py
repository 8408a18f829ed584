"""One RTP audio session (sans-I/O): latching, receive path, packetizing, counters.

Theory of operation
-------------------
``RtpSession`` owns everything about one call's RTP stream except the socket and the
clock: the adapter hands it each datagram with its source address and ``now``, and
asks it for packets to send.

Receive (:meth:`receive`), in this order, each step a counted drop reason:

1. *Source* (RTP bleed protection). Symmetric RTP: before latching we accept packets
   only from the host the SDP named or the host the call's signalling came from
   (``peer_host``), or from any host when ``latch_any``. The signalling host covers the
   two common cases of an SDP address we cannot trust, without opening the latch to
   the whole network: a caller behind NAT whose SDP carries its private address (its
   media comes from the same public address as its SIP), and a softphone whose SDP
   names another interface than the one it sends from (baresip names the host's first
   interface while calling over loopback). ``latch_any`` remains for media that comes
   from neither (a caller behind NAT reaching us through a proxy that does not anchor
   media). The first packet that is valid RTP of a negotiated payload type latches the
   session onto its exact ``(host, port)``; from then on anything from another address
   is dropped as ``source`` before it is even parsed, and our audio goes to the
   latched address. Only the host (not the port) is matched before latching because
   NATs and SBCs rewrite ports.
2. *Parse*: ``short``, ``version``, ``padding``, ``extension``, ``oversized``
   (see :mod:`bridge.rtp.packet`). RTCP on the RTP port is counted as ``rtcp``, not
   as a drop.
3. *Payload type*: the negotiated audio type goes to the jitter buffer, the
   telephone-event type to the DTMF receiver (its sequence slot is consumed in the
   jitter buffer so it is not mistaken for loss), comfort noise (PT 13) consumes its
   slot silently; anything else is ``payload_type``.
4. A new SSRC from the latched source resets the jitter buffer and the DTMF receiver.

Send: our SSRC, first sequence number and first timestamp are random (RFC 3550 §5.1
"The initial value of the sequence number SHOULD be random", likewise the timestamp;
§8.1 for the SSRC). The marker bit is set on the first packet of each talkspurt
(RFC 3551 §4.1): the first packet, after a hold, after a DTMF event, and after a pause
in sending longer than ``gap_ms``; across such a pause the timestamp advances by the
real time elapsed, so the far end's playout stays aligned. That rule is
:class:`bridge.rtp.timestamps.RtpTimeline`, which the WebRTC leg's G.711 sender shares.
Frames arrive as 20 ms of G.711 or G.722 and are regrouped to the negotiated ptime (both
codecs put one timestamp unit in each payload octet at their 8000 Hz RTP clock, so the
byte count is the timestamp step).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from bridge.codecs import g711, g722
from bridge.errors import RtpError
from bridge.logthrottle import Throttle
from bridge.rtp.dtmf import DtmfReceiver
from bridge.rtp.jitter import JitterBuffer
from bridge.rtp.packet import MAX_PACKET_SIZE, pack_header, parse_fast
from bridge.rtp.timestamps import RtpTimeline

logger = logging.getLogger(__name__)
#: A peer changing SSRC on every packet must not write a line per packet.
_throttled = Throttle(logger)

Address = tuple[str, int]

#: RFC 3389 comfort noise (static payload type 13 in RFC 3551).
PT_COMFORT_NOISE = 13
#: What a concealment frame is made of, per codec: G.711's silence octets, and for G.722
#: the filler its decoder turns into silence.
SILENCE_BYTE = {**g711.SILENCE_BYTE, "g722": g722.FILLER_BYTE}
_UNSPECIFIED = frozenset({"0.0.0.0", "::"})


@dataclass(frozen=True)
class RtpStats:
    """A snapshot of one session's counters."""

    received: int = 0              # valid packets accepted from the latched source
    sent: int = 0                  # packets sent (audio and DTMF)
    dropped: dict[str, int] = field(default_factory=dict)  # by reason (the metrics label)
    rtcp: int = 0                  # RTCP seen on the RTP port (not counted as dropped)
    lost: int = 0                  # packets concealed with silence
    late: int = 0                  # arrived after their slot was concealed
    duplicates: int = 0
    reordered: int = 0             # arrived out of order but in time
    resyncs: int = 0               # stream restarts (SSRC change, sequence jump)
    dtmf_received: int = 0
    dtmf_sent: int = 0
    latched: Address | None = None
    remote_ssrc: int | None = None
    ssrc: int = 0


class RtpSession:
    """Sans-I/O RTP for one call; see the module docstring."""

    def __init__(self, *, payload_type: int, codec: str = "pcmu",
                 dtmf_payload_type: int | None = None, remote: Address | None = None,
                 latch_any: bool = False, peer_host: str | None = None,
                 clock_rate: int = 8000, ptime_ms: int = 20,
                 gap_ms: float = 100.0, max_packet_size: int = MAX_PACKET_SIZE,
                 rng: random.Random | None = None,
                 jitter: JitterBuffer | None = None) -> None:
        rng = rng or random.SystemRandom()
        self.ssrc = rng.getrandbits(32)
        self._seq = rng.getrandbits(16)
        self.timeline = RtpTimeline(rng.getrandbits(32), clock_rate, gap_ms / 1000.0)
        self.clock_rate = clock_rate
        self.latch_any = latch_any
        #: Where the call's signalling came from: also trusted before latching.
        self.peer_host = peer_host
        self.max_packet_size = max_packet_size
        self.jitter = jitter or JitterBuffer(clock_rate=clock_rate,
                                             frame_samples=clock_rate * 20 // 1000,
                                             silence_byte=SILENCE_BYTE.get(codec, 0xFF))
        self.dtmf = DtmfReceiver()
        self._latched: Address | None = None
        self._remote_ssrc: int | None = None
        self._remote: Address | None = None
        self._sending_to_unspecified = False
        self._sending = True
        self._in_event = False
        self._pending = b""
        self._event_ts = 0
        self.received = 0
        self.sent = 0
        self.rtcp = 0
        self.dtmf_sent = 0
        self.dropped: dict[str, int] = {}
        #: Called with the reason of every dropped packet (the adapter feeds metrics).
        self.on_drop: Callable[[str], None] | None = None
        #: Called when the latched source starts a new SSRC (a codec with state resets).
        self.on_new_ssrc: Callable[[], None] | None = None
        self.configure(remote=remote, payload_type=payload_type, codec=codec,
                       dtmf_payload_type=dtmf_payload_type, ptime_ms=ptime_ms)

    # -- configuration ---------------------------------------------------------------

    def configure(self, *, remote: Address | None, payload_type: int, codec: str = "pcmu",
                  dtmf_payload_type: int | None = None, ptime_ms: int = 20) -> None:
        """(Re)apply the negotiated media. A new remote address drops the latch."""
        if not 10 <= ptime_ms <= 200 or ptime_ms % 10:
            raise ValueError(f"unsupported ptime {ptime_ms} ms")
        if remote is not None and remote[0] in _UNSPECIFIED:
            # RFC 3264 §8.4 (and RFC 2543 before it): c=0.0.0.0 means "do not send";
            # sendto() to 0.0.0.0 would reach this very host. Keep the latch.
            remote = None
            self._sending_to_unspecified = True
        else:
            self._sending_to_unspecified = False
            if remote != self._remote:
                self._latched = None
            self._remote = remote
        self.codec = codec
        self.payload_type = payload_type
        self.dtmf_payload_type = dtmf_payload_type
        self.ptime_ms = ptime_ms
        self._packet_samples = self.clock_rate * ptime_ms // 1000
        self.jitter.silence_byte = SILENCE_BYTE.get(codec, 0xFF)

    @property
    def latched(self) -> Address | None:
        return self._latched

    @property
    def destination(self) -> Address | None:
        """Where our packets go: the latched source (symmetric RTP), else the SDP address;
        None while the far end's SDP says not to send (c=0.0.0.0)."""
        if self._sending_to_unspecified:
            return None
        return self._latched or self._remote

    # -- receive ---------------------------------------------------------------------

    def _drop(self, reason: str) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1
        if self.on_drop is not None:
            self.on_drop(reason)

    def receive(self, data: bytes, addr: Address, now: float) -> str | None:
        """Take one datagram. Returns a DTMF digit when this packet starts a key press.

        Audio is then available from :meth:`pop_audio`. Never raises for bad input.
        """
        latched = self._latched
        if latched is not None and addr != latched:
            self._drop("source")
            return None
        try:
            marker, pt, seq, ts, ssrc, payload = parse_fast(data, self.max_packet_size)
        except RtpError as exc:
            if exc.reason == "rtcp":
                self.rtcp += 1
            else:
                self._drop(exc.reason)
            return None
        if pt == self.payload_type:
            kind = 0
        elif pt == self.dtmf_payload_type:
            kind = 1
        elif pt == PT_COMFORT_NOISE:
            kind = 2
        else:
            self._drop("payload_type")
            return None
        if latched is None and not self._latch(addr):
            return None
        if ssrc != self._remote_ssrc:
            self._new_ssrc(ssrc, now)
        self.received += 1
        if kind == 0:
            self.jitter.push(seq, ts, payload, now)
            return None
        self.jitter.push(seq, ts, b"", now)    # the slot is not audio, and not lost
        if kind == 2:
            return None
        try:
            return self.dtmf.receive(marker, ts, payload)
        except RtpError as exc:
            self._drop(exc.reason)
            return None

    def _latch(self, addr: Address) -> bool:
        remote = self._remote
        if (not self.latch_any and remote is not None and addr[0] != remote[0]
                and addr[0] != self.peer_host):
            self._drop("source")
            return False
        self._latched = addr
        logger.info("RTP latched to %s:%s", addr[0], addr[1])
        return True

    def _new_ssrc(self, ssrc: int, now: float) -> None:
        if self._remote_ssrc is not None:
            _throttled.log(logging.INFO, "ssrc", "RTP SSRC changed %08x -> %08x; resynchronising",
                           self._remote_ssrc, ssrc, now=now)
            self.jitter.resyncs += 1
            self.jitter.reset()
            self.dtmf.reset()
            if self.on_new_ssrc is not None:
                self.on_new_ssrc()
        self._remote_ssrc = ssrc

    def pop_audio(self, now: float) -> bytes | None:
        """The next payload in order (or a silence frame for a lost one), else None."""
        return self.jitter.pop(now)

    def get_timer(self) -> float | None:
        """Deadline at which :meth:`pop_audio` must be called (only while a gap is open)."""
        return self.jitter.get_timer()

    # -- send ------------------------------------------------------------------------

    def set_sending(self, allowed: bool) -> None:
        """Hold (False) and resume (True); resuming starts a new talkspurt."""
        if allowed and not self._sending:
            self.timeline.talkspurt = True
        self._sending = allowed
        self._pending = b""

    @property
    def sending(self) -> bool:
        return self._sending

    def send_audio(self, payload: bytes, now: float) -> list[bytes]:
        """Packetize a G.711 or G.722 ``payload`` (any length) at the ptime."""
        if not self._sending or self._in_event:
            return []
        size = self._packet_samples
        if not self._pending and len(payload) == size:
            return [self._audio_packet(payload, now)]
        data = self._pending + payload
        out = []
        at = 0
        while len(data) - at >= size:
            out.append(self._audio_packet(data[at:at + size], now))
            at += size
        self._pending = data[at:]
        return out

    def _audio_packet(self, payload: bytes, now: float) -> bytes:
        ts, marker = self.timeline.stamp(now, len(payload))
        seq = self._seq = (self._seq + 1) & 0xFFFF
        self.sent += 1
        return pack_header(marker, self.payload_type, seq, ts, self.ssrc) + payload

    def begin_event(self, now: float) -> int:
        """Start sending a telephone-event: audio is held back; returns its timestamp."""
        if self.dtmf_payload_type is None:
            raise ValueError("telephone-event was not negotiated")
        ts, _ = self.timeline.peek(now)
        self._in_event = True
        self._pending = b""
        self._event_ts = ts
        return ts

    def event_packet(self, payload: bytes, marker: bool, now: float) -> bytes:
        """One telephone-event packet of the current event."""
        if self.dtmf_payload_type is None:
            raise ValueError("telephone-event was not negotiated")
        seq = self._seq = (self._seq + 1) & 0xFFFF
        self.sent += 1
        return pack_header(marker, self.dtmf_payload_type, seq, self._event_ts,
                           self.ssrc) + payload

    def end_event(self, now: float, duration_samples: int) -> None:
        """The event is over: audio resumes with a new talkspurt after it."""
        if not self._in_event:
            return
        self._in_event = False
        self.dtmf_sent += 1
        self.timeline.resume_after((self._event_ts + duration_samples) & 0xFFFFFFFF, now)

    # -- counters --------------------------------------------------------------------

    @property
    def stats(self) -> RtpStats:
        jb = self.jitter
        return RtpStats(
            received=self.received, sent=self.sent, dropped=dict(self.dropped),
            rtcp=self.rtcp, lost=jb.lost, late=jb.late, duplicates=jb.duplicates,
            reordered=jb.reordered, resyncs=jb.resyncs, dtmf_received=self.dtmf.events,
            dtmf_sent=self.dtmf_sent, latched=self._latched, remote_ssrc=self._remote_ssrc,
            ssrc=self.ssrc,
        )


__all__ = ["PT_COMFORT_NOISE", "SILENCE_BYTE", "Address", "RtpSession", "RtpStats"]
