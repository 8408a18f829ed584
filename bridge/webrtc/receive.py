"""The WebRTC leg's inbound audio: a G.711 tap on aiortc's receiver, and Opus frames.

Theory of operation
-------------------
G.711. aiortc's receiver would hold every packet in its jitter buffer (a fixed 4-packet
prefetch: 80 ms before the first frame), hand it to a decoder *thread* through a
``queue.Queue``, and hand the decoded ``av.AudioFrame`` back to the event loop with
``run_coroutine_threadsafe`` for a reader task to pick up. Measured on a 2-core box at 20
calls, that thread round trip and the GIL hand-offs it causes were the largest single cost
of a leg. :class:`G711Receive` takes the packets off the receiver instead: it replaces the
receiver's packet handler on that one instance (through :mod:`bridge.internals.aiortc`),
so the packet that the DTLS transport has just decrypted and parsed is decoded with
``audioop`` -- or, when the leg carries G.711 as is, not decoded at all -- and pushed to
the sink in the same call, like the SIP leg does, through the same
:class:`bridge.media.drain.FrameDrain`. Ordering and loss are handled by the RTP module's
pass-through jitter buffer (no delay unless a gap is seen; a timer only while one is
open). The receiver's RTCP statistics are still fed, so its receiver reports stay right.
Packets of another payload type (Opus) take aiortc's own path.

Opus. aiortc decodes in its own thread and hands frames to a ``RemoteStreamTrack``; the
leg's reader task awaits ``recv()`` and gives each frame to :class:`Inbound`, which
downmixes to mono, resamples only if the decoded rate differs from the leg rate (never for
a negotiated codec) and cuts exact 20 ms frames (:class:`bridge.media.drain.Reframer`).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable

import av
import numpy as np
from aiortc.rtcrtpreceiver import RTCRtpReceiver, StreamStatistics
from aiortc.rtp import RtpPacket

from bridge.codecs import g711
from bridge.internals import aiortc as internals
from bridge.media.drain import Convert, Deliver, FrameDrain, Poll, Reframer, no_poll
from bridge.rtp.jitter import JitterBuffer

#: G.711 by MIME type (lower case): decoder and the codec's silence byte.
G711_MIME: dict[str, tuple[str, Callable[[bytes], bytes], int]] = {
    "audio/pcmu": ("pcmu", g711.ulaw_decode, g711.SILENCE_BYTE["pcmu"]),
    "audio/pcma": ("pcma", g711.alaw_decode, g711.SILENCE_BYTE["pcma"]),
}


class G711Receive:
    """G.711 RTP from an aiortc receiver straight to a sink (see module doc).

    ``deliver`` and ``poll`` are read on every packet, so the leg may change them (attach
    a sink, wire the media clock) at any time.
    """

    def __init__(self, receiver: RTCRtpReceiver, law: str, frame_bytes: int,
                 loop: asyncio.AbstractEventLoop) -> None:
        self._receiver = receiver
        self._loop = loop
        self._tables = internals.receiver_tables(receiver)
        self.jitter = JitterBuffer(silence_byte=g711.SILENCE_BYTE.get(law, 0xFF))
        self._frames = FrameDrain(loop, frame_bytes, self._on_deadline)
        self._ssrc: int | None = None
        #: True: payloads pass as is (the leg carries G.711); else decoded by MIME type.
        self.carried = False
        self._law = law
        self.deliver: Deliver = _drop
        self.poll: Poll = no_poll
        self._convert: Convert = None
        self._closed = False
        self._fallback = internals.hook_receiver(receiver, self.handle)

    def carry(self, frame_bytes: int, law: str) -> None:
        """From now on deliver the payloads as received, in frames of ``frame_bytes``
        (a packet of the other law is converted to ``law``, as the RTP endpoint does)."""
        self.carried = True
        self._law = law
        self._frames.reframer.reset(frame_bytes)

    async def handle(self, packet: RtpPacket, arrival_time_ms: int) -> None:
        codec = self._tables.codecs.get(packet.payload_type)
        entry = G711_MIME.get(codec.mimeType.lower()) if codec is not None else None
        if (codec is None or entry is None
                or not internals.receiver_enabled(self._receiver)):
            await self._fallback(packet, arrival_time_ms)
            return
        streams = self._tables.streams
        stats = streams.get(packet.ssrc)
        if stats is None:
            stats = streams[packet.ssrc] = StreamStatistics(codec.clockRate)
        stats.add(packet)                     # for the receiver's RTCP receiver reports
        if packet.ssrc != self._ssrc:
            if self._ssrc is not None:
                self.jitter.reset()           # a new stream: its own sequence space
            self._ssrc = packet.ssrc
        now = self._loop.time()
        self.jitter.push(packet.sequence_number, packet.timestamp, packet.payload, now)
        if not self.carried:
            self._convert = entry[1]
        elif entry[0] == self._law:
            self._convert = None
        else:                                  # the browser switched law: re-encode
            self._convert = functools.partial(g711.transcode, entry[0], self._law)
        self._drain(now)

    def _drain(self, now: float) -> None:
        self._frames.drain(self.jitter, now, self._convert, self.deliver, self.poll)

    def _on_deadline(self) -> None:
        if not self._closed:
            self._drain(self._loop.time())

    def close(self) -> None:
        self._closed = True
        self._frames.close()


class Inbound:
    """Decoded aiortc frames -> mono PCM16 at ``rate`` in exact frames (stateful)."""

    def __init__(self, rate: int, frame_bytes: int) -> None:
        self.rate = rate
        self._reframer = Reframer(frame_bytes)
        self._resampler: av.AudioResampler | None = None
        self._resampler_in: int | None = None

    def push(self, frame: av.AudioFrame, deliver: Deliver, poll: Poll = no_poll) -> None:
        """Give ``deliver`` every whole frame ``frame`` completes."""
        self._reframer.push(self._pcm(frame), deliver, poll)

    def frames(self, frame: av.AudioFrame) -> list[bytes]:
        out: list[bytes] = []
        self.push(frame, out.append)
        return out

    def _pcm(self, frame: av.AudioFrame) -> bytes:
        if frame.sample_rate != self.rate or frame.format.name != "s16":
            return self._resample(frame)
        samples = frame.to_ndarray()
        channels = len(frame.layout.channels)
        if channels > 1:   # packed s16: interleaved L R L R ...
            return bytes(samples.reshape(-1, channels).mean(axis=1).astype(np.int16).tobytes())
        return bytes(samples.tobytes())

    def _resample(self, frame: av.AudioFrame) -> bytes:
        if self._resampler is None or self._resampler_in != frame.sample_rate:
            self._resampler = av.AudioResampler(format="s16", layout="mono", rate=self.rate)
            self._resampler_in = frame.sample_rate
        return b"".join(f.to_ndarray().tobytes() for f in self._resampler.resample(frame))


def _drop(_frame: bytes) -> None:
    return None


__all__ = ["G711_MIME", "G711Receive", "Inbound"]
