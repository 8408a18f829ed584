"""Drain what a jitter buffer released, cut it into exact frames, carry the remainder.

Theory of operation
-------------------
Both legs that receive G.711 RTP (the SIP leg's :class:`bridge.rtp.endpoint.RtpEndpoint`
and the WebRTC leg's receive tap) do the same thing in their packet callback: move what
the jitter buffer no longer holds back to its ``ready`` deque, convert each payload
(decode to PCM16, or nothing when the leg carries G.711 as is), cut the result into
frames of exactly one frame's bytes for the sink, keep the remainder for the next payload
(a 30 ms packet gives one frame and half of the next), and, only while a sequence gap is
open, arm one timer at the buffer's deadline to conceal the gap if the packet never comes.

:class:`Reframer` is the sans-I/O cutting (bytes in, frames out through a callback, no
clock). :class:`FrameDrain` adds the jitter buffer and the gap timer for an asyncio loop.
Before each frame goes to the sink the drain calls ``poll`` (the media clock's
``MediaClock.poll``): datagrams arrive in bursts of dozens per loop pass, and a clock tick
that came due meanwhile goes out there rather than after the burst.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

from bridge.rtp.jitter import JitterBuffer

#: Payload -> what crosses the seam (a G.711 decoder), or None to pass payloads as is.
Convert = Callable[[bytes], bytes] | None
Deliver = Callable[[bytes], object]
Poll = Callable[[], object]


def no_poll() -> None:
    """The default ``poll`` of a leg no media clock was wired to."""
    return None


class Reframer:
    """Chunks of any length -> frames of exactly ``size`` bytes (the rest is carried)."""

    __slots__ = ("_partial", "size")

    def __init__(self, size: int) -> None:
        self.size = size
        self._partial = b""

    @property
    def pending(self) -> int:
        """Bytes carried over to the next chunk."""
        return len(self._partial)

    def reset(self, size: int | None = None) -> None:
        """Drop the carried remainder (and change the frame size)."""
        self._partial = b""
        if size is not None:
            self.size = size

    def push(self, data: bytes, deliver: Deliver, poll: Poll = no_poll) -> None:
        """Cut ``data`` (after what was carried) into frames for ``deliver``."""
        size = self.size
        if not self._partial and len(data) == size:
            poll()
            deliver(data)                      # one frame per packet: the common case
            return
        data = self._partial + data
        at = 0
        while len(data) - at >= size:
            poll()
            deliver(data[at:at + size])
            at += size
        self._partial = data[at:]

    def drain(self, ready: deque[bytes], convert: Convert, deliver: Deliver,
              poll: Poll = no_poll) -> None:
        """Empty ``ready`` (payloads in order), each converted, into frames."""
        size = self.size
        while ready:
            data = ready.popleft()
            if convert is not None:
                data = convert(data)
            if not self._partial and len(data) == size:
                poll()
                deliver(data)                  # inlined ``push``: this runs per packet
                continue
            self.push(data, deliver, poll)


class FrameDrain:
    """A :class:`Reframer` fed from a jitter buffer, with the gap timer on ``loop``.

    ``on_deadline`` is called (from the loop) when an open gap's deadline passes: the owner
    then calls :meth:`drain` again with the current time.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, size: int,
                 on_deadline: Callable[[], None]) -> None:
        self.reframer = Reframer(size)
        self._loop = loop
        self._on_deadline = on_deadline
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0

    def drain(self, jitter: JitterBuffer, now: float, convert: Convert, deliver: Deliver,
              poll: Poll = no_poll) -> None:
        """Deliver every payload ``jitter`` releases by ``now``; arm the gap timer.

        Works on the buffer's ``ready`` deque and ``holding`` dict directly rather than
        through ``pop``: this runs for every packet of every call.
        """
        if jitter.holding:
            jitter.release(now)
        ready = jitter.ready
        if ready:
            self.reframer.drain(ready, convert, deliver, poll)
        if not jitter.holding:
            return                             # no gap open: no timer (steady state)
        deadline = jitter.get_timer()
        if deadline is not None and (self._timer is None or self._timer_at != deadline):
            if self._timer is not None:
                self._timer.cancel()
            self._timer_at = deadline
            self._timer = self._loop.call_at(deadline, self._fire)

    def _fire(self) -> None:
        self._timer = None
        self._on_deadline()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


__all__ = ["Convert", "Deliver", "FrameDrain", "Poll", "Reframer", "no_poll"]
