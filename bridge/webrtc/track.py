"""``OutboundTrack``: the WebRTC leg's audio to the browser along aiortc's own sender.

Theory of operation
-------------------
aiortc's ``RTCRtpSender`` *pulls* frames by awaiting ``track.recv()`` in its own loop and
sends each as soon as it gets it; it does no pacing of its own. The bridge's media clock
*pushes* one frame per 20 ms tick into the leg's ``write_frame``. The track reconciles the
two with a small queue: :meth:`OutboundTrack.push` appends (dropping the oldest beyond
``MAX_QUEUED`` frames, which only happens if the sender stalls), and ``recv()`` returns the
next queued frame as soon as there is one, so while the clock feeds, the clock alone sets
the pace and no second timer runs. When the clock does not feed (before the call is
attached, between calls, or a leg on ``Underrun.NOTHING``) ``recv()`` paces itself: it
waits until one frame period after the last frame it returned plus a grace period, then
returns silence, so the RTP stream keeps its timing and the browser's jitter buffer does
not drain. RTP timestamps follow ``pts``, which advances by exactly one frame per
returned frame, queued or silent.

With ``g711`` set ("pcmu"/"pcma") ``recv()`` returns already-encoded ``av.Packet``s:
aiortc then only packetizes them (``Encoder.pack``), skipping its per-frame resampler,
codec and thread-pool hop (measured: the hop alone let the sender fall behind the clock
at a dozen calls on a busy core). Otherwise it returns ``av.AudioFrame``s. With
``carried`` (G.711 passthrough) the pushed frames already are the encoded payload.

A *parked* track (:meth:`park`) produces nothing: ``recv()`` waits instead of pacing
silence, while the leg sends its G.711 packets itself (:mod:`bridge.webrtc.send`), so the
two paths never interleave on one SSRC.
"""

from __future__ import annotations

import asyncio
import collections
import fractions
from typing import Any

import av
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from bridge.codecs import g711

#: Frames held between the media clock and aiortc's sender (60 ms).
MAX_QUEUED = 3
#: How late past its due time a frame may be before ``recv()`` sends silence instead.
GRACE_S = 0.030
#: A G.711 law's silence byte.


class OutboundTrack(MediaStreamTrack):
    """Audio to the browser: fed by the media clock, drained by aiortc (see module doc)."""

    kind = "audio"

    def __init__(self, sample_rate: int, frame_ms: int = 20, g711: str = "") -> None:
        super().__init__()
        self.g711 = g711 if sample_rate == 8000 else ""
        self.sample_rate = sample_rate
        self.frame_samples = sample_rate * frame_ms // 1000
        self.frame_bytes = 2 * self.frame_samples
        self.frame_s = frame_ms / 1000
        #: True: pushed frames are the ``g711`` payload already (passthrough).
        self.carried = False
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

    @property
    def queued(self) -> int:
        return len(self._queue)

    def carry(self) -> None:
        """From now on pushed frames are ``g711`` payloads, sent as is (no encode)."""
        if self.g711:
            self.carried = True
            self.frame_bytes = self.frame_samples
            self._silence = g711.silence(self.g711, self.frame_samples)
            self._queue.clear()

    def park(self) -> None:
        """Stop producing: ``recv()`` waits (no silence) until :meth:`unpark` or stop."""
        self._parked = True

    def unpark(self) -> None:
        self._parked = False
        _wake(self._unparked)

    def push(self, frame: bytes) -> None:
        if len(frame) != self.frame_bytes:
            frame = frame[: self.frame_bytes].ljust(self.frame_bytes, self._silence[:1])
        if len(self._queue) >= MAX_QUEUED:
            self._queue.popleft()
            self.dropped += 1
        self._queue.append(frame)
        _wake(self._waiter)

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
            await self._wait_due(loop)
            if self.readyState != "live":
                raise MediaStreamError
        return self._next(loop.time())

    async def _wait_due(self, loop: asyncio.AbstractEventLoop) -> None:
        """Wait for a pushed frame, or until a frame is due (one period + grace)."""
        now = loop.time()
        due = (self._due if self._due is not None else now) + GRACE_S
        if due <= now:
            return
        waiter: asyncio.Future[None] = loop.create_future()
        self._waiter = waiter
        timer = loop.call_at(due, _wake, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiter = None

    def _next(self, now: float) -> av.AudioFrame | av.Packet[Any]:
        if self._queue:
            frame = self._queue.popleft()
            self._due = now + self.frame_s
        else:
            frame = self._silence
            self.silent += 1
            # Self-paced: the next silent frame is due one period after this one was.
            self._due = (self._due + self.frame_s) if self._due is not None else now
            self._due = max(self._due, now - self.frame_s)
        if self.carried:
            return self._packet(frame)
        if self.g711:
            return self._packet(g711.encode(self.g711, frame))
        return self._frame(frame)

    def _packet(self, payload: bytes) -> av.Packet[Any]:
        packet = av.Packet(payload)
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
        _wake(self._waiter)
        _wake(self._unparked)


def _wake(waiter: asyncio.Future[None] | None) -> None:
    if waiter is not None and not waiter.done():
        waiter.set_result(None)


__all__ = ["GRACE_S", "MAX_QUEUED", "OutboundTrack"]
