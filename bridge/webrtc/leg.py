"""``WebRtcLeg``: a browser call terminated by an aiortc ``RTCPeerConnection``.

Theory of operation
-------------------
Signalling is one HTTP exchange (``POST /webrtc/offer``): the browser gathers its ICE
candidates, posts a complete offer, and gets back a complete answer (no trickle ICE).
:meth:`WebRtcLeg.answer` builds the answer.

Codecs. aiortc fixes the codec list of its answer when the remote offer is applied, so the
audio transceiver is added with our preferences (PCMU, PCMA, then Opus, from
``[webrtc] codecs``) *before* ``setRemoteDescription``; a later ``setCodecPreferences``
leaves Opus first. The answer's ``m=audio`` line is then read back, and the first payload
type in it decides the leg's ``sample_rate`` (8000 for G.711, 48000 for Opus) and ``g711``.

Inbound audio, G.711. aiortc's receiver would hold every packet in its jitter buffer
(a fixed 4-packet prefetch: 80 ms before the first frame), hand it to a decoder *thread*
through a ``queue.Queue``, and hand the decoded ``av.AudioFrame`` back to the event loop
with ``run_coroutine_threadsafe`` for a reader task to pick up. Measured on a 2-core box at
20 calls, that thread round trip and the GIL hand-offs it causes were the largest single
cost of a leg. :class:`_G711Receive` takes the packets off the receiver instead: it
replaces the receiver's ``_handle_rtp_packet`` on that one instance, so the packet that
the DTLS transport has just decrypted and parsed is decoded with ``audioop`` and pushed to
the sink in the same call, like the SIP leg does. Ordering and loss are handled by the
RTP module's pass-through jitter buffer (no delay unless a gap is seen; a timer only while
one is open). The receiver's RTCP statistics are still fed, so its receiver reports stay
right. Packets of another payload type (Opus) take aiortc's own path.

Inbound audio, Opus. aiortc decodes in its own thread and hands frames to a
``RemoteStreamTrack``; one reader task per leg awaits ``recv()``, downmixes to mono,
resamples only if the decoded rate differs from the leg rate (never for a negotiated
codec), reframes into exact 20 ms frames and pushes them to the sink. Frames that arrive
before a sink is attached are dropped.

Outbound audio, and the two clocks. aiortc's ``RTCRtpSender`` *pulls* frames by awaiting
``track.recv()`` in its own loop and sends each as soon as it gets it; it does no pacing of
its own. The bridge's media clock *pushes* one frame per 20 ms tick into ``write_frame``.
:class:`OutboundTrack` reconciles the two with a small queue: ``write_frame`` appends
(dropping the oldest beyond ``MAX_QUEUED`` frames, which only happens if the sender stalls),
and ``recv()`` returns the next queued frame as soon as there is one, so while the clock
feeds, the clock alone sets the pace and no second timer runs. When the clock does not feed
(before the call is attached, between calls, or a leg on ``Underrun.NOTHING``) ``recv()``
paces itself: it waits until one frame period after the last frame it returned plus a
grace period, then returns silence, so the RTP stream keeps its timing and the browser's
jitter buffer does not drain. RTP timestamps follow ``pts``, which advances by exactly one
frame per returned frame, queued or silent.

Outbound audio, G.711. Even with encoded packets, aiortc's sender costs a task wake-up,
an ``av.Packet``, ``Fraction`` time-base arithmetic and three awaited coroutines per frame.
:class:`_G711Send` writes the RTP packet from ``write_frame`` itself: encode, RTP header
(with the negotiated ``mid`` extension), SRTP protect with the DTLS transport's session,
``sendto`` on the nominated ICE pair's socket, all in the media clock's tick. It takes
over at the first frame after DTLS is up, provided the ICE pair is a plain UDP socket (a
TURN relay needs aiortc's own send path): until that decision the track is *parked*
(``recv()`` waits instead of pacing silence, so the two paths never interleave on one
SSRC), and on a relayed pair it is unparked and the track path above carries the audio.
The sender's RTCP sender-report counters are kept up to date. RTP timestamps advance by
one frame per packet; after a pause in the feed (no call attached) they jump by the
elapsed time and the packet carries the marker bit (RFC 3550 §5.1: the first packet of a
talkspurt), as the SIP leg does.

DTMF and hang-up travel over data channels the page opens: ``dtmf`` (one message per key,
the digit), ``bye`` (any message: the page hung up), and ``events`` (JSON call events the
bridge pushes for the page's transcript). A peer connection whose state becomes ``failed`` or
``closed`` is a hang-up too. :meth:`close` closes the peer connection, which closes its ICE
sockets (frees the ports) and stops the decoder thread; it is idempotent.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import fractions
import json
import logging
import re
import secrets
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import av
import numpy as np
from aioice.ice import StunProtocol
from aiortc import (
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCRtpSender,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.rtcdtlstransport import State as DtlsState
from aiortc.rtcrtpreceiver import RTCRtpReceiver, StreamStatistics
from aiortc.rtcrtptransceiver import RTCRtpTransceiver
from aiortc.rtp import RtpPacket

from bridge import metrics
from bridge.call.leg import LegInfo, LegSink, MediaLeg, Source, TransferOutcome, Underrun
from bridge.codecs import g711
from bridge.config import WebRtcConfig
from bridge.errors import ProtocolError
from bridge.rtp.jitter import JitterBuffer

log = logging.getLogger(__name__)

#: Frames held between the media clock and aiortc's sender (60 ms).
MAX_QUEUED = 3
#: How late past its due time a frame may be before ``recv()`` sends silence instead.
GRACE_S = 0.030
#: Call events queued for the page until its ``events`` channel opens.
MAX_PENDING_EVENTS = 200

_MIME = {"pcmu": "audio/PCMU", "pcma": "audio/PCMA", "opus": "audio/opus"}
#: G.711 by MIME type: decoder and the codec's silence byte (for concealed packets).
_G711_DECODE: dict[str, tuple[Callable[[bytes], bytes], int]] = {
    "audio/pcmu": (g711.ulaw_decode, 0xFF),
    "audio/pcma": (g711.alaw_decode, 0xD5),
}
_DTMF_DIGITS = frozenset("0123456789*#ABCD")


class WebRtcOfferError(ProtocolError):
    """A browser offer that cannot be answered (bad SDP, no common audio codec)."""

    status = 400


def _preferred_codecs(names: tuple[str, ...]) -> list[Any]:
    capabilities = RTCRtpSender.getCapabilities("audio").codecs
    chosen: list[Any] = []
    for name in names:
        mime = _MIME[name].lower()
        chosen += [c for c in capabilities if c.mimeType.lower() == mime]
    return chosen


def answer_payload_type(sdp: str) -> int:
    """The first payload type of the ``m=audio`` line in ``sdp`` (the one we send with)."""
    m_line = re.search(r"^m=audio \d+ \S+ ([\d ]+)\r?$", sdp, re.MULTILINE)
    if m_line is None:
        raise WebRtcOfferError("answer has no m=audio line")
    return int(m_line.group(1).split()[0])


def answer_audio_codec(sdp: str) -> tuple[str, int]:
    """The first codec of the ``m=audio`` line in ``sdp``: (lower-case name, clock rate)."""
    m_line = re.search(r"^m=audio \d+ \S+ ([\d ]+)\r?$", sdp, re.MULTILINE)
    if m_line is None:
        raise WebRtcOfferError("answer has no m=audio line")
    first = m_line.group(1).split()[0]
    rtpmap = re.search(rf"^a=rtpmap:{first} ([^/\s]+)/(\d+)", sdp, re.MULTILINE)
    if rtpmap is not None:
        return rtpmap.group(1).lower(), int(rtpmap.group(2))
    static = {"0": ("pcmu", 8000), "8": ("pcma", 8000)}   # RFC 3551 static payload types
    if first in static:
        return static[first]
    raise WebRtcOfferError(f"answer payload type {first} has no rtpmap")


class OutboundTrack(MediaStreamTrack):
    """Audio to the browser: fed by the media clock, drained by aiortc (see module doc).

    With ``g711`` set ("pcmu"/"pcma") ``recv()`` returns already-encoded ``av.Packet``s:
    aiortc then only packetizes them (``Encoder.pack``), skipping its per-frame resampler,
    codec and thread-pool hop (measured: the hop alone let the sender fall behind the
    clock at a dozen calls on a busy core). Otherwise it returns ``av.AudioFrame``s.
    """

    kind = "audio"

    def __init__(self, sample_rate: int, frame_ms: int = 20, g711: str = "") -> None:
        super().__init__()
        self.g711 = g711 if sample_rate == 8000 else ""
        self.sample_rate = sample_rate
        self.frame_samples = sample_rate * frame_ms // 1000
        self.frame_bytes = 2 * self.frame_samples
        self.frame_s = frame_ms / 1000
        self._silence = bytes(self.frame_bytes)
        self._queue: collections.deque[bytes] = collections.deque()
        self._waiter: asyncio.Future[None] | None = None
        self._time_base = fractions.Fraction(1, sample_rate)
        self._pts = 0
        self._due: float | None = None
        self.dropped = 0       # frames dropped because the sender stalled
        self.silent = 0        # frames of silence sent because nothing was fed in time
        self._parked = False
        self._unparked: asyncio.Future[None] | None = None

    def park(self) -> None:
        """Stop producing: ``recv()`` waits (no silence) until :meth:`unpark` or stop."""
        self._parked = True

    def unpark(self) -> None:
        self._parked = False
        waiter = self._unparked
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def push(self, pcm: bytes) -> None:
        if len(pcm) != self.frame_bytes:
            pcm = pcm[: self.frame_bytes].ljust(self.frame_bytes, b"\0")
        if len(self._queue) >= MAX_QUEUED:
            self._queue.popleft()
            self.dropped += 1
        self._queue.append(pcm)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def recv(self) -> av.AudioFrame | av.Packet[Any]:
        if self.readyState != "live":
            raise MediaStreamError
        loop = asyncio.get_running_loop()
        while self._parked:
            self._unparked = loop.create_future()
            try:
                await self._unparked
            finally:
                self._unparked = None
            if self.readyState != "live":
                raise MediaStreamError
        if not self._queue:
            now = loop.time()
            due = (self._due if self._due is not None else now) + GRACE_S
            if due > now:
                waiter: asyncio.Future[None] = loop.create_future()
                self._waiter = waiter
                timer = loop.call_at(due, _wake, waiter)
                try:
                    await waiter
                finally:
                    timer.cancel()
                    self._waiter = None
            if self.readyState != "live":
                raise MediaStreamError
        now = loop.time()
        if self._queue:
            pcm = self._queue.popleft()
            self._due = now + self.frame_s
        else:
            pcm = self._silence
            self.silent += 1
            # Self-paced: the next silent frame is due one period after this one was.
            self._due = (self._due + self.frame_s) if self._due is not None else now
            self._due = max(self._due, now - self.frame_s)
        if self.g711:
            return self._packet(pcm)
        return self._frame(pcm)

    def _packet(self, pcm: bytes) -> av.Packet[Any]:
        packet = av.Packet(g711.encode(self.g711, pcm))
        packet.pts = self._pts
        packet.time_base = self._time_base
        self._pts += self.frame_samples
        return packet

    def _frame(self, pcm: bytes) -> av.AudioFrame:
        frame = av.AudioFrame(format="s16", layout="mono", samples=self.frame_samples)
        frame.planes[0].update(pcm)
        frame.sample_rate = self.sample_rate
        frame.time_base = self._time_base
        frame.pts = self._pts
        self._pts += self.frame_samples
        return frame

    def stop(self) -> None:
        super().stop()
        for waiter in (self._waiter, self._unparked):
            if waiter is not None and not waiter.done():
                waiter.set_result(None)


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class _Inbound:
    """Decoded aiortc frames -> mono PCM16 at ``rate`` in exact frames (stateful)."""

    def __init__(self, rate: int, frame_bytes: int) -> None:
        self.rate = rate
        self.frame_bytes = frame_bytes
        self._buffer = bytearray()
        self._resampler: av.AudioResampler | None = None
        self._resampler_in: int | None = None

    def frames(self, frame: av.AudioFrame) -> list[bytes]:
        if frame.sample_rate != self.rate or frame.format.name != "s16":
            pcm = self._resample(frame)
        else:
            samples = frame.to_ndarray()
            channels = len(frame.layout.channels)
            if channels > 1:   # packed s16: interleaved L R L R ...
                pcm = samples.reshape(-1, channels).mean(axis=1).astype(np.int16).tobytes()
            else:
                pcm = samples.tobytes()
        self._buffer += pcm
        out: list[bytes] = []
        size = self.frame_bytes
        while len(self._buffer) >= size:
            out.append(bytes(self._buffer[:size]))
            del self._buffer[:size]
        return out

    def _resample(self, frame: av.AudioFrame) -> bytes:
        if self._resampler is None or self._resampler_in != frame.sample_rate:
            self._resampler = av.AudioResampler(format="s16", layout="mono", rate=self.rate)
            self._resampler_in = frame.sample_rate
        return b"".join(f.to_ndarray().tobytes() for f in self._resampler.resample(frame))


class _G711Send:
    """G.711 RTP sent from ``write_frame`` itself (see module doc).

    Reads aiortc internals: the DTLS transport's state, SRTP session and header extension
    map, the ICE connection's nominated pair, and (optionally) the sender's report
    counters. :meth:`send` returns False while it cannot send (not connected yet, or the
    pair is relayed): the caller then uses the track path.
    """

    _REPORT = ("_RTCRtpSender__ntp_timestamp", "_RTCRtpSender__rtp_timestamp",
               "_RTCRtpSender__octet_count", "_RTCRtpSender__packet_count")

    def __init__(self, leg: WebRtcLeg, transceiver: RTCRtpTransceiver, payload_type: int,
                 loop: asyncio.AbstractEventLoop) -> None:
        self._leg = leg
        self._transceiver = transceiver
        self._sender = transceiver.sender
        self._payload_type = payload_type
        self._loop = loop
        self._encode = g711.ulaw_encode if leg.g711 == "pcmu" else g711.alaw_encode
        self._frame_s = leg.frame_ms / 1000
        self._samples = leg.frame_samples
        self._sequence = secrets.randbelow(1 << 16)
        self._timestamp = secrets.randbelow(1 << 32)
        self._last_sent: float | None = None
        self._reports = all(hasattr(self._sender, name) for name in self._REPORT)
        #: None until decided at the first connected frame; then True (ours) or False.
        self.direct: bool | None = None
        self.sent = 0
        self.dropped = 0

    def _pair(self) -> Any:
        dtls = self._sender.transport
        if getattr(dtls, "_state", None) is not DtlsState.CONNECTED:
            return None
        connection = getattr(getattr(dtls, "transport", None), "_connection", None)
        nominated = getattr(connection, "_nominated", None)
        return nominated.get(1) if isinstance(nominated, dict) else None

    def send(self, pcm: bytes) -> bool:
        """Send one frame; False: not ours to send (the track path takes it)."""
        if self.direct is False:
            return False
        pair = self._pair()
        if pair is None:
            if self.direct:
                self.dropped += 1          # the connection went away under a live call
                return True
            return False                   # not connected yet: the parked track keeps it
        if self.direct is None:
            self.direct = type(pair.protocol) is StunProtocol and \
                getattr(pair.protocol, "transport", None) is not None
            log.debug("webrtc %s: G.711 sent by %s", self._leg.info.call_id,
                      "the leg" if self.direct else "aiortc (relayed pair)")
            if not self.direct:
                self._leg.track.unpark()
                return False
        now = self._loop.time()
        marker = 0
        last = self._last_sent
        if last is None:
            marker = 1
        elif now - last > 2.5 * self._frame_s:
            # The feed paused: keep RTP time in step with real time; a new talkspurt.
            gap = round((now - last) / self._frame_s) - 1
            self._timestamp = (self._timestamp + gap * self._samples) & 0xFFFFFFFF
            marker = 1
        self._last_sent = now
        payload = self._encode(pcm)
        packet = RtpPacket(payload_type=self._payload_type, marker=marker,
                           sequence_number=self._sequence, timestamp=self._timestamp,
                           ssrc=self._sender._ssrc, payload=payload)
        packet.extensions.mid = self._transceiver.mid
        dtls = self._sender.transport
        data = dtls._tx_srtp.protect(packet.serialize(dtls._rtp_header_extensions_map))
        pair.protocol.transport.sendto(data, pair.remote_addr)
        self._sequence = (self._sequence + 1) & 0xFFFF
        self._timestamp = (self._timestamp + self._samples) & 0xFFFFFFFF
        self.sent += 1
        if self._reports:                  # what the sender's RTCP SR reports
            sender = self._sender
            name = self._REPORT
            setattr(sender, name[0], _ntp_now())
            setattr(sender, name[1], packet.timestamp)
            setattr(sender, name[2], getattr(sender, name[2]) + len(payload))
            setattr(sender, name[3], getattr(sender, name[3]) + 1)
        return True


def _ntp_now() -> int:
    """NTP timestamp (64-bit fixed point) of the wall clock, for RTCP sender reports."""
    return int((time.time() + 2208988800) * (1 << 32))


class _G711Receive:
    """G.711 RTP from an aiortc receiver straight to the leg's sink (see module doc).

    Installed by replacing ``_handle_rtp_packet`` on one receiver instance; the DTLS
    transport awaits it for every decrypted RTP packet routed to that receiver. It reads
    two of the receiver's private tables (the negotiated codecs by payload type and the
    per-SSRC RTCP statistics): :meth:`install` returns None when an aiortc release no
    longer has them, and the leg then stays on aiortc's own decoding path.
    """

    _CODECS = "_RTCRtpReceiver__codecs"
    _STREAMS = "_RTCRtpReceiver__remote_streams"

    def __init__(self, leg: WebRtcLeg, receiver: RTCRtpReceiver,
                 loop: asyncio.AbstractEventLoop) -> None:
        self._leg = leg
        self._receiver = receiver
        self._loop = loop
        self._fallback = receiver._handle_rtp_packet
        self._codecs: dict[int, Any] = getattr(receiver, self._CODECS)
        self._streams: dict[int, StreamStatistics] = getattr(receiver, self._STREAMS)
        silence = _G711_DECODE.get(_MIME.get(leg.g711, "").lower(), (g711.ulaw_decode, 0xFF))[1]
        self.jitter = JitterBuffer(silence_byte=silence)
        self._ssrc: int | None = None
        self._partial = b""
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0

    @classmethod
    def install(cls, leg: WebRtcLeg, receiver: RTCRtpReceiver) -> _G711Receive | None:
        if not (isinstance(getattr(receiver, cls._CODECS, None), dict)
                and isinstance(getattr(receiver, cls._STREAMS, None), dict)):
            log.warning("webrtc: this aiortc has no receiver tables to read; G.711 goes "
                        "through its decoder thread")
            return None
        self = cls(leg, receiver, asyncio.get_running_loop())
        # An instance attribute shadows the method: the transport calls this one.
        receiver._handle_rtp_packet = self.handle  # type: ignore[method-assign]
        return self

    async def handle(self, packet: RtpPacket, arrival_time_ms: int) -> None:
        codec = self._codecs.get(packet.payload_type)
        entry = _G711_DECODE.get(codec.mimeType.lower()) if codec is not None else None
        if codec is None or entry is None or not self._receiver._enabled:
            await self._fallback(packet, arrival_time_ms)
            return
        stats = self._streams.get(packet.ssrc)
        if stats is None:
            stats = self._streams[packet.ssrc] = StreamStatistics(codec.clockRate)
        stats.add(packet)                     # for the receiver's RTCP receiver reports
        if packet.ssrc != self._ssrc:
            if self._ssrc is not None:
                self.jitter.reset()           # a new stream: its own sequence space
            self._ssrc = packet.ssrc
        now = self._loop.time()
        self.jitter.push(packet.sequence_number, packet.timestamp, packet.payload, now)
        self._drain(entry[0], now)

    def _drain(self, decode: Callable[[bytes], bytes], now: float) -> None:
        leg = self._leg
        size = leg.frame_bytes
        while (payload := self.jitter.pop(now)) is not None:
            pcm = decode(payload)
            if not self._partial and len(pcm) == size:
                leg._deliver(pcm)             # 20 ms packets: the common case
                continue
            pcm = self._partial + pcm
            at = 0
            while len(pcm) - at >= size:
                leg._deliver(pcm[at:at + size])
                at += size
            self._partial = pcm[at:]
        deadline = self.jitter.get_timer()
        if deadline is not None and (self._timer is None or self._timer_at != deadline):
            if self._timer is not None:
                self._timer.cancel()
            self._timer_at = deadline
            self._timer = self._loop.call_at(deadline, self._on_timer, decode)

    def _on_timer(self, decode: Callable[[bytes], bytes]) -> None:
        self._timer = None
        if not self._leg.closed:
            self._drain(decode, self._loop.time())

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class WebRtcLeg(MediaLeg):
    """One browser call. Build it with :meth:`answer`."""

    underrun = Underrun.SILENCE

    def __init__(self, info: LegInfo, pc: RTCPeerConnection, codec: str, sample_rate: int) -> None:
        self.info = info
        self.pc = pc
        self.codec = codec
        self.sample_rate = sample_rate
        self.g711 = codec if codec in ("pcmu", "pcma") else ""
        self.track = OutboundTrack(sample_rate, self.frame_ms, g711=self.g711)
        self._sink: LegSink | None = None
        self._inbound = _Inbound(sample_rate, self.frame_bytes)
        self._reader: asyncio.Task[None] | None = None
        self._g711_receive: _G711Receive | None = None
        self._g711_send: _G711Send | None = None
        self._channels: dict[str, Any] = {}
        self._pending_events: collections.deque[str] = collections.deque(
            maxlen=MAX_PENDING_EVENTS)
        self._closed = False
        self._hangup_reported = False
        self._closing: asyncio.Task[None] | None = None
        self.ended = asyncio.Event()
        self.frames_in = 0
        self.frames_out = 0
        self._m_in = metrics.FRAMES_IN.labels(source="webrtc")
        self._m_out = metrics.FRAMES_OUT.labels(source="webrtc")
        self._on_message: dict[str, Callable[[Any], None]] = {
            "dtmf": self._on_dtmf_message,
            "bye": self._on_bye_message,
            "events": lambda _message: None,
        }

    # ---- signalling ----------------------------------------------------------------------

    @classmethod
    async def answer(cls, offer_sdp: str, *, config: WebRtcConfig | None = None,
                     caller: str = "browser", called: str = "", remote: str = "",
                     extra: Mapping[str, str] | None = None) -> tuple[WebRtcLeg, str]:
        """Answer a browser offer. Returns the leg and the answer SDP to send back."""
        config = config or WebRtcConfig()
        servers = [RTCIceServer(urls=list(s.urls), username=s.username, credential=s.credential)
                   for s in config.ice_servers]
        pc = RTCPeerConnection(RTCConfiguration(iceServers=servers))
        try:
            # Before setRemoteDescription: aiortc fixes the answer's codec list there.
            transceiver = pc.addTransceiver("audio", direction="sendrecv")
            transceiver.setCodecPreferences(_preferred_codecs(config.codecs))
            try:
                await pc.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
            except (ValueError, TypeError) as exc:
                raise WebRtcOfferError(f"offer not usable: {exc}") from None
            except Exception as exc:
                # aiortc raises its own OperationError/InvalidStateError for offers it
                # cannot negotiate (e.g. no common codec).
                if type(exc).__module__.startswith("aiortc"):
                    raise WebRtcOfferError(f"offer not usable: {exc}") from None
                raise
            # the answer is what we are about to send; read its m= line back
            draft = (await pc.createAnswer()).sdp
            codec, rate = answer_audio_codec(draft)
            info = LegInfo(call_id=f"webrtc-{uuid.uuid4().hex[:16]}", source=Source.WEBRTC,
                           caller=caller, called=called, remote=remote,
                           extra=dict(extra or {}))
            leg = cls(info, pc, codec, rate)
            transceiver.sender.replaceTrack(leg.track)
            if leg.g711:
                leg._g711_receive = _G711Receive.install(leg, transceiver.receiver)
                leg._g711_send = _G711Send(leg, transceiver, answer_payload_type(draft),
                                           asyncio.get_running_loop())
                leg.track.park()
            leg._wire()
            # The "track" event fired inside setRemoteDescription, before the leg existed.
            if transceiver.receiver.track is not None:
                leg._on_track(transceiver.receiver.track)
            await pc.setLocalDescription(await pc.createAnswer())
            sent = pc.localDescription.sdp
            sent_codec, _ = answer_audio_codec(sent)
            if sent_codec != codec:   # pragma: no cover - aiortc answers consistently
                raise WebRtcOfferError(f"answer codec changed from {codec} to {sent_codec}")
        except BaseException:
            await pc.close()
            raise
        metrics.WEBRTC_LEGS_ACTIVE.inc()
        log.info("webrtc %s: answered with %s/%d from %s", leg.info.call_id, codec, rate,
                 remote or "?")
        return leg, sent

    def _wire(self) -> None:
        self.pc.on("track", self._on_track)
        self.pc.on("datachannel", self._on_datachannel)
        self.pc.on("connectionstatechange", self._on_connection_state)

    # ---- MediaLeg ------------------------------------------------------------------------

    def attach(self, sink: LegSink) -> None:
        self._sink = sink

    def write_frame(self, pcm: bytes) -> None:
        if self._closed:
            return
        direct = self._g711_send
        if direct is None or not direct.send(pcm):
            self.track.push(pcm)
        self.frames_out += 1
        self._m_out.inc()

    async def hang_up(self, reason: str) -> None:
        if self._closed:
            return
        bye = self._channels.get("bye")
        if bye is not None and bye.readyState == "open":
            with contextlib.suppress(Exception):   # the channel may be closing under us
                bye.send(reason)
                await asyncio.sleep(0)             # let the SCTP stack flush it
        self._hangup_reported = True               # we ended it: nothing to report
        await self.close()

    async def transfer(self, target: str) -> TransferOutcome:
        # A browser has no SIP stack to be referred: report it so the call plays its
        # fallback (announcement) instead of pretending the caller moved.
        return TransferOutcome(ok=False, status=0, detail="transfer not supported on WebRTC")

    async def send_dtmf(self, digits: str) -> None:
        channel = self._channels.get("dtmf")
        if channel is None or channel.readyState != "open":
            return
        for digit in digits:
            channel.send(digit)

    # ---- events to the page --------------------------------------------------------------

    def send_event(self, event: Mapping[str, Any]) -> None:
        """Push one call event (JSON) to the page's ``events`` channel; queued until open."""
        text = json.dumps(event, separators=(",", ":"), default=str)
        channel = self._channels.get("events")
        if channel is not None and channel.readyState == "open":
            channel.send(text)
        elif not self._closed:
            self._pending_events.append(text)

    # ---- life cycle ----------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed

    async def close(self) -> None:
        """Close the peer connection (ICE sockets, DTLS, decoder thread). Idempotent."""
        if self._closed:
            if self._closing is not None:
                await asyncio.shield(self._closing)
            return
        self._closed = True
        self._closing = asyncio.ensure_future(self._close())
        await asyncio.shield(self._closing)

    async def _close(self) -> None:
        self.track.stop()
        if self._g711_receive is not None:
            self._g711_receive.close()
        reader = self._reader
        if reader is not None and not reader.done():
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
        await self.pc.close()
        metrics.WEBRTC_LEGS_ACTIVE.dec()
        self.ended.set()
        jitter = self._g711_receive.jitter if self._g711_receive is not None else None
        log.info("webrtc %s: closed (in %d frames, out %d, silent %d, dropped %d, "
                 "lost %d, late %d)", self.info.call_id, self.frames_in, self.frames_out,
                 self.track.silent, self.track.dropped, jitter.lost if jitter else 0,
                 jitter.late if jitter else 0)

    def _report_hangup(self, reason: str) -> None:
        if self._hangup_reported:
            return
        self._hangup_reported = True
        log.info("webrtc %s: far end hung up (%s)", self.info.call_id, reason)
        if self._sink is not None:
            self._sink.on_leg_hangup(reason)
        else:
            # No call attached yet: nobody else will close the peer connection.
            self._closing_soon()

    def _closing_soon(self) -> None:
        if not self._closed:
            self._closed = True
            self._closing = asyncio.ensure_future(self._close())

    # ---- aiortc callbacks ----------------------------------------------------------------

    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind == "audio" and self._reader is None:
            self._reader = asyncio.ensure_future(self._read(track))

    async def _read(self, track: MediaStreamTrack) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            if not isinstance(frame, av.AudioFrame):
                continue
            for pcm in self._inbound.frames(frame):
                self._deliver(pcm)

    def _deliver(self, pcm: bytes) -> None:
        """One inbound frame of exactly ``frame_bytes`` to the sink (dropped if none)."""
        self.frames_in += 1
        self._m_in.inc()
        sink = self._sink
        if sink is not None:
            sink.on_leg_audio(pcm)

    def _on_datachannel(self, channel: Any) -> None:
        handler = self._on_message.get(channel.label)
        if handler is None:
            log.debug("webrtc %s: ignoring data channel %r", self.info.call_id, channel.label)
            return
        self._channels[channel.label] = channel
        channel.on("message", handler)
        if channel.label == "events":
            channel.on("open", self._flush_events)
            if channel.readyState == "open":
                self._flush_events()

    def _flush_events(self) -> None:
        channel = self._channels.get("events")
        while channel is not None and channel.readyState == "open" and self._pending_events:
            channel.send(self._pending_events.popleft())

    def _on_dtmf_message(self, message: Any) -> None:
        digits = message if isinstance(message, str) else ""
        for digit in digits.strip().upper():
            if digit not in _DTMF_DIGITS:
                log.debug("webrtc %s: ignoring DTMF %r", self.info.call_id, digit)
                continue
            metrics.DTMF_DIGITS.labels(source="webrtc").inc()
            if self._sink is not None:
                self._sink.on_leg_dtmf(digit)

    def _on_bye_message(self, _message: Any) -> None:
        self._report_hangup("bye")

    def _on_connection_state(self) -> None:
        state = self.pc.connectionState
        log.debug("webrtc %s: connection %s", self.info.call_id, state)
        if state in ("failed", "closed") and not self._closed:
            self._report_hangup(f"connection {state}")
