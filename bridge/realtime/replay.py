"""The caller's audio kept across an upstream outage, to be replayed to the new session.

Theory of operation
-------------------
When the upstream goes away mid-call, what the caller says meanwhile -- and what they said
just before, into a session that was already hung -- has reached no model. Without it the
caller would have to repeat themselves. ``ReplayBuffer`` keeps the audio handed to the
upstream (sent or not), measured in bytes of the session's input format, so it needs no
clock: caller audio arrives in real time, bytes *are* time.

It keeps the audio after an **anchor**, bounded by ``max_bytes`` (the last 15 s by default):

* when a caller turn is open (``turn_started``: the server heard speech start and has not
  answered yet), from ``turn_margin`` bytes before where the turn was seen starting (its
  start is older than the event that reported it: prefix padding, the round trip) -- a
  turn cut by the outage is replayed whole;
* otherwise from ``margin`` bytes before the last server event (audio still in flight
  when the server spoke): audio the server has not visibly acted on. A healthy
  session's events keep this short; a caller's long silence with no events costs at
  most ``max_bytes``.

After a reconnect, ``take()`` returns the kept audio (oldest first) and starts afresh: the
client appends it to the new session, whose turn detection then hears the turn and answers
it. Sans-I/O: the client calls ``push`` per frame and tells it about server events.
"""

from __future__ import annotations

from collections import deque


class ReplayBuffer:
    __slots__ = ("_chunks", "_first", "_turn", "_total", "anchor", "margin", "max_bytes",
                 "turn_margin")

    def __init__(self, max_bytes: int, margin: int, turn_margin: int | None = None) -> None:
        turn_margin = margin if turn_margin is None else turn_margin
        if min(max_bytes, margin, turn_margin) < 0:
            raise ValueError("max_bytes and the margins must not be negative")
        self.max_bytes = max_bytes
        self.margin = margin
        self.turn_margin = turn_margin
        self._chunks: deque[bytes] = deque()
        self._first = 0            # stream position of the first kept byte
        self._total = 0            # stream position after the last byte pushed
        self.anchor = 0            # keep from here (minus the margin)
        self._turn: int | None = None   # position an unanswered caller turn started

    @property
    def kept(self) -> int:
        return self._total - self._first

    def push(self, data: bytes) -> None:
        """One frame of caller audio, in the session's input format."""
        if self.max_bytes == 0:
            return
        self._chunks.append(data)
        self._total += len(data)
        start = self._keep_from()
        chunks = self._chunks
        while chunks and self._first + len(chunks[0]) <= start:
            self._first += len(chunks.popleft())

    def _keep_from(self) -> int:
        start = self.anchor - self.margin
        if self._turn is not None:
            start = min(start, self._turn - self.turn_margin)
        start = max(start, self._total - self.max_bytes)
        return start + start % 2         # on a sample boundary (PCM16)

    def server_event(self) -> None:
        """The server acted on everything sent so far (as far as we can tell)."""
        self.anchor = self._total

    def turn_started(self) -> None:
        """The server heard the caller start a turn (kept until answered)."""
        if self._turn is None:
            self._turn = self._total

    def turn_answered(self) -> None:
        self._turn = None
        self.anchor = self._total

    def clear(self) -> None:
        """Forget everything kept so far (the caller's buffer was cleared on purpose)."""
        self._chunks.clear()
        self._first = self.anchor = self._total
        self._turn = None

    def take(self) -> list[bytes]:
        """The audio to replay, oldest first (trimmed to the anchor); then start afresh."""
        start = self._keep_from()
        out: list[bytes] = []
        pos = self._first
        for chunk in self._chunks:
            end = pos + len(chunk)
            if end > start:
                out.append(chunk if pos >= start else chunk[start - pos:])
            pos = end
        self._chunks.clear()
        self._first = self._total
        self.anchor = self._total
        self._turn = None
        return out


__all__ = ["ReplayBuffer"]
