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

Media. Inbound G.711 is taken off aiortc's receiver and pushed to the sink from the
packet callback (:mod:`bridge.webrtc.receive`), Opus is read from aiortc's decoded track
by one reader task per leg; either way each frame is preceded by a call of
:attr:`WebRtcLeg.poll` (the media clock's ``poll``, set by whoever wires the leg to a
call) and frames that arrive before a sink is attached are dropped. Outbound frames go to
:class:`bridge.webrtc.track.OutboundTrack` (aiortc's sender pulls them), and for G.711 on a
plain UDP pair the leg writes the SRTP packets itself (:mod:`bridge.webrtc.send`).

G.711 passthrough (:meth:`WebRtcLeg.carry_encoded`): when the negotiated codec is the law
asked for, inbound frames are the RTP payloads as received (160 bytes per 20 ms) and
``write_frame`` takes payloads to send as is; nothing is decoded or encoded.

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
import json
import logging
import re
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import av
from aiortc import (
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCRtpSender,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.rtcrtpparameters import RTCRtpCodecCapability
from aiortc.rtcrtptransceiver import RTCRtpTransceiver

from bridge import metrics
from bridge.aio import cancel_and_wait
from bridge.call.leg import LegInfo, LegSink, MediaLeg, Source, TransferOutcome, Underrun
from bridge.config import WebRtcConfig
from bridge.errors import ProtocolError
from bridge.media.drain import Poll, no_poll
from bridge.webrtc.receive import G711Receive, Inbound
from bridge.webrtc.send import G711Send
from bridge.webrtc.track import GRACE_S, MAX_QUEUED, OutboundTrack

log = logging.getLogger(__name__)

#: Call events queued for the page until its ``events`` channel opens.
MAX_PENDING_EVENTS = 200

_MIME = {"pcmu": "audio/PCMU", "pcma": "audio/PCMA", "opus": "audio/opus"}
_DTMF_DIGITS = frozenset("0123456789*#ABCD")


class WebRtcOfferError(ProtocolError):
    """A browser offer that cannot be answered (bad SDP, no common audio codec)."""

    status = 400


def _preferred_codecs(names: tuple[str, ...]) -> list[RTCRtpCodecCapability]:
    capabilities = RTCRtpSender.getCapabilities("audio").codecs
    chosen: list[RTCRtpCodecCapability] = []
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
        self._poll: Poll = no_poll
        self._inbound = Inbound(sample_rate, self.frame_bytes)
        self._reader: asyncio.Task[None] | None = None
        self._g711_receive: G711Receive | None = None
        self._g711_send: G711Send | None = None
        self._channels: dict[str, Any] = {}
        self._pending_events: collections.deque[str] = collections.deque(
            maxlen=MAX_PENDING_EVENTS)
        self._closed = False
        self._hangup_reported = False
        self._closing: asyncio.Task[None] | None = None
        self.ended = asyncio.Event()
        #: ICE and DTLS connected (aiortc's connection state "connected"): media can flow.
        self.media_up = asyncio.Event()
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
            transceiver, draft = await _negotiate(pc, offer_sdp, config)
            # the answer is what we are about to send; read its m= line back
            codec, rate = answer_audio_codec(draft)
            info = LegInfo(call_id=f"webrtc-{uuid.uuid4().hex[:16]}", source=Source.WEBRTC,
                           caller=caller, called=called, remote=remote,
                           extra=dict(extra or {}))
            leg = cls(info, pc, codec, rate)
            leg._take_media(transceiver, answer_payload_type(draft))
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

    def _take_media(self, transceiver: RTCRtpTransceiver, payload_type: int) -> None:
        """Send our track, tap G.711 off the receiver, and listen to the connection."""
        transceiver.sender.replaceTrack(self.track)
        if self.g711:
            loop = asyncio.get_running_loop()
            receive = self._g711_receive = G711Receive(transceiver.receiver, self.g711,
                                                       self.frame_bytes, loop)
            receive.deliver = self._deliver
            receive.poll = self._poll
            self._g711_send = G711Send(self.info.call_id, self.g711, transceiver,
                                       payload_type, self.track, now=loop.time,
                                       frame_ms=self.frame_ms)
            self.track.park()
        self._wire()
        # The "track" event fired inside setRemoteDescription, before the leg existed.
        if transceiver.receiver.track is not None:
            self._on_track(transceiver.receiver.track)

    def _wire(self) -> None:
        self.pc.on("track", self._on_track)
        self.pc.on("datachannel", self._on_datachannel)
        self.pc.on("connectionstatechange", self._on_connection_state)

    # ---- MediaLeg ------------------------------------------------------------------------

    @property
    def poll(self) -> Poll:
        """Called before each inbound frame reaches the sink: the media clock's ``poll``."""
        return self._poll

    @poll.setter
    def poll(self, poll: Poll) -> None:
        self._poll = poll
        if self._g711_receive is not None:
            self._g711_receive.poll = poll

    def carry_encoded(self, law: str) -> bool:
        receive, send = self._g711_receive, self._g711_send
        if law not in ("pcmu", "pcma") or self.g711 != law or receive is None or send is None:
            return False
        self.carry = law
        receive.carry(self.carried_frame_bytes, law)
        send.carry()
        self.track.carry()
        return True

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
        if self._reader is not None:
            failure = await cancel_and_wait(self._reader)
            if failure is not None:
                log.warning("webrtc %s: reader failed: %r", self.info.call_id, failure)
        await self.pc.close()
        metrics.WEBRTC_LEGS_ACTIVE.dec()
        self.ended.set()
        jitter = self._g711_receive.jitter if self._g711_receive is not None else None
        log.info("webrtc %s: closed (in %d frames, out %d, silent %d, dropped %d, "
                 "lost %d, late %d)", self.info.call_id, self.frames_in, self.frames_out,
                 self.track.silent, self.track.dropped, jitter.lost if jitter else 0,
                 jitter.late if jitter else 0)

    async def wait_media(self, timeout_s: float) -> bool:
        """True once ICE and DTLS are connected; False when they are not within
        ``timeout_s``, or the connection failed or closed first."""
        up = asyncio.ensure_future(self.media_up.wait())
        ended = asyncio.ensure_future(self.ended.wait())
        try:
            await asyncio.wait({up, ended}, timeout=timeout_s,
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            up.cancel()
            ended.cancel()
        return self.media_up.is_set() and not self._closed

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
            if isinstance(frame, av.AudioFrame):
                self._inbound.push(frame, self._deliver, self._poll)

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
        if state == "connected":
            self.media_up.set()
        if state in ("failed", "closed") and not self._closed:
            self._report_hangup(f"connection {state}")


async def _negotiate(pc: RTCPeerConnection, offer_sdp: str, config: WebRtcConfig
                     ) -> tuple[RTCRtpTransceiver, str]:
    """Apply the browser's offer to ``pc``; the audio transceiver and a draft answer."""
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
    return transceiver, str((await pc.createAnswer()).sdp)


__all__ = [
    "GRACE_S", "MAX_QUEUED", "OutboundTrack", "WebRtcLeg", "WebRtcOfferError",
    "answer_audio_codec", "answer_payload_type",
]
