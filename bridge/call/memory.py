"""``MemoryLeg``: a media leg that lives in memory, for tests and benchmarks.

Inbound audio is either pushed at once (``feed``) or queued as a script that the shared
media clock plays one frame per tick (``play``), as a phone would send it: in real time,
with silence between utterances when ``idle_silence`` is on (server VAD needs the silence
to see the end of speech). Every outbound frame is recorded with the clock's grid time of
the tick that produced it (and the time it was handed over, for jitter figures). DTMF and
hang-up from the "far end" are injected; transfers, hang-ups and sent DTMF are recorded.

Like the network legs, it calls the media clock's ``poll`` before each inbound frame
reaches the call (its own ``clock``'s, or the ``poll`` hook when one is set). With G.711
passthrough (``carry_encoded``) frames in both directions are the law's payload bytes:
``feed``/``play`` take encoded audio and pad with the law's silence byte, idle and
underrun frames are encoded silence.
"""

from __future__ import annotations

import asyncio
import time
from array import array
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from bridge.call.clock import Histogram, MediaClock
from bridge.call.leg import LegInfo, LegSink, MediaLeg, Source, TransferOutcome, Underrun
from bridge.codecs import g711
from bridge.media.drain import Poll, no_poll


@dataclass(frozen=True)
class OutFrame:
    """One outbound frame as the leg received it."""

    tick_time: float      # grid time of the clock tick that handed it over (or monotonic)
    handed_at: float      # clock time actually read when it was handed over
    pcm: bytes            # empty when the leg does not keep audio (``keep_audio=False``)
    silent: bool          # written through ``write_silence`` (underrun)


@dataclass
class LegStats:
    frames_out: int = 0
    silence_out: int = 0
    frames_in: int = 0
    #: when set, every outbound frame's (tick_time, handed_at), flat: t0, h0, t1, h1, ...
    #: Two C-level appends per frame: measuring must not slow the tick it measures (a
    #: benchmark's 200 legs are all handed their frames in one tick). ``PacingFigures``
    #: turns it into figures afterwards.
    timeline: array[float] | None = None


@dataclass
class PacingFigures:
    """Hand-off timing of one or more legs' timelines (``LegStats.timeline``)."""

    #: |handed_at - tick_time| of every frame: the offset of the hand-off from the grid
    handoff: Histogram = field(default_factory=Histogram)
    #: |(t[n] - t[n-1]) - (grid[n] - grid[n-1])| between a leg's consecutive hand-offs:
    #: the spacing variation a receiver's jitter buffer sees (a constant offset from the
    #: grid is invisible to it)
    spacing: Histogram = field(default_factory=Histogram)
    #: per leg, the RFC 3550 §6.4.1 interarrival jitter estimate of the hand-offs,
    #: seconds: J += (|D(i-1, i)| - J) / 16, D the spacing difference above
    jitter: list[float] = field(default_factory=list)
    #: per leg, how far its hand-offs moved against its grid from the first frame to the
    #: last, seconds: (handed - tick) at the end minus at the start (cumulative drift)
    drift: list[float] = field(default_factory=list)

    def add(self, timeline: array[float]) -> None:
        handoff, spacing = self.handoff, self.spacing
        jitter = 0.0
        last_tick = last_handed = -1.0
        for i in range(0, len(timeline) - 1, 2):
            tick, handed = timeline[i], timeline[i + 1]
            handoff.add(abs(handed - tick))
            if last_tick >= 0.0:
                d = abs((handed - last_handed) - (tick - last_tick))
                spacing.add(d)
                jitter += (d - jitter) / 16.0
            last_tick, last_handed = tick, handed
        self.jitter.append(jitter)
        if len(timeline) >= 4:
            self.drift.append((timeline[-1] - timeline[-2]) - (timeline[1] - timeline[0]))


