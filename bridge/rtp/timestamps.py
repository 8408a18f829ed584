"""The sender's RTP timestamp rule, shared by the SIP and WebRTC legs (sans-I/O).

Theory of operation
-------------------
Within a talkspurt each packet's timestamp is the previous one plus the samples it
carried: the media clock hands one frame per 20 ms tick, and a late tick must not bend the
far end's playout. A new talkspurt starts with the first packet, after a hold, after a
DTMF event, and after a pause in sending longer than ``gap_s``; its first packet carries
the marker bit (RFC 3551 §4.1) and its timestamp follows the real time elapsed since the
last packet (RFC 3550 §5.1: the timestamp "reflects the sampling instant"), never going
backwards, so the far end's playout stays aligned with what it hears.

``RtpTimeline`` is that rule and its state; :meth:`stamp` is called once per packet with
``now`` and the packet's samples. The first timestamp is random (RFC 3550 §5.1).
"""

from __future__ import annotations


class RtpTimeline:
    """Timestamps and marker bits of one outbound RTP stream; see the module docstring."""

    __slots__ = ("_last_samples", "_last_sent", "clock_rate", "gap", "next_ts", "talkspurt")

    def __init__(self, first_ts: int, clock_rate: int = 8000, gap_s: float = 0.1) -> None:
        #: The timestamp the next packet gets if it continues the talkspurt.
        self.next_ts = first_ts & 0xFFFFFFFF
        self.clock_rate = clock_rate
        self.gap = gap_s
        #: True: the next packet starts a talkspurt (marker, timestamp from real time).
        self.talkspurt = True
        self._last_sent: float | None = None
        self._last_samples = 0

    def peek(self, now: float) -> tuple[int, bool]:
        """Timestamp for a packet sent at ``now``, and whether it starts a talkspurt."""
        last = self._last_sent
        if last is None:
            return self.next_ts, True
        elapsed = now - last
        if self.talkspurt or elapsed > self.gap:
            extra = round(elapsed * self.clock_rate) - self._last_samples
            return (self.next_ts + max(0, extra)) & 0xFFFFFFFF, True
        return self.next_ts, False

    def stamp(self, now: float, samples: int) -> tuple[int, bool]:
        """Timestamp and marker of a packet of ``samples`` sent at ``now``; moves on."""
        last = self._last_sent
        if last is not None and not self.talkspurt and now - last <= self.gap:
            ts, marker = self.next_ts, False       # mid-talkspurt: the common case
        else:
            ts, marker = self.peek(now)
        self.talkspurt = False
        self.next_ts = (ts + samples) & 0xFFFFFFFF
        self._last_sent = now
        self._last_samples = samples
        return ts, marker

    def resume_after(self, end_ts: int, now: float) -> None:
        """Something else used the timeline up to ``end_ts`` at ``now`` (a DTMF event):
        the next packet starts a talkspurt after it, never before it."""
        if ((end_ts - self.next_ts) & 0xFFFFFFFF) < 0x80000000:
            self.next_ts = end_ts
        self.talkspurt = True
        self._last_sent = now
        self._last_samples = 0


__all__ = ["RtpTimeline"]
