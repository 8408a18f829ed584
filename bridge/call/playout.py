"""Per-call outbound audio: deltas in, one paced frame per clock tick out.

Theory of operation
-------------------
The Realtime service sends audio faster than real time (docs/realtime-protocol.md §6),
so bytes received are not what the caller heard. ``Playout`` owns that difference:

    AudioDelta (24 kHz PCM16, or G.711) ─▶ decode/resample to the leg rate ─▶ PlayoutBuffer
    MediaClock tick ─▶ on_tick ─▶ one frame ─▶ leg.write_frame   (silence/nothing on underrun)

It counts, per assistant item, the samples actually handed to the leg: ``heard_ms``. Audio
is attributed to items through a queue of segments (item id, samples) parallel to the
buffer, so a frame that straddles two items credits each with its own share.

Each continuous run of one item's audio to the leg is reported once it closes (another
item, an underrun, hold, barge-in, ``close_span()`` at the end of the call) through
``on_span(item, start, end)`` in clock seconds, ``end`` being when the last frame handed
over finishes playing: the agent's speech intervals in the call record.

``barge_in()`` clears the buffer and resets the resampler at once (the next tick plays no
agent audio) and returns the item being heard with its heard/received milliseconds, which
the call uses for ``conversation.item.truncate``. ``end_of_response()`` flushes the
resampler's tail into the buffer and lets the last partial frame out padded with silence.

While the leg is on hold (``not leg.sending_allowed``) the tick is skipped and the audio
stays buffered: what was not sent was not heard, so ``heard_ms`` stays true and the caller
hears the rest when taken off hold.

Non-agent audio (fallback announcements, comfort tones) goes through ``push_leg_audio`` at
the leg's rate with no item id: it is paced and flushed like the rest but never counted as
heard agent audio. The hold signal (``set_hold``, while the upstream is reconnected) is
not buffered: a tick with nothing else to play sends its next frame, so it stops the
moment agent audio arrives.

``longest_silence_s()`` is the longest run of ticks that sent the caller nothing audible
(nothing, or silence) since it was last read: the dead air a caller heard.
"""

from __future__ import annotations

import array
import asyncio
import math
from collections import deque
from collections.abc import Callable
from typing import Any

from bridge.call.leg import MediaLeg, Underrun
from bridge.codecs import g711
from bridge.codecs.framing import PlayoutBuffer
from bridge.codecs.resample import StreamResampler, outbound_resampler

#: Bytes of upstream audio per millisecond for each session audio format
#: (docs/realtime-protocol.md §7).
BYTES_PER_MS = {"pcm16": 48, "pcmu": 8, "pcma": 8}
_SILENCE = Underrun.SILENCE
_KEEP_ITEMS = 8           # heard/received counters kept for this many recent items
#: Comfort tone while waiting on the upstream: a soft beep so the line is never dead > 2 s.
COMFORT_EVERY_TICKS = 75  # 1.5 s
COMFORT_TONE_MS = 200


