"""How the Realtime client notices a dead upstream and how hard it tries to get one back.

``RecoveryPolicy`` is the whole policy of one call's client:

* **reconnect by time**: after a session is lost mid-call, a new session is tried at once,
  then again after jittered exponential back-off (``backoff_s`` doubling up to
  ``backoff_max_s``, each delay drawn from its upper half) until ``budget_s`` has passed
  since the loss -- each attempt cut short when the budget runs out -- and then the
  call's fallback runs. A budget of 0
  runs the fallback at once. The caller hears the hold signal meanwhile.
* **connect**: the first session is tried ``connect_attempts`` times (the call bounds the
  wait with its own connect timeout).
* **flapping**: more than ``max_drops`` session losses within ``flap_window_s`` give up even
  though each reconnect succeeds: a session that keeps dying would otherwise keep the
  caller waiting for ever.
* **replay**: up to ``replay_s`` of caller audio kept across an outage
  (:mod:`bridge.realtime.replay`): from ``replay_margin_s`` before the last server event,
  or ``replay_turn_margin_s`` before an unanswered caller turn was reported.
* **liveness**: the keepalive and watchdog (:mod:`bridge.realtime.liveness`).

``SessionWatch`` is the asyncio adapter of ``Liveness`` for one session: a self-rearming
``call_later`` (no task) that pings and, on a hung verdict, hands the reason to the client,
which drops the socket so the ordinary reconnect path takes over. ``Upkeep`` is what the
client keeps across its sessions: the current watch (fed by the socket's bytes and the
server's events) and the replay buffer.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from binascii import b2a_base64
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bridge import metrics
from bridge.internals.websockets import FrameWriter, HookedConnection, abort_now
from bridge.realtime import events as ev
from bridge.realtime.connection import Session
from bridge.realtime.dialects import APPEND_PREFIX, APPEND_SUFFIX
from bridge.realtime.liveness import Action, Liveness, LivenessPolicy
from bridge.realtime.replay import ReplayBuffer

#: Replayed caller audio goes out in events of this many milliseconds.
REPLAY_EVENT_MS = 200


@dataclass(frozen=True)
class RecoveryPolicy:
    budget_s: float = 10.0
    backoff_s: float = 0.2
    backoff_max_s: float = 2.0
    connect_attempts: int = 3
    max_drops: int = 5
    flap_window_s: float = 60.0
    replay_s: float = 15.0
    replay_margin_s: float = 0.3
    replay_turn_margin_s: float = 1.0
    liveness: LivenessPolicy = field(default_factory=LivenessPolicy)

    def __post_init__(self) -> None:
        if self.budget_s < 0 or self.backoff_s < 0 or self.backoff_max_s < 0:
            raise ValueError("budget and back-off must not be negative")
        if min(self.replay_s, self.replay_margin_s, self.replay_turn_margin_s) < 0:
            raise ValueError("replay_s and the replay margins must not be negative")

    def too_many_drops(self, drops: deque[float], now: float) -> bool:
        """Count a session drop at ``now`` in ``drops`` (times of recent drops); True when
        more than ``max_drops`` fall within the flap window."""
        drops.append(now)
        while now - drops[0] > self.flap_window_s:
            drops.popleft()
        return len(drops) > self.max_drops

    def backoff(self, attempt: int) -> float:
        """Delay before attempt ``attempt`` (1-based): the upper half of the doubling
        step, so clients dropped together do not come back together."""
        step = min(self.backoff_s * 2.0 ** (attempt - 1), self.backoff_max_s)
        return step * random.uniform(0.5, 1.0)


#: (how, detail): ``how`` is "keepalive" or "watchdog"
HungCallback = Callable[[str, str], None]


class SessionWatch:
    """Drives one session's ``Liveness`` on the event loop. See the module docstring."""

    def __init__(self, policy: LivenessPolicy, writer: FrameWriter, on_hung: HungCallback,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.liveness = Liveness(policy, clock())
        self._writer = writer
        self._on_hung = on_hung
        self._handle: asyncio.TimerHandle | None = None
        self._loop = asyncio.get_running_loop()
        self._arm()

    def _arm(self) -> None:
        self._handle = self._loop.call_later(self.liveness.policy.check_every_s, self._check)

    def received(self) -> None:
        """Bytes arrived on the socket."""
        self.liveness.received(self._clock())

    def now(self) -> float:
        return self._clock()

    def _check(self) -> None:
        self._handle = None
        live = self.liveness
        now = self._clock()
        action = live.check(now)
        if action is Action.PING:
            self._writer.ping()
        elif action is not Action.NOTHING:
            detail = (f"nothing received for {live.silent_for(now):.1f} s"
                      if action is Action.HUNG_KEEPALIVE else
                      f"no answer to {live.what or 'the last request'} for "
                      f"{live.policy.answer_within_s:.0f} s")
            self._on_hung(action.value, detail)
            return
        self._arm()

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


class Upkeep:
    """The client's watch over its current session and the audio kept for a replay."""

    def __init__(self, log: logging.Logger | logging.LoggerAdapter[Any], *,
                 server_answers: bool) -> None:
        self._log = log
        self._server_answers = server_answers
        self._bytes_per_ms = 48.0
        self.policy = RecoveryPolicy()
        self.replay = ReplayBuffer(0, 0)
        self.current: SessionWatch | None = None

    def configure(self, policy: RecoveryPolicy, bytes_per_ms: float) -> None:
        self.policy = policy
        self._bytes_per_ms = bytes_per_ms
        def size(seconds: float) -> int:
            return int(seconds * 1000 * bytes_per_ms)
        self.replay = ReplayBuffer(size(policy.replay_s), size(policy.replay_margin_s),
                                   size(policy.replay_turn_margin_s))

    def watch(self, conn: Session, on_message: Callable[[], object] | None,
              on_hung: HungCallback) -> None:
        """Watch ``conn`` from now on (the previous session's watch stops): its bytes feed
        the keepalive, then ``on_message`` (the client's preemption hook) runs."""
        self.stop()
        watch = self.current = SessionWatch(self.policy.liveness, conn.writer, on_hung)
        ws = conn.ws
        if isinstance(ws, HookedConnection):
            def hook() -> None:
                watch.received()
                if on_message is not None:
                    on_message()
            ws.hook = hook

    def stop(self) -> None:
        if self.current is not None:
            self.current.stop()
            self.current = None

    def drop_hung(self, conn: Session, how: str, detail: str, kind: str) -> None:
        """Drop ``conn``'s socket as hung (counted, logged); the reader then reconnects."""
        metrics.UPSTREAM_HUNG.labels(kind=kind, how=how).inc()
        self._log.warning("Realtime session %s is hung (%s): %s; dropping it",
                          conn.session_id, how, detail)
        conn.close_reason = f"hung: {detail}"
        abort_now(conn.ws)

    def expect(self, what: str) -> None:
        """We sent something the server must act on."""
        watch = self.current
        if watch is not None:
            watch.liveness.expect(watch.now(), what)

    def track(self, event: ev.Event, response_active: bool) -> None:
        """What a server event tells the watchdog and the replay buffer."""
        replay = self.replay
        if isinstance(event, ev.SpeechStarted):
            replay.turn_started()
        elif isinstance(event, ev.ResponseDone) and event.status == "completed":
            replay.turn_answered()
        replay.server_event()
        watch = self.current
        if watch is None:
            return
        now = watch.now()
        if response_active:
            watch.liveness.event(now, still_waiting=True, what="the response in progress")
        elif isinstance(event, ev.SpeechStopped) and self._server_answers:
            watch.liveness.event(now, still_waiting=True, what="the caller's turn")
        else:
            watch.liveness.event(now, still_waiting=False)

    def replay_into(self, conn: Session) -> int:
        """Append the caller audio the lost session never acted on to ``conn`` (after its
        re-seed, before any ``response.create``); the bytes replayed."""
        data = b"".join(self.replay.take())
        if not data:
            return 0
        step = int(self._bytes_per_ms * REPLAY_EVENT_MS)
        step -= step % 2
        for at in range(0, len(data), step):
            conn.writer.send(b"".join((APPEND_PREFIX, b2a_base64(
                data[at:at + step], newline=False), APPEND_SUFFIX)))
        self._log.info("replayed %.1f s of caller audio to the new session",
                       len(data) / self._bytes_per_ms / 1000)
        return len(data)


__all__ = ["REPLAY_EVENT_MS", "HungCallback", "RecoveryPolicy", "SessionWatch", "Upkeep"]
