"""The outbound playout buffer: exact 20 ms frames out of chunks of any size.

Theory of operation
-------------------
Audio reaches a call in chunks whose size nobody controls (a Realtime delta is whatever
the service sent; a leg may deliver 10, 20 or 30 ms). Everything downstream wants exact
frames: RTP packets of one ptime, appends of a fixed duration, one frame per clock tick.

``PlayoutBuffer`` holds outbound audio that arrived ahead of real time and hands out one
frame per tick. It counts what went in and what came out in milliseconds: the count out
is what the caller actually heard (``heard_ms`` for truncation on barge-in), the count
dropped by ``clear()`` is what was never played.

It keeps one ``bytearray`` and a read offset: a pop copies one frame, never the buffer.
The consumed front is discarded once it is larger than what remains (amortised O(1)).
"""

from __future__ import annotations

__all__ = ["PlayoutBuffer"]

#: Anything a chunk of audio may arrive as.
Chunk = bytes | bytearray | memoryview


class _ByteQueue:
    """A FIFO of bytes: append at the end, take from the front without moving the rest."""

    __slots__ = ("_buf", "_off")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._off = 0

    def __len__(self) -> int:
        return len(self._buf) - self._off

    def append(self, data: Chunk) -> None:
        self._buf += data

    def take(self, n: int) -> bytes:
        """Remove and return the first ``n`` bytes (fewer if fewer are held)."""
        out = bytes(self._buf[self._off:self._off + n])
        self._off += len(out)
        # Compact only when the dead front outweighs the live part: each byte is moved at
        # most once on average, whatever the pattern of pushes and pops.
        if self._off > len(self._buf) - self._off:
            del self._buf[:self._off]
            self._off = 0
        return out

    def clear(self) -> int:
        """Drop everything; return how many bytes were dropped."""
        dropped = len(self)
        self._buf = bytearray()
        self._off = 0
        return dropped


class PlayoutBuffer:
    """Outbound audio waiting for its tick, counted in milliseconds.

    It holds PCM16, or encoded G.711 in passthrough.

    ``ms_in`` counts everything pushed, ``ms_out`` the real audio handed out (padding added
    by ``pop_frame(partial=True)`` is silence, not the response, and is not counted), and
    ``ms_dropped`` what ``clear()`` threw away; ``ms_in == ms_out + ms_dropped +
    buffered_ms`` always holds.
    """

    def __init__(self, sample_rate: int, frame_ms: int = 20, *, sample_width: int = 2,
                 silence: int = 0) -> None:
        if sample_rate <= 0 or frame_ms <= 0 or sample_rate * frame_ms % 1000:
            raise ValueError(f"no whole-sample {frame_ms} ms frame at {sample_rate} Hz")
        self.sample_rate = sample_rate
        self.frame_ms = frame_ms
        # PCM16 by default; G.711 passthrough holds encoded bytes (width 1, silence 0xFF
        # for mu-law, 0xD5 for A-law) so a padded tail is silence in that encoding too.
        self.frame_bytes = sample_rate * frame_ms // 1000 * sample_width
        self._bytes_per_ms = sample_rate * sample_width / 1000
        self._silence = silence
        self._q = _ByteQueue()
        self.bytes_in = 0
        self.bytes_out = 0
        self.bytes_dropped = 0

    def _ms(self, n: int) -> float:
        return n / self._bytes_per_ms

    @property
    def ms_in(self) -> float:
        return self._ms(self.bytes_in)

    @property
    def ms_out(self) -> float:
        return self._ms(self.bytes_out)

    @property
    def ms_dropped(self) -> float:
        return self._ms(self.bytes_dropped)

    @property
    def buffered_ms(self) -> float:
        return self._ms(len(self._q))

    @property
    def buffered_bytes(self) -> int:
        return len(self._q)

    def push(self, pcm: Chunk) -> None:
        """Queue audio (any length) behind what is already waiting."""
        self._q.append(pcm)
        self.bytes_in += len(pcm)

    def pop_frame(self, partial: bool = False) -> bytes | None:
        """Exactly one frame, or None when less than a frame is held.

        With ``partial=True`` a short tail (the end of a response) comes out padded with
        silence instead; None only when nothing at all is held.
        """
        held = len(self._q)
        n = self.frame_bytes
        if held >= n:
            self.bytes_out += n
            return self._q.take(n)
        if not partial or held == 0:
            return None
        tail = self._q.take(held)
        self.bytes_out += held
        if self._silence:
            return tail + bytes([self._silence]) * (n - held)
        return tail + bytes(n - held)

    def clear(self) -> int:
        """Drop everything held (barge-in); return the whole milliseconds dropped."""
        dropped = self._q.clear()
        self.bytes_dropped += dropped
        return int(self._ms(dropped))
