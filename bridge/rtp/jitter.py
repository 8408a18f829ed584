"""Jitter buffer for one inbound RTP audio stream (sans-I/O).

Theory of operation
-------------------
Every millisecond spent here delays the moment the model hears the caller, so this buffer
does not hold a fixed playout depth. It is *pass-through until reordering is seen*:

* A packet carrying the next expected sequence number, with nothing held, is released at
  once (:meth:`push` then :meth:`pop` in the same datagram callback). On a clean network
  the buffer adds no delay at all.
* A packet from beyond a gap is held. Held packets wait at most ``wait`` seconds (measured
  from the arrival of the first packet after the gap) for the missing ones. If a missing
  packet arrives in time it was reordering: it and everything held behind it are released
  in order. If the wait runs out the gap is loss: it is concealed with silence frames of
  the lost packets' size (PLC = silence, counted in ``lost``), and the held packets follow.
  No packet is ever held longer than ``wait`` after its own arrival.
* ``wait`` adapts: it starts at ``depth_ms`` and grows by ``step_ms`` (up to
  ``max_depth_ms``) each time a packet arrives after its gap was already concealed
  (``late``), and shrinks by ``step_ms`` (down to ``min_depth_ms``) after
  ``decay_packets`` packets without one. Its cost is paid only at a gap, never in steady
  state, so a generous ceiling is cheap.

Why not a classic clocked playout buffer: it delays every frame by its depth (40-60 ms),
which is exactly the latency the model's turn detection and barge-in pay twice over.
Downstream (the Realtime input buffer) does not need isochronous frames, only ordered
ones, so playout is clocked by packet arrival. The only clock is the gap deadline, exposed
as :meth:`get_timer` (aioquic style); the adapter arms a timer only while a gap is open,
i.e. almost never.

Sequence numbers are extended to an unbounded counter (16-bit wrap-around handled by
signed modular difference); timestamps are compared modulo 2**32. A jump of more than
``MAX_DROPOUT`` ahead or ``MAX_MISORDER`` behind (RFC 3550 Appendix A.1 uses the same
bounds) is a new stream: the buffer resynchronises instead of concealing. The session
also calls :meth:`reset` when the SSRC changes.

Payloads are G.711 (one octet per sample): concealment frames are ``silence_byte``
repeated, so the decoder downstream needs no special case. A slot with an empty payload
(a DTMF or comfort-noise packet sharing the sequence space) is consumed without output.
"""

from __future__ import annotations

from collections import deque

MAX_DROPOUT = 3000
MAX_MISORDER = 100
_MASK64 = (1 << 64) - 1


