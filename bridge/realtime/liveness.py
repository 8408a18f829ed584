"""Is the upstream alive? Keepalive and watchdog for one Realtime session, sans-I/O.

Theory of operation
-------------------
A Realtime upstream can hang with its TCP connection open (a stopped process, a stuck
proxy). Nothing then closes the socket, and the library's own keepalive (20 s ping + 20 s
timeout) is far too slow for a phone call. ``Liveness`` decides, from the times it is
told about, when to ping and when to declare the session hung; the client's adapter reads
the clock, sends the ping and drops the socket (``check(now)`` -> ``Action``):

* **keepalive**: any bytes received (an event, a pong) prove the socket is alive. After
  ``ping_after_s`` with nothing received a WebSocket ping is due (again every
  ``ping_after_s``); after ``dead_after_s`` with nothing received the session is hung. A
  live server answers a ping within a round trip, so a quiet but healthy session never
  reaches ``dead_after_s``.
* **watchdog**: a peer that answers pings but whose model is stuck. While the client waits
  for the server to act -- a ``response.create`` sent, a caller turn the server will answer,
  a response in progress -- a *server event* (not a pong) is due within
  ``answer_within_s``; none means hung.

Detection time is at most ``dead_after_s`` plus one check interval (the adapter checks
every ``check_every_s``): 2.25 s with the defaults, inside the 3 s a caller may wait
before the bridge acts.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


@dataclass(frozen=True)
class LivenessPolicy:
    #: ping when nothing was received for this long
    ping_after_s: float = 0.5
    #: hung when nothing at all (not even a pong) was received for this long
    dead_after_s: float = 2.0
    #: hung when a server event we wait for does not come within this long
    answer_within_s: float = 5.0
    #: how often the adapter calls ``check``
    check_every_s: float = 0.25

    def __post_init__(self) -> None:
        if not 0 < self.ping_after_s < self.dead_after_s:
            raise ValueError("need 0 < ping_after_s < dead_after_s")
        if self.answer_within_s <= 0 or self.check_every_s <= 0:
            raise ValueError("answer_within_s and check_every_s must be positive")


class Action(enum.Enum):
    NOTHING = "nothing"
    PING = "ping"
    HUNG_KEEPALIVE = "keepalive"     # no bytes at all: the socket is dead
    HUNG_WATCHDOG = "watchdog"       # pongs but no answer: the service is stuck


class Liveness:
    """The keepalive and watchdog of one session. Every method takes ``now`` (seconds)."""

    __slots__ = ("_expect_since", "_last_ping", "_last_rx", "policy", "what")

    def __init__(self, policy: LivenessPolicy, now: float) -> None:
        self.policy = policy
        self._last_rx = now
        self._last_ping = now
        self._expect_since: float | None = None
        #: what the watchdog waits for (for the log line)
        self.what = ""

    def received(self, now: float) -> None:
        """Bytes arrived (any frame, a pong included)."""
        self._last_rx = now

    def expect(self, now: float, what: str) -> None:
        """We wait for the server to act (keeps the earliest start of the wait)."""
        if self._expect_since is None:
            self._expect_since = now
            self.what = what

    def event(self, now: float, *, still_waiting: bool, what: str = "") -> None:
        """A server event arrived; ``still_waiting``: the server has more to do (a
        response in progress), so the next event is due within ``answer_within_s``."""
        self._last_rx = now
        self._expect_since = now if still_waiting else None
        if still_waiting:
            self.what = what

    @property
    def waiting(self) -> bool:
        return self._expect_since is not None

    def silent_for(self, now: float) -> float:
        return now - self._last_rx

    def check(self, now: float) -> Action:
        p = self.policy
        quiet = now - self._last_rx
        if quiet >= p.dead_after_s:
            return Action.HUNG_KEEPALIVE
        since = self._expect_since
        if since is not None and now - since >= p.answer_within_s:
            return Action.HUNG_WATCHDOG
        if quiet >= p.ping_after_s and now - self._last_ping >= p.ping_after_s:
            self._last_ping = now
            return Action.PING
        return Action.NOTHING


__all__ = ["Action", "Liveness", "LivenessPolicy"]
