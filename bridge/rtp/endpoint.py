"""The asyncio RTP endpoint of one SIP call: a UDP socket around an :class:`RtpSession`.

Theory of operation
-------------------
Thin adapter, no call logic. One datagram endpoint per call on an even port from a
:class:`PortAllocator` (RFC 3550 §11: RTP on an even port, RTCP on the next odd one,
which the allocator keeps reserved).

Inbound, everything happens inside the datagram callback (no task per packet, no queue):
``datagram_received`` -> ``RtpSession.receive`` (latching, parsing, jitter buffer, DTMF)
-> every payload now in order is G.711-decoded and cut into 20 ms PCM16 frames for
:attr:`RtpEndpoint.on_audio` (:class:`bridge.media.drain.FrameDrain`, shared with the
WebRTC leg), each after a call of :attr:`RtpEndpoint.poll` (the media clock's ``poll``,
set by whoever wires the endpoint to a call). Playout is clocked by packet arrival:
in-order audio is delivered the moment it arrives, and the jitter buffer only holds
packets while a sequence gap is open; then, and only then, a timer (``loop.call_at`` at
the session's deadline) is armed to conceal the gap if the missing packet never comes.
Why: a clocked playout buffer would delay every frame by its depth, and every millisecond
here is a millisecond later that the model hears the caller (see :mod:`bridge.rtp.jitter`).

Outbound, :meth:`RtpEndpoint.send_audio` is called by the shared media clock once per
20 ms with one PCM16 frame: encode, packetize at the negotiated ptime, ``sendto`` the
latched (or SDP) address. DTMF is sent as RFC 4733 events paced with ``asyncio.sleep``
on the schedule :func:`bridge.rtp.dtmf.tone_packets` computes; audio is held back while
an event is being sent.

G.722 (:mod:`bridge.codecs.g722`): the endpoint holds the call's own encoder and decoder
(stateful, so never shared, kept across a re-INVITE that keeps the codec, the decoder
started afresh when the far end's SSRC changes); frames
are then 20 ms at 16 kHz (640 bytes), and a payload the decoder drops is counted as
``codec``. Timestamps, ptime and DTMF stay on the 8000 Hz RTP clock.

SRTP (:meth:`RtpEndpoint.set_srtp`, keys from SDES): every datagram is unprotected
before anything else looks at it, so a packet that fails authentication neither plays
nor latches; it is dropped and counted (``srtp_auth``, ``srtp_replay``, ``srtp_short``,
``srtp_error``). Every packet sent, audio and DTMF, is protected just before ``sendto``.

G.711 passthrough (:meth:`RtpEndpoint.carry_encoded`): inbound frames are the payload
bytes as they arrived (20 ms = 160 bytes, no decode; a concealed gap is encoded silence)
and :meth:`RtpEndpoint.send_encoded` sends a payload as is. Should a re-INVITE switch the
call to the other law, the endpoint converts between the two laws rather than hand the
call payloads of a law it did not agree to.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import logging
import socket
import time
from collections.abc import Callable
from typing import Any, cast

from bridge import metrics
from bridge.codecs import g711
from bridge.codecs.g711 import CODECS
from bridge.codecs.g722 import G722Decoder, G722Encoder
from bridge.errors import MediaError
from bridge.media.drain import Convert, FrameDrain, Poll, no_poll
from bridge.rtp.dtmf import EventPacket, tone_packets
from bridge.rtp.packet import is_rtcp
from bridge.rtp.session import Address, RtpSession, RtpStats
from bridge.rtp.srtp import SrtpContext

logger = logging.getLogger(__name__)

FRAME_SAMPLES = 160          # 20 ms at 8 kHz
FRAME_BYTES = 2 * FRAME_SAMPLES
#: PCM16 bytes of a 20 ms frame at each codec's audio rate.
CODEC_FRAME_BYTES = {"pcmu": FRAME_BYTES, "pcma": FRAME_BYTES, "g722": 4 * FRAME_SAMPLES}


class PortsExhausted(MediaError):
    """Every RTP port of the configured range is in use."""


class PortAllocator:
    """Hands out even RTP ports from ``[low, high]``; the odd port above each is reserved
    for RTCP. Freed ports are reused, least recently freed first."""

    def __init__(self, low: int, high: int) -> None:
        first = low + (low & 1)
        if first + 1 > high or not 0 < low <= high <= 65535:
            raise ValueError(f"RTP port range {low}-{high} holds no even/odd pair")
        self.low, self.high = low, high
        self._free = list(range(first, high, 2))   # pairs (p, p+1) with p+1 <= high
        self._used: set[int] = set()

    @property
    def capacity(self) -> int:
        return len(self._free) + len(self._used)

    @property
    def in_use(self) -> int:
        return len(self._used)

    def allocate(self) -> int:
        if not self._free:
            raise PortsExhausted(
                f"all {self.capacity} RTP ports of {self.low}-{self.high} are in use")
        port = self._free.pop(0)
        self._used.add(port)
        return port

    def release(self, port: int) -> None:
        if port in self._used:
            self._used.discard(port)
            self._free.append(port)


class RtpEndpoint(asyncio.DatagramProtocol):
    """One call's RTP socket. Build with :meth:`open`, then :meth:`configure` from SDP."""

    def __init__(self, allocator: PortAllocator, port: int, *, latch_any: bool,
                 peer_host: str | None = None) -> None:
        self._allocator = allocator
        self.local_port = port
        self.latch_any = latch_any
        self.peer_host = peer_host
        self.on_audio: Callable[[bytes], None] = _ignore
        self.on_dtmf: Callable[[str], None] = _ignore
        #: Called before each inbound frame goes to ``on_audio``: the media clock's poll.
        self.poll: Poll = no_poll
        #: "" (PCM16 crosses the seam) or the G.711 law carried as is (``carry_encoded``).
        self.carry = ""
        self._loop = loop = asyncio.get_running_loop()
        # The loop's clock, read once per packet each way. asyncio's own loops define
        # time() as time.monotonic(): call that directly and save a Python frame per
        # packet; a loop with its own clock (uvloop, a test loop) keeps it.
        self._now: Callable[[], float] = (
            time.monotonic if type(loop).time is asyncio.BaseEventLoop.time else loop.time)
        self._transport: asyncio.DatagramTransport | None = None
        self._session: RtpSession | None = None
        self._decode: Callable[[bytes], bytes] = _ignore_codec
        self._encode: Callable[[bytes], bytes] = _ignore_codec
        self._codec = ""
        self._reset_decoder: Callable[[], None] = _nothing
        #: inbound payload -> frame bytes (None: as is), carried payload -> wire payload
        self._convert_in: Convert = _ignore_codec
        self._convert_out: Convert = None
        self._silence_key: tuple[Callable[[bytes], bytes], int] | None = None
        self._silence = b""
        self._frames = FrameDrain(loop, FRAME_BYTES, self._on_timer)
        self._dtmf_lock = asyncio.Lock()
        self._closed = False
        self._port_released = False
        self._sending = True
        self._unconfigured = 0
        #: The socket itself when we bound it (see :meth:`send_audio`).
        self._sock: socket.socket | None = None
        self._buffered: Callable[[], int] = _nothing_buffered
        self._srtp: SrtpContext | None = None
        self._srtp_keys: tuple[str, bytes, bytes] | None = None
        self._srtp_dropped: dict[str, int] = {}

    @classmethod
    async def open(cls, bind_host: str, allocator: PortAllocator, *,
                   latch_any: bool = False, peer_host: str | None = None) -> RtpEndpoint:
        """Bind a UDP socket on the next free even port (skipping ports taken by others).

        ``peer_host``: the address the call's signalling came from; media from it may
        latch as well as media from the SDP address (see :mod:`bridge.rtp.session`)."""
        loop = asyncio.get_running_loop()
        for _ in range(allocator.capacity):
            port = allocator.allocate()
            endpoint = cls(allocator, port, latch_any=latch_any, peer_host=peer_host)
            try:
                sock = _bound_socket(bind_host, port)
                if sock is None:                   # a host name: let asyncio resolve it
                    await loop.create_datagram_endpoint(endpoint._self,
                                                        local_addr=(bind_host, port))
                else:
                    endpoint._sock = sock
                    await loop.create_datagram_endpoint(endpoint._self, sock=sock)
            except OSError as exc:
                allocator.release(port)
                if exc.errno != errno.EADDRINUSE:
                    raise
                logger.debug("RTP port %d busy, trying the next", port)
                continue
            return endpoint
        raise PortsExhausted(f"no bindable RTP port in {allocator.low}-{allocator.high}")

    def _self(self) -> RtpEndpoint:
        return self                                # the protocol factory

    # -- asyncio.DatagramProtocol -------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # The selector loop's datagram transport does not subclass DatagramTransport
        # on every Python version; it always has ``sendto``.
        self._transport = cast(asyncio.DatagramTransport, transport)
        buffered = getattr(transport, "get_write_buffer_size", None)
        if buffered is None:
            self._sock = None         # cannot tell whether the transport queues: use it
        else:
            self._buffered = buffered
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # Expedited forwarding for voice (RFC 4594); harmless where unsupported.
            try:
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, 0xB8)
            except OSError:
                pass

    def connection_lost(self, exc: Exception | None) -> None:
        self._release()

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable and friends: the far end may come (back) later.
        logger.debug("RTP socket error on port %d: %s", self.local_port, exc)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        session = self._session
        if session is None:
            self._unconfigured += 1           # before the SDP exchange: nothing to match
            return
        srtp = self._srtp
        if srtp is not None and not is_rtcp(data):   # RTCP: dropped as such by the session
            unprotected = srtp.unprotect(data)
            if unprotected is None:
                reason = srtp.last_drop
                self._srtp_dropped[reason] = self._srtp_dropped.get(reason, 0) + 1
                _count_drop(reason)
                return
            data = unprotected
        now = self._now()
        digit = session.receive(data, addr, now)
        self._frames.drain(session.jitter, now, self._convert_in, self.on_audio, self.poll)
        if digit is not None:
            logger.debug("DTMF %s received on port %d", digit, self.local_port)
            self.on_dtmf(digit)

    # -- configuration ----------------------------------------------------------------

    def configure(self, remote: Address, codec: str, payload_type: int,
                  dtmf_payload_type: int | None, ptime_ms: int = 20) -> None:
        """Apply the negotiated media (again on a re-INVITE; a new address re-latches)."""
        codec = codec.lower()
        if codec == "g722":
            if self._codec != "g722":          # keep the stream's state on a re-INVITE
                decoder = G722Decoder(self._codec_dropped)
                self._encode, self._decode = G722Encoder().encode, decoder.decode
                self._reset_decoder = decoder.reset
        else:
            self._encode, self._decode = CODECS[codec]
        if codec != self._codec and not self.carry:
            self._frames.reframer.reset(CODEC_FRAME_BYTES[codec])
        self._codec = codec
        self._set_conversions()
        if self._session is None:
            self._session = RtpSession(
                payload_type=payload_type, codec=codec,
                dtmf_payload_type=dtmf_payload_type, remote=remote,
                latch_any=self.latch_any, peer_host=self.peer_host, ptime_ms=ptime_ms)
            self._session.set_sending(self._sending)
            self._session.on_drop = _count_drop
            self._session.on_new_ssrc = self._new_stream
        else:
            self._session.configure(remote=remote, payload_type=payload_type,
                                    codec=codec, dtmf_payload_type=dtmf_payload_type,
                                    ptime_ms=ptime_ms)

    def set_srtp(self, keys: tuple[str, bytes, bytes] | None) -> None:
        """SRTP from now on with (suite, our key and salt, the far end's), or plain RTP
        (None). The same keys again keep the context (and its packet counters)."""
        if keys == self._srtp_keys:
            return
        self._srtp_keys = keys
        self._srtp = None if keys is None else SrtpContext(*keys)

    @property
    def srtp(self) -> bool:
        return self._srtp is not None

    @property
    def session(self) -> RtpSession | None:
        return self._session

    @property
    def frame_bytes(self) -> int:
        """PCM16 bytes of one 20 ms frame at the negotiated codec's rate."""
        return CODEC_FRAME_BYTES.get(self._codec, FRAME_BYTES)

    def _new_stream(self) -> None:
        """The far end's SSRC changed: a new stream, from a new encoder (a transfer, a
        re-INVITE through a B2BUA); G.722's decoder starts afresh with it."""
        if self._codec == "g722":
            self._reset_decoder()

    def _codec_dropped(self, reason: str) -> None:
        if self._session is not None:
            self._session._drop(reason)        # counted with the packet drops

    def carry_encoded(self, law: str) -> None:
        """From now on carry the G.711 ``law`` payload as is, both ways (see module doc)."""
        self.carry = law
        self._frames.reframer.reset(FRAME_SAMPLES)
        self._set_conversions()

    def _set_conversions(self) -> None:
        carry, codec = self.carry, self._codec
        if not carry:
            self._convert_in, self._convert_out = self._decode, None
        elif not codec or carry == codec:
            self._convert_in = self._convert_out = None
        else:                       # a re-INVITE moved the call to the other law
            self._convert_in = functools.partial(g711.transcode, codec, carry)
            self._convert_out = functools.partial(g711.transcode, carry, codec)

    # -- inbound ----------------------------------------------------------------------

    def _drain(self, session: RtpSession, now: float) -> None:
        """Deliver every payload that is ready as 20 ms frames; arm the gap timer."""
        self._frames.drain(session.jitter, now, self._convert_in, self.on_audio, self.poll)

    def _on_timer(self) -> None:
        if self._session is not None and not self._closed:
            self._drain(self._session, self._now())

    # -- outbound ---------------------------------------------------------------------

    def send_audio(self, pcm: bytes) -> None:
        """Send one 20 ms PCM16 frame (encoded, packetized at the ptime). Never blocks."""
        self._send_payload(self._encode(pcm))

    def send_encoded(self, payload: bytes) -> None:
        """Send one frame of the carried law's payload as is (``carry_encoded``)."""
        convert = self._convert_out
        self._send_payload(payload if convert is None else convert(payload))

    def send_silence(self, samples: int = 160) -> None:
        """Send ``samples`` of silence (an idle call's every tick): the encoded silence is
        made once per codec and size, not encoded from zeros 50 times a second. G.722's
        encoder has state, so its silence goes through it (the far end's decoder then
        follows our encoder across the pause, and the next talkspurt does not click)."""
        encode = self._encode
        if self._codec == "g722":
            self._send_payload(encode(bytes(2 * samples)))
            return
        key = (encode, samples)
        if self._silence_key != key:
            self._silence_key = key
            self._silence = encode(bytes(2 * samples))
        self._send_payload(self._silence)

    def _send_payload(self, payload: bytes) -> None:
        session, transport = self._session, self._transport
        if session is None or transport is None or self._closed:
            return
        dest = session.destination
        if dest is None:
            return
        packets = session.send_audio(payload, self._now())
        if self._srtp is not None:
            packets = [self._srtp.protect(packet) for packet in packets]
        sock = self._sock
        if sock is None or self._buffered():
            for packet in packets:
                transport.sendto(packet, dest)
            return
        # Nothing queued in the transport: send on the socket directly, as
        # transport.sendto would after its argument checks (~0.4 us per packet saved).
        # Its error handling is kept: a full socket buffer queues the packet in the
        # transport (later packets then follow it there, in order), any other OSError
        # goes to error_received.
        for packet in packets:
            try:
                sock.sendto(packet, dest)
            except (BlockingIOError, InterruptedError):
                transport.sendto(packet, dest)
            except OSError as exc:
                self.error_received(exc)

    async def send_dtmf(self, digits: str, *, tone_ms: int = 100, gap_ms: int = 100) -> None:
        """Send ``digits`` as RFC 4733 events, one after another; audio pauses meanwhile.

        Raises ``ValueError`` for a character outside ``0-9*#A-D`` and
        :class:`MediaError` when telephone-event was not negotiated (use SIP INFO).
        """
        session = self._session
        if session is None or session.dtmf_payload_type is None:
            raise MediaError("telephone-event was not negotiated for this call")
        schedules = [tone_packets(d, tone_ms=tone_ms) for d in digits]   # validates first
        async with self._dtmf_lock:
            for schedule in schedules:
                if self._closed:
                    return
                await self._send_event(session, schedule, tone_ms)
                await asyncio.sleep(gap_ms / 1000)

    async def _send_event(self, session: RtpSession, schedule: tuple[EventPacket, ...],
                          tone_ms: int) -> None:
        loop = self._loop
        start = loop.time()
        session.begin_event(start)
        try:
            for packet in schedule:
                delay = start + packet.offset - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                transport, dest = self._transport, session.destination
                if transport is None or dest is None or self._closed:
                    return
                if not session.sending:
                    continue                  # on hold: the far end asked for no media
                event = session.event_packet(packet.payload, packet.marker, loop.time())
                transport.sendto(event if self._srtp is None else self._srtp.protect(event),
                                 dest)
        finally:
            session.end_event(start + tone_ms / 1000, tone_ms * session.clock_rate // 1000)

    def set_sending(self, allowed: bool) -> None:
        """Hold (False: nothing is sent, nothing queued) and resume (True)."""
        self._sending = allowed
        if self._session is not None:
            self._session.set_sending(allowed)

    @property
    def sending_allowed(self) -> bool:
        return self._sending

    # -- state --------------------------------------------------------------------------

    @property
    def stats(self) -> RtpStats:
        if self._session is None:
            return RtpStats(dropped={"unconfigured": self._unconfigured}
                            if self._unconfigured else {})
        stats = self._session.stats
        if self._unconfigured:
            stats.dropped["unconfigured"] = self._unconfigured
        stats.dropped.update(self._srtp_dropped)
        return stats

    def close(self) -> None:
        """Close the socket and give the port back (after the loop's next iteration).
        Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._frames.close()
        if self._transport is not None:
            # The port goes back to the allocator in connection_lost, once the socket
            # is really closed (the loop closes it on its next iteration).
            self._transport.close()
        else:
            self._release()

    def _release(self) -> None:
        self._closed = True
        if not self._port_released:
            self._port_released = True
            self._allocator.release(self.local_port)
            if self._session is not None:
                # Late and duplicate packets are jitter-buffer outcomes, not parse
                # errors; they join the drop metric once, when the call ends.
                jb = self._session.jitter
                for reason, count in (("late", jb.late), ("duplicate", jb.duplicates)):
                    if count:
                        _drop_counter(reason).inc(count)


def _bound_socket(host: str, port: int) -> socket.socket | None:
    """A non-blocking UDP socket bound to numeric ``host``:``port``; None for a name.

    Binding it here (rather than through ``local_addr``) keeps the real socket object,
    which :meth:`RtpEndpoint.send_audio` writes to directly. Raises ``OSError`` like
    ``create_datagram_endpoint`` would (EADDRINUSE for a busy port)."""
    try:
        info = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM,
                                  flags=socket.AI_NUMERICHOST | socket.AI_PASSIVE)
    except socket.gaierror:
        return None
    family, kind, proto, _name, addr = info[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setblocking(False)
        sock.bind(addr)
    except OSError:
        sock.close()
        raise
    return sock


_DROP_COUNTERS: dict[str, Any] = {}


def _drop_counter(reason: str) -> Any:
    """The metric child for ``reason``, bound once (``.labels`` hashes on every call)."""
    child = _DROP_COUNTERS.get(reason)
    if child is None:
        child = _DROP_COUNTERS[reason] = metrics.RTP_DROPPED.labels(reason=reason)
    return child


def _count_drop(reason: str) -> None:
    _drop_counter(reason).inc()


def _nothing() -> None:
    return None


def _nothing_buffered() -> int:
    return 0


def _ignore(_arg: Any) -> None:
    return None


def _ignore_codec(data: bytes) -> bytes:
    return b""


__all__ = ["CODEC_FRAME_BYTES", "FRAME_BYTES", "PortAllocator", "PortsExhausted", "RtpEndpoint"]