def tone(freq_hz: float, ms: int, rate: int, dbfs: float = -20.0) -> bytes:
    """A sine tone as PCM16LE (short fades so it does not click)."""
    n = rate * ms // 1000
    amp = 32767.0 * 10 ** (dbfs / 20.0)
    fade = max(1, rate // 200)  # 5 ms
    out = array.array("h", bytes(2 * n))
    for i in range(n):
        g = min(1.0, i / fade, (n - 1 - i) / fade)
        out[i] = int(amp * g * math.sin(2 * math.pi * freq_hz * i / rate))
    return out.tobytes()


class Playout:
    """Outbound path of one call; subscribe it to the media clock."""

    def __init__(self, leg: MediaLeg, *, audio_format: str = "pcm16",
                 on_first_frame: Callable[[str, float], None] | None = None,
                 on_active: Callable[[bool], None] | None = None,
                 on_span: Callable[[str, float, float], None] | None = None,
                 on_hold: Callable[[bool], None] | None = None) -> None:
        self.leg = leg
        self.rate = leg.sample_rate
        self.frame_samples = leg.frame_samples
        self.audio_format = audio_format
        self._bytes_per_ms = BYTES_PER_MS[audio_format]
        self._g711 = audio_format if audio_format in ("pcmu", "pcma") else ""
        #: G.711 passthrough: deltas are already the leg's payload (no decode, no resample)
        self.passthrough = bool(self._g711) and leg.carry == self._g711
        in_rate = 8000 if self._g711 else 24000
        self._resampler: StreamResampler = (
            outbound_resampler(self.rate) if in_rate == 24000
            else StreamResampler(in_rate, self.rate))
        if self.passthrough:
            self._buf = PlayoutBuffer(self.rate, leg.frame_ms, sample_width=1,
                                      silence=g711.SILENCE_BYTE[self._g711])
        else:
            self._buf = PlayoutBuffer(self.rate, leg.frame_ms)
        self._width = 1 if self.passthrough else 2
        # (item id or None, samples not yet handed to the leg), oldest first
        self._segments: deque[list[Any]] = deque()
        self._pending = 0                      # samples buffered (ours, exact)
        self._open = False                     # a response is streaming into us
        self._draining = False                 # end of response: let the padded tail out
        self.heard: dict[str, int] = {}        # item -> samples handed to the leg
        self.received: dict[str, int] = {}     # item -> upstream bytes received
        self.last_item: str | None = None      # last assistant item pushed
        self._started: set[str] = set()        # items whose first frame went out
        self._on_first_frame = on_first_frame
        self._on_active = on_active
        # The run of one item's audio going out without a break: (item, start, end) in
        # clock seconds, reported through on_span when it closes.
        self._on_span = on_span
        self._span_item: str | None = None
        self._span_start = 0.0
        self._span_end = 0.0
        self.active = False                    # audio is going out (not underrun)
        self._waiters: list[asyncio.Future[None]] = []
        self.comfort = False
        self._idle_ticks = 0
        self._comfort_pcm = b""
        self._hold: list[bytes] | None = None
        self._hold_at = 0
        self._on_hold = on_hold
        self._held = False                     # the leg is on hold (the far end's)
        self._silent_run = 0                   # ticks in a row with nothing audible
        self._longest_silent = 0
        self.frames_out = 0
        self.underruns = 0
        #: barge-in seen -> first tick that handed the leg no agent audio (seconds)
        self.stop_latencies: list[float] = []
        self._barge_seen: float | None = None
        #: called once every tick with the frame handed to the leg, or None when nothing
        #: was (the call's recording), if set
        self.tap: Callable[[bytes | None], None] | None = None

    # -- input ---------------------------------------------------------------------------
    def push(self, item_id: str, audio: bytes) -> None:
        """An audio delta of assistant item ``item_id`` in the session's format."""
        self.received[item_id] = self.received.get(item_id, 0) + len(audio)
        if item_id != self.last_item:
            self.last_item = item_id
            self._prune()
        self._open = True
        self._draining = False
        if self.passthrough:
            self._add(item_id, audio)
            return
        pcm = g711.decode(self._g711, audio) if self._g711 else audio
        self._add(item_id, self._resampler.process(pcm))

    def end_of_response(self) -> None:
        """The response is done: flush the resampler tail and let the last frame out."""
        if self._open and not self.passthrough:
            self._add(self.last_item, self._resampler.flush())
            self._resampler.reset()
        self._open = False
        self._draining = True
        self._check_drained()

    def push_leg_audio(self, pcm: bytes) -> None:
        """Non-agent audio (announcement, tones): PCM16 at the leg's rate."""
        self._draining = True
        self._add(None, g711.encode(self._g711, pcm) if self.passthrough else pcm)

    def _add(self, item_id: str | None, data: bytes) -> None:
        w = self._width
        n = len(data) // w
        if n == 0:
            return
        self._buf.push(data[: w * n])
        self._pending += n
        if self._segments and self._segments[-1][0] == item_id:
            self._segments[-1][1] += n
        else:
            self._segments.append([item_id, n])

    # -- barge-in ------------------------------------------------------------------------
    @property
    def buffered_ms(self) -> float:
        return self._pending * 1000.0 / self.rate

    @property
    def playing(self) -> bool:
        """Agent audio is buffered or still streaming in."""
        return self._pending > 0 or self._open

    def current_item(self) -> str | None:
        """The assistant item the caller is hearing or about to hear (None: silent)."""
        for item_id, _ in self._segments:
            if item_id is not None:
                return str(item_id)
        return self.last_item if self._open else None

    def heard_ms(self, item_id: str) -> int:
        # The resampler's flushed tail (a few ms of filter ring-out) is not the item's audio:
        # never report more heard than was received.
        return min(self.heard.get(item_id, 0) * 1000 // self.rate, self.received_ms(item_id))

    def received_ms(self, item_id: str) -> int:
        return self.received.get(item_id, 0) // self._bytes_per_ms

    def barge_in(self, seen_at: float | None = None) -> tuple[str | None, int, int, int]:
        """Stop agent audio now: ``(item_id, heard_ms, received_ms, dropped_ms)``.

        ``seen_at`` (clock time the barge-in reached the bridge) is used to measure when
        the leg stopped getting agent audio (``stop_latencies``).
        """
        item = self.current_item()
        if seen_at is not None and self._pending and len(self.stop_latencies) < 1000:
            self._barge_seen = seen_at
        dropped = self._pending * 1000 // self.rate
        self.close_span()
        self._buf.clear()
        self._resampler.reset()
        self._segments.clear()
        self._pending = 0
        self._open = False
        self._draining = False
        self._check_drained()
        if item is None:
            return None, 0, 0, dropped
        return item, self.heard_ms(item), self.received_ms(item), dropped

    # -- clock ---------------------------------------------------------------------------
    def on_tick(self, now: float) -> None:
        # Once per call per 20 ms for every call in the process: locals, no property or
        # method indirection on the common paths (a frame out; nothing to play).
        if self._barge_seen is not None:
            self.stop_latencies.append(now - self._barge_seen)
            self._barge_seen = None
        leg = self.leg
        if not leg.sending_allowed:
            if self._span_item is not None:
                self.close_span()
            if not self._held:
                self._held = True
                if self._on_hold is not None:
                    self._on_hold(True)
            if self.tap is not None:
                self.tap(None)
            return
        if self._held:
            self._held = False
            if self._on_hold is not None:
                self._on_hold(False)
        pending = self._pending
        fs = self.frame_samples
        if pending >= fs or (pending and self._draining):
            frame = self._buf.pop_frame(partial=True)
            if frame is not None:
                self._account(pending if pending < fs else fs, now)
                self.frames_out += 1
                leg.write_frame(frame)
                if self.tap is not None:
                    self.tap(frame)
                return
        # Underrun (the idle call's every tick).
        self.underruns += 1
        if self.active:
            self.close_span()
            self.active = False
            if self._on_active is not None:
                self._on_active(False)
        if self._waiters:
            self._check_drained()
        hold = self._hold
        if hold is not None:
            leg.write_frame(hold[self._hold_at])
            if self.tap is not None:
                self.tap(hold[self._hold_at])
            self._hold_at = (self._hold_at + 1) % len(hold)
            self._silent_run = 0
            return
        self._silent_run += 1
        self._longest_silent = max(self._longest_silent, self._silent_run)
        # Counted whether or not comfort is on: a wait that starts after a silence
        # already counts that silence toward the 1.5 s.
        self._idle_ticks += 1
        if self.comfort and self._idle_ticks >= COMFORT_EVERY_TICKS:
            self._comfort()
        if leg.underrun is _SILENCE:
            leg.write_silence()
        if self.tap is not None:
            self.tap(None)

    def _comfort(self) -> None:
        self._idle_ticks = 0
        if not self._comfort_pcm:
            self._comfort_pcm = tone(440.0, COMFORT_TONE_MS, self.rate, -24.0)
        self.push_leg_audio(self._comfort_pcm)

    def set_hold(self, pcm: bytes | None) -> None:
        """Loop ``pcm`` (PCM16 at the leg's rate) whenever there is nothing else to play;
        None stops it."""
        if pcm is None:
            self._hold = None
            return
        data = g711.encode(self._g711, pcm) if self.passthrough else pcm
        step = self.frame_samples * self._width
        frames = [data[at:at + step] for at in range(0, len(data) - step + 1, step)]
        self._hold, self._hold_at = (frames or None), 0

    @property
    def holding(self) -> bool:
        return self._hold is not None

    def longest_silence_s(self, reset: bool = True) -> float:
        """The longest run of ticks with nothing audible for the caller since the last
        reset, in seconds."""
        ticks = self._longest_silent
        if reset:
            self._longest_silent = self._silent_run
        return ticks * self.frame_samples / self.rate

    def _account(self, samples: int, now: float) -> None:
        self._pending -= samples
        self._idle_ticks = 0
        self._silent_run = 0
        if not self.active:
            self.active = True
            if self._on_active is not None:
                self._on_active(True)
        segs = self._segments
        pos = 0                                # samples of this frame already credited
        while samples > 0 and segs:
            seg = segs[0]
            take = min(samples, seg[1])
            item = seg[0]
            if item is not None:
                if item not in self._started:
                    self._started.add(item)
                    if self._on_first_frame is not None:
                        self._on_first_frame(item, now)
                self.heard[item] = self.heard.get(item, 0) + take
                if item != self._span_item:
                    self.close_span()
                    self._span_item = item
                    self._span_start = now + pos / self.rate
                self._span_end = now + (pos + take) / self.rate
            elif self._span_item is not None:
                self.close_span()
            seg[1] -= take
            samples -= take
            pos += take
            if seg[1] == 0:
                segs.popleft()
        if self._pending == 0:
            self._check_drained()

    def close_span(self) -> None:
        """Report the item being played as a finished span (underrun, hold, barge-in,
        another item, the end of the call)."""
        item = self._span_item
        if item is None:
            return
        self._span_item = None
        if self._on_span is not None:
            self._on_span(item, self._span_start, self._span_end)

    # -- drained -------------------------------------------------------------------------
    def _check_drained(self) -> None:
        if self._pending == 0 and not self._open and self._waiters:
            waiters, self._waiters = self._waiters, []
            for w in waiters:
                if not w.done():
                    w.set_result(None)

    def drained(self) -> asyncio.Future[None] | None:
        """A future done once everything queued has been handed to the leg (None: it
        already has). The caller bounds the wait on its clock (``timers.wait_within``)."""
        if self._pending == 0 and not self._open:
            return None
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        return fut

    def _prune(self) -> None:
        for d in (self.heard, self.received):
            while len(d) > _KEEP_ITEMS:
                del d[next(iter(d))]
        if len(self._started) > 4 * _KEEP_ITEMS:
            self._started = {k for k in self._started if k in self.received}


__all__ = ["BYTES_PER_MS", "Playout", "tone"]