class MemoryLeg(MediaLeg):
    """An in-memory ``MediaLeg``.

    ``clock``: when given, the leg subscribes to it to play the queued inbound script
    paced one frame per tick, and outbound frames are stamped with ``clock.tick_time``.
    """

    def __init__(self, info: LegInfo | None = None, *, sample_rate: int = 8000,
                 clock: MediaClock | None = None, g711: str = "pcmu",
                 underrun: Underrun = Underrun.SILENCE, idle_silence: bool = True,
                 keep_audio: bool = True,
                 transfer_outcome: TransferOutcome | None = None) -> None:
        self.info = info or LegInfo(call_id="mem-1", source=Source.MEMORY,
                                    caller="+15550100", called="100")
        self.sample_rate = sample_rate
        self._silence = bytes(self.frame_bytes)   # one shared frame, not one per tick
        self.g711 = g711 if sample_rate == 8000 else ""
        self.underrun = underrun
        self.clock = clock
        self._poll: Poll | None = None
        self.idle_silence = idle_silence
        self.keep_audio = keep_audio
        self.transfer_outcome = transfer_outcome or TransferOutcome(ok=True, status=200)
        self.transfer_delay_s = 0.0
        self._sink: LegSink | None = None
        self._script: deque[bytes] = deque()
        self._sending = True
        self._ticking = False
        self.frames: list[OutFrame] = []
        self.stats = LegStats()
        self.transfers: list[str] = []
        #: clock time of each transfer request (for "after the last words" checks)
        self.transfer_times: list[float] = []
        self.hangups: list[str] = []
        self.sent_dtmf: list[str] = []
        self.closed = asyncio.Event()
        self.far_end_hung_up = False

    # -- MediaLeg ----------------------------------------------------------------------
    @property
    def sending_allowed(self) -> bool:
        return self._sending

    def set_hold(self, on_hold: bool) -> None:
        """Simulate a re-INVITE putting the call on hold (``sendonly``) or back."""
        self._sending = not on_hold

    @property
    def poll(self) -> Poll:
        """Called before each inbound frame: the hook when one was set, else the clock's."""
        if self._poll is not None:
            return self._poll
        return self.clock.poll if self.clock is not None else no_poll

    @poll.setter
    def poll(self, poll: Poll) -> None:
        self._poll = poll

    def carry_encoded(self, law: str) -> bool:
        if law not in g711.SILENCE_BYTE or self.g711 != law:
            return False
        self.carry = law
        self._silence = g711.silence(law, self.frame_samples)
        return True

    def attach(self, sink: LegSink) -> None:
        self._sink = sink
        if self.clock is not None and not self._ticking:
            self._ticking = True
            self.clock.subscribe(self)

    def write_frame(self, pcm: bytes) -> None:
        self._record(pcm, silent=False)

    def write_silence(self) -> None:
        self._record(self._silence, silent=True)

    async def hang_up(self, reason: str) -> None:
        if not self.closed.is_set():
            self.hangups.append(reason)
        self._close()

    async def transfer(self, target: str) -> TransferOutcome:
        self.transfers.append(target)
        self.transfer_times.append(self._now())
        if self.transfer_delay_s:
            await asyncio.sleep(self.transfer_delay_s)
        if self.transfer_outcome.ok:
            self._close()
        return self.transfer_outcome

    async def send_dtmf(self, digits: str) -> None:
        self.sent_dtmf.append(digits)

    # -- injection ---------------------------------------------------------------------
    def _frames(self, audio: bytes) -> list[bytes]:
        """``audio`` (in ``carry``'s format) as whole frames, a short tail padded."""
        fb = self.carried_frame_bytes
        pad = self._silence[:1]
        return [audio[i:i + fb].ljust(fb, pad) for i in range(0, len(audio), fb)]

    def feed(self, pcm: bytes) -> None:
        """Deliver ``pcm`` to the call at once, as whole frames (a short tail is padded)."""
        for frame in self._frames(pcm):
            self._deliver(frame)

    def feed_frames(self, frames: list[bytes]) -> None:
        for frame in frames:
            self._deliver(frame)

    def play(self, pcm: bytes) -> None:
        """Queue ``pcm`` to be sent to the call one frame per clock tick."""
        self._script.extend(self._frames(pcm))

    def play_frames(self, frames: Iterable[bytes]) -> None:
        """Queue whole frames (shared ``bytes`` objects are fine: they are not copied)."""
        self._script.extend(frames)

    def play_silence(self, ms: int) -> None:
        samples = self.sample_rate * ms // 1000
        self.play(self._silence[:1] * (samples * self.carried_frame_bytes
                                       // self.frame_samples))

    @property
    def script_ms(self) -> int:
        """Milliseconds of queued inbound audio not yet sent."""
        return len(self._script) * self.frame_ms

    def press(self, digit: str) -> None:
        if self._sink is not None:
            self._sink.on_leg_dtmf(digit)

    def far_end_hangup(self, reason: str = "bye") -> None:
        self.far_end_hung_up = True
        self._close()
        if self._sink is not None:
            self._sink.on_leg_hangup(reason)

    # -- clock -------------------------------------------------------------------------
    def on_tick(self, now: float) -> None:
        if self._script:
            self._deliver(self._script.popleft())
        elif self.idle_silence:
            self._deliver(self._silence)

    # -- helpers -----------------------------------------------------------------------
    def _deliver(self, frame: bytes) -> None:
        self.stats.frames_in += 1
        sink = self._sink
        if sink is None or self.closed.is_set():
            return
        self.poll()
        sink.on_leg_audio(frame)

    def _now(self) -> float:
        if self.clock is not None and self.clock.running:
            return self.clock.time()
        return time.monotonic()

    def _record(self, pcm: bytes, *, silent: bool) -> None:
        clock = self.clock
        if clock is not None and clock.running:
            tick, handed = clock.tick_time, clock.time()
        else:
            tick = handed = time.monotonic()
        stats = self.stats
        stats.frames_out += 1
        if silent:
            stats.silence_out += 1
        timeline = stats.timeline
        if timeline is not None:
            timeline.append(tick)
            timeline.append(handed)
        if self.keep_audio:
            self.frames.append(OutFrame(tick, handed, pcm, silent))

    def _close(self) -> None:
        if not self.closed.is_set():
            self.closed.set()
        if self._ticking and self.clock is not None:
            self._ticking = False
            self.clock.unsubscribe(self)

    def audio_out(self) -> bytes:
        """All outbound audio kept so far, concatenated."""
        return b"".join(f.pcm for f in self.frames)


__all__ = ["LegStats", "MemoryLeg", "OutFrame"]
