"""Caller audio upstream: leg frame -> (resample | encode | nothing) -> append.

Theory of operation
-------------------
The leg calls ``on_frame`` from its datagram callback with one 20 ms frame; nothing here
creates a task or queues. What the frame becomes depends on the session's audio format:

* ``pcm16`` (the default): the leg's PCM16 goes through the call's inbound resampler to
  24 kHz. While a loop is running, the frame is submitted to the process's upstream batch
  (``batch.py``): every call's frame queued in one loop pass is resampled in one product,
  and comes back through ``_deliver``.
* G.711 passthrough: the leg carries the encoded payload (``leg.carry`` is the session's
  law) and the bytes go upstream exactly as they came off the wire: zero transcodes.
* G.711 upstream from a PCM16 leg (a leg that cannot carry the payload): encoded here.

Appends are ``append_frames`` frames each (1: one WebSocket message per 20 ms frame).

Gaps in the caller's audio (the end of a recording, silence suppression / DTX, comfort
noise) would leave server VAD waiting for the end of the turn forever: it counts audio
time. On each clock tick ``on_tick`` asks ``InboundGaps`` whether caller audio has stopped
for more than ~3 ticks and, if so, appends silence in the upstream format for each missing
tick, never doubling up real audio that is merely jittery. The gap's first silent frame
goes through the resampler: it carries the ring-out of the last real audio.

Audio flows only while ``open`` (the upstream is connected and the call can talk).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from bridge.call.batch import upstream_batch
from bridge.call.clock import MediaClock
from bridge.call.gaps import InboundGaps
from bridge.call.leg import MediaLeg
from bridge.codecs import g711
from bridge.codecs.resample import StreamResampler, inbound_resampler


class Upstream(Protocol):
    def append_audio(self, data: bytes) -> None: ...


class InboundAudio:
    """The inbound path of one call (see the module docstring)."""

    def __init__(self, leg: MediaLeg, audio_format: str, clock: MediaClock, *,
                 append_frames: int = 1) -> None:
        self._clock = clock
        self._time: Callable[[], float] = clock.time
        self._poll = clock.poll            # handed to the batch, which polls per delivery
        law = audio_format if audio_format in g711.SILENCE_BYTE else ""
        self.passthrough = bool(law) and leg.carry == law
        self._encode = law if law and not self.passthrough else ""
        self.resampler: StreamResampler | None = None if law else inbound_resampler(
            leg.sample_rate)
        self._batch = upstream_batch()
        self.gaps = InboundGaps(period=leg.frame_ms / 1000)
        self._leg_zero = bytes(leg.frame_bytes)
        if law:
            self._silence = g711.silence(law, 8 * leg.frame_ms)          # 8 kHz
        else:
            self._silence = bytes(48 * leg.frame_ms)          # PCM16 24 kHz zeros
        self._append_frames = append_frames
        self._pending = bytearray()
        self._pending_frames = 0
        self._up: Upstream | None = None
        #: caller audio handed upstream, in the upstream format (all sessions)
        self.sent_bytes = 0

    def open(self, upstream: Upstream, now: float) -> None:
        self._up = upstream
        self._time = self._clock.time_source()    # the clock runs: its raw source
        self.gaps.start(now)

    def close(self) -> None:
        self._up = None
        self.gaps.stop()

    # -- the leg's callback ---------------------------------------------------------------
    def on_frame(self, frame: bytes) -> None:
        up = self._up
        if up is None:
            return
        self.gaps.on_frame(self._time())
        if self.passthrough:
            if self._append_frames == 1:          # ``_send`` inlined: the common case
                up.append_audio(frame)
                self.sent_bytes += len(frame)
            else:
                self._send(up, frame)
            return
        if self._encode:
            self._send(up, g711.encode(self._encode, frame))
            return
        rs = self.resampler
        assert rs is not None
        if not self._batch.submit(rs, frame, self._deliver, self._poll):
            self._send(up, rs.process(frame))

    def _deliver(self, data: bytes) -> None:
        """A batched frame, resampled (batch.py)."""
        up = self._up
        if up is not None:
            self._send(up, data)

    def _send(self, up: Upstream, data: bytes) -> None:
        if self._append_frames == 1:
            if data:
                up.append_audio(data)
                self.sent_bytes += len(data)
            return
        self._pending += data
        self._pending_frames += 1
        if self._pending_frames >= self._append_frames:
            up.append_audio(bytes(self._pending))
            self.sent_bytes += len(self._pending)
            self._pending.clear()
            self._pending_frames = 0

    # -- the media clock ------------------------------------------------------------------
    def on_tick(self, now: float) -> None:
        """Stand in silence for caller audio that stopped coming."""
        up = self._up
        if up is None:
            return
        n = self.gaps.on_tick(now)
        if n == 0:
            return
        if self.resampler is not None and self.gaps.filled_in_gap == n:
            self._send(up, self.resampler.process(self._leg_zero))
            n -= 1
        for _ in range(n):
            self._send(up, self._silence)


__all__ = ["InboundAudio", "Upstream"]