class JitterBuffer:
    """Reorder, drop duplicates, conceal loss; see the module docstring."""

    def __init__(self, *, clock_rate: int = 8000, frame_samples: int = 160,
                 silence_byte: int = 0xFF, depth_ms: float = 40.0,
                 min_depth_ms: float = 20.0, max_depth_ms: float = 60.0,
                 step_ms: float = 10.0, adaptive: bool = True, decay_packets: int = 500,
                 max_held: int = 50, max_conceal_ms: float = 1000.0) -> None:
        self.clock_rate = clock_rate
        self.silence_byte = silence_byte
        self.wait = depth_ms / 1000.0
        self.min_wait = min_depth_ms / 1000.0
        self.max_wait = max_depth_ms / 1000.0
        self.step = step_ms / 1000.0
        self.adaptive = adaptive
        self.decay_packets = decay_packets
        self.max_held = max_held
        self.max_conceal = int(max_conceal_ms * clock_rate / 1000)
        self._default_samples = frame_samples
        # counters
        self.delivered = 0
        self.lost = 0
        self.concealed_samples = 0
        self.late = 0
        self.duplicates = 0
        self.reordered = 0
        self.resyncs = 0
        self._out: deque[bytes] = deque()
        self._held: dict[int, tuple[int, bytes, float]] = {}
        #: Payloads ready for playout, in order (what :meth:`pop` hands out). The adapter's
        #: datagram callback drains it directly: one deque per packet instead of two method
        #: calls per packet is measurable at a hundred calls.
        self.ready = self._out
        #: Packets held behind an open gap, by extended sequence number; empty (falsy) in
        #: steady state, so the adapter can skip :meth:`release` and :meth:`get_timer`.
        self.holding = self._held
        self._start()

    def _start(self) -> None:
        self._ext: int | None = None      # extended sequence number expected next
        self._next_ts = 0                 # timestamp expected next
        self._last_samples = self._default_samples
        self._mask = 0                    # bit k set: packet (expected - 1 - k) was delivered
        self._since_late = 0
        self._held.clear()                # cleared, not replaced: ``holding`` aliases it

    def reset(self) -> None:
        """Forget the stream (new SSRC): release what is held, in order, then start over."""
        for ext in sorted(self._held):
            payload = self._held[ext][1]
            if payload:
                self._out.append(payload)
        self._start()

    @property
    def held(self) -> int:
        return len(self._held)

    def push(self, sequence: int, timestamp: int, payload: bytes, now: float) -> None:
        """Offer one packet (an empty payload consumes its slot without output)."""
        ext = self._ext
        if ext is None:
            self._ext = ext = sequence
            self._next_ts = timestamp
        delta = ((sequence - ext + 0x8000) & 0xFFFF) - 0x8000
        if delta == 0 and not self._held:
            self._deliver(timestamp, payload)             # the steady-state path
            return
        if delta < 0:
            if -delta > MAX_MISORDER:
                self._resync(sequence, timestamp, payload)
            elif -delta <= 64 and (self._mask >> (-delta - 1)) & 1:
                self.duplicates += 1
            else:
                self._late()
            return
        if delta > MAX_DROPOUT:
            self._resync(sequence, timestamp, payload)
            return
        if ext + delta in self._held:
            self.duplicates += 1
            return
        self._held[ext + delta] = (timestamp, payload, now)
        if delta == 0:
            self.reordered += 1
        self._release(now)

    def pop(self, now: float) -> bytes | None:
        """The next payload ready for playout (or a concealment frame), else None."""
        if self._held:
            self._release(now)
        out = self._out
        return out.popleft() if out else None

    def release(self, now: float) -> None:
        """Move what the open gap no longer holds back (by ``now``) to :attr:`ready`."""
        if self._held:
            self._release(now)

    def get_timer(self) -> float | None:
        """When :meth:`pop` must be called again to conceal an open gap (None: no gap)."""
        if not self._held:
            return None
        return min(entry[2] for entry in self._held.values()) + self.wait

    # -- internals -----------------------------------------------------------------

    def _deliver(self, timestamp: int, payload: bytes) -> None:
        assert self._ext is not None
        self._ext += 1
        self._mask = ((self._mask << 1) | 1) & _MASK64
        self.delivered += 1
        if payload:
            self._out.append(payload)
            self._last_samples = len(payload)
            self._next_ts = (timestamp + len(payload)) & 0xFFFFFFFF
        if self.adaptive:
            self._since_late += 1
            if self._since_late >= self.decay_packets:
                self._since_late = 0
                self.wait = max(self.min_wait, self.wait - self.step)

    def _release(self, now: float) -> None:
        held = self._held
        while held:
            ext = self._ext
            assert ext is not None
            entry = held.pop(ext, None)
            if entry is not None:
                self._deliver(entry[0], entry[1])
                continue
            # The packet held longest decides: it waited ``wait`` for the head gap.
            if (now < min(entry[2] for entry in held.values()) + self.wait
                    and len(held) <= self.max_held):
                return
            first = min(held)
            self._conceal(first - ext, held[first][0])

    def _conceal(self, missing: int, next_ts: int) -> None:
        """Fill ``missing`` lost packets with silence sized from the timestamp gap."""
        gap = (next_ts - self._next_ts) & 0xFFFFFFFF
        per = gap // missing if 0 < gap <= self.max_conceal else self._last_samples
        per = min(per, self.max_conceal // missing) if per * missing > self.max_conceal else per
        silence = bytes((self.silence_byte,)) * per
        for _ in range(missing):
            if per:
                self._out.append(silence)
        assert self._ext is not None
        self._ext += missing
        self._mask = (self._mask << missing) & _MASK64
        self.lost += missing
        self.concealed_samples += per * missing
        self._next_ts = (self._next_ts + per * missing) & 0xFFFFFFFF

    def _late(self) -> None:
        self.late += 1
        if self.adaptive:
            self._since_late = 0
            self.wait = min(self.max_wait, self.wait + self.step)

    def _resync(self, sequence: int, timestamp: int, payload: bytes) -> None:
        self.resyncs += 1
        self.reset()
        self._ext = sequence
        self._next_ts = timestamp
        self._deliver(timestamp, payload)


__all__ = ["MAX_DROPOUT", "MAX_MISORDER", "JitterBuffer"]
