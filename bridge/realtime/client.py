"""The Realtime client: one WebSocket per call to Azure OpenAI / OpenAI / the emulator.

Theory of operation
-------------------
The wire mapping lives in ``dialects.EventMapper`` (sans-I/O), the response bookkeeping in
``responses.Responses`` (sans-I/O), the conversation text in ``history.History``, the
session settings in ``profile``, opening one session in ``connection.Connector``; this
module is the asyncio adapter around them and owns exactly one task: the reader. It

* connects: a session is opened, configured, re-seeded mid-call (protocol §8);
* reads server events, maps them, has ``Responses`` book them (the one active response,
  queued ``response.create``, function-call items, assistant audio per item, the caller's
  turns), does what it decides and hands the events to the call through ``events()``;
* watches each session (``recovery.Upkeep``): a hung upstream is noticed in about 2 s;
* on a close worth retrying (1001, 1005, 1006, 1011, 1012, 1013, and a hung session)
  reconnects with jittered back-off until the ``RecoveryPolicy`` time budget (10 s) runs
  out; on auth (HTTP 401/403, close 3000) or bad-request failures (HTTP 400/404, close
  4000) gives up at once with ``UpstreamLost``, and so it does when sessions keep dropping
  (more than ``max_drops`` within ``flap_window_s``: each reconnect succeeding on its own
  would otherwise keep the caller in silence for ever);
* replays the caller's audio from an outage to the new session (``replay``, 15 s at most);
* rotates the session before ``expires_at`` at a quiet moment (``Responses.quiet``) in a
  short-lived task that opens the new session beside the old one and swaps them.

Writing never awaits. Every client event is one unfragmented text frame, written to the
transport in the same step (``bridge.internals.websockets.FrameWriter``): no task,
future or wake-up per ``append_audio``. Flow control: past ``AUDIO_HIGH_WATER`` bytes
waiting in the transport, audio frames are dropped (and counted), not piled up as
latency; control events are always written.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from binascii import b2a_base64
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from websockets.exceptions import ConnectionClosed

from bridge import metrics
from bridge.aio import cancel_all
from bridge.errors import RealtimeAuthError, RealtimeError, RealtimeUnavailable
from bridge.internals.websockets import BACKLOGGED, SENT
from bridge.realtime import dialects, outofband
from bridge.realtime import events as ev
from bridge.realtime.auth import EntraTokenProvider
from bridge.realtime.config import RealtimeTarget
from bridge.realtime.connection import (
    RETRY_CLOSE_CODES,
    Connector,
    Logger,
    RealtimeRejected,
    Session,
    _Retryable,
    close_quietly,
    lost_reason,
)
from bridge.realtime.dialects import APPEND_PREFIX, APPEND_SUFFIX
from bridge.realtime.history import History
from bridge.realtime.items import ItemOps
from bridge.realtime.profile import SessionProfile
from bridge.realtime.recovery import RecoveryPolicy, Upkeep
from bridge.realtime.responses import Responses, Verdict

#: Audio waiting in the transport beyond this is a stalled upstream: drop frames, not latency.
AUDIO_HIGH_WATER = 256 * 1024


@dataclass
class ClientStats:
    connects: int = 0
    reconnects: int = 0
    rotations: int = 0
    rotation_attempts: int = 0   # rotations started (a busy call may defer one)
    frames_appended: int = 0
    frames_dropped: int = 0
    bytes_replayed: int = 0      # caller audio kept across outages and appended after
    hung: int = 0                # sessions dropped as hung (keepalive or watchdog)
    bytes_appended: int = 0
    events_received: int = 0
    last_connect_s: float = 0.0


class RealtimeClient(outofband.OutOfBandRequests, ItemOps):
    """The upstream Realtime leg of one call. See the module docstring."""

    def __init__(self, target: RealtimeTarget, profile: SessionProfile, *,
                 token_provider: Callable[[], Awaitable[str]] | None = None,
                 log: Logger | None = None, recovery: RecoveryPolicy | None = None,
                 rotate_margin_s: float = 120.0, open_timeout_s: float = 15.0,
                 wall_clock: Callable[[], float] = time.time) -> None:
        self.target = target
        self.profile = profile
        self._log = log if log is not None else logging.getLogger("bridge.realtime.client")
        self._owned_provider: EntraTokenProvider | None = None
        if token_provider is None and target.use_entra and not target.api_key:
            self._owned_provider = EntraTokenProvider()
            token_provider = self._owned_provider
        #: the policy; a call may replace it before ``connect`` (its dialplan's budget)
        self.recovery = recovery if recovery is not None else RecoveryPolicy()
        self.rotate_margin_s = rotate_margin_s
        self._drops: deque[float] = deque()   # monotonic times of recent session drops
        self._wall = wall_clock
        self._ids = itertools.count(1)
        self._connector = Connector(target, profile, token_provider=token_provider,
                                    log=self._log, open_timeout_s=open_timeout_s,
                                    next_id=self._next_id, wall_clock=wall_clock)
        self.stats = ClientStats()
        self.history = History()
        self.books = Responses(
            self.history, bytes_per_ms=profile.bytes_per_ms,
            server_answers=(profile.turn_detection is not None
                            and profile.turn_detection.create_response),
            interrupt_response=profile.interrupt_response)
        #: called as bytes arrive and before each message is handled: a busy process's
        #: media clock delivers a due tick there (set before ``connect``)
        self.on_message: Callable[[], object] | None = None

        self._conn: Session | None = None
        #: keepalive, watchdog and the replay buffer (sized at connect, from the policy)
        self.upkeep = Upkeep(self._log, server_answers=self.books.server_answers)
        self._events: asyncio.Queue[ev.Event | None] = asyncio.Queue()
        self._reader: asyncio.Task[None] | None = None
        self._rotation: asyncio.Task[None] | None = None
        self._rotate_timer: asyncio.TimerHandle | None = None
        self._closing = False
        self._finished = False
        self._drop_warned = False
        self._m_connects = metrics.UPSTREAM_CONNECTS.labels(kind=target.kind)
        self._m_reconnects = metrics.UPSTREAM_RECONNECTS.labels(kind=target.kind)

    # -- public API -----------------------------------------------------------------------

    @property
    def response_active(self) -> bool:
        return self.books.response_active

    @property
    def session_id(self) -> str:
        return "" if self._conn is None else self._conn.session_id

    @property
    def connected(self) -> bool:
        conn = self._conn
        return conn is not None and conn.ready and conn.writer.is_open()

    @property
    def write_backlog(self) -> int:
        """Bytes written but not yet taken by the kernel (0 without a socket)."""
        conn = self._conn
        return 0 if conn is None else conn.writer.backlog()

    async def connect(self) -> None:
        """Open the session; returns after ``session.updated``.

        Raises ``RealtimeAuthError`` (credentials refused), ``RealtimeRejected`` (request
        refused) or ``RealtimeUnavailable`` (unreachable after the retries).
        """
        if self._reader is not None:
            raise RealtimeError("connect() called twice")
        policy = self.recovery
        self.upkeep.configure(policy, self.profile.bytes_per_ms)
        attempt = 0
        while True:
            attempt += 1
            try:
                conn = await self._open(reseed=False)
                break
            except _Retryable as exc:
                if attempt >= policy.connect_attempts:
                    self._count_error("unavailable")
                    raise RealtimeUnavailable(
                        f"{self.target.kind} unreachable after {attempt} attempts: {exc}"
                    ) from None
                self._log.warning("Realtime connect attempt %d failed: %s", attempt, exc)
                await asyncio.sleep(policy.backoff(attempt))
            except RealtimeAuthError:
                self._count_error("auth")
                raise
            except RealtimeUnavailable:
                self._count_error("unavailable")
                raise
        self._install(conn)
        self._emit(ev.SessionReady(conn.session_id, conn.expires_at))
        self._reader = asyncio.get_running_loop().create_task(self._run(), name="realtime-reader")

    async def events(self) -> AsyncIterator[ev.Event]:
        """The internal events, in order; ends after ``UpstreamLost`` or ``close()``."""
        while True:
            item = await self._events.get()
            if item is None:
                self._events.put_nowait(None)  # later iterators end too
                return
            # No yield between queued events: the hook is the consumer's preemption point.
            hook = self.on_message
            if hook is not None:
                hook()
            yield item

    def append_audio(self, data: bytes) -> None:
        """Send caller audio (in the session's input format). Synchronous and cheap: no
        task, no await. Not sent (and counted) while no session is ready or the upstream
        is not draining; kept for a replay after a reconnect either way."""
        self.upkeep.replay.push(data)
        conn = self._conn
        stats = self.stats
        if conn is None or not conn.ready:
            stats.frames_dropped += 1
            return
        status = conn.writer.send_audio(b"".join((APPEND_PREFIX, b2a_base64(
            data, newline=False), APPEND_SUFFIX)), AUDIO_HIGH_WATER)
        if status == SENT:
            self._drop_warned = False
            stats.frames_appended += 1
            stats.bytes_appended += len(data)
            return
        stats.frames_dropped += 1
        if status == BACKLOGGED and not self._drop_warned:
            self._drop_warned = True
            self._log.warning("Realtime upstream not draining: dropping caller audio")

    async def create_response(self, instructions: str | None = None) -> None:
        """``response.create``; queued while a response is active
        (docs/realtime-protocol.md §5.4)."""
        if self.books.request_create(instructions, ready=self._ready()):
            self._send_create(instructions)

    async def cancel_response(self) -> None:
        """Cancel the active response (the bridge's own interruption: DTMF, a tool)."""
        rid = self.books.cancel()
        if rid is not None:
            self._mute(rid)
            self._send(dialects.response_cancel())

    async def truncate(self, item_id: str, audio_end_ms: int) -> None:
        """The caller heard ``audio_end_ms`` of assistant item ``item_id``
        (docs/realtime-protocol.md §6).

        Clamped to the audio received for the item; skipped on the wire at 0 ms
        (truncating an item with no audio is an error) and for items of an earlier
        session. The conversation history is trimmed to what was heard either way.
        """
        conn = self._conn
        heard = self.books.truncate(item_id, audio_end_ms,
                                    conn.items if conn is not None else None)
        if heard > 0:
            self._send(dialects.truncate_event(item_id, heard))

    async def send_tool_output(self, call_id: str, output: str) -> None:
        """Answer a ``FunctionCall``; then call ``create_response()`` once all are in."""
        conn = self._conn
        live = conn if conn is not None and conn.ready else None
        plan = self.books.tool_output(call_id, live.items if live is not None else None)
        if not plan.send:
            self._log.warning("tool output for unknown call %s dropped", call_id)
        else:
            call = plan.recreate
            # A call of a replaced session: its function_call item first, then the output.
            if (call is not None and live is not None and self._send(
                    dialects.function_call_item(call.call_id, call.name, call.arguments))):
                live.items.call_ids.add(call_id)
            self._send(dialects.function_output_item(call_id, output))
        self._maybe_rotate()

    async def add_user_text(self, text: str) -> None:
        """A user text message (e.g. DTMF digits described in words)."""
        self.history.user_text(text)
        self._send(dialects.user_text_item(text, self.target.dialect))

    def set_playout_active(self, active: bool) -> None:
        self.books.playout_active = active
        if not active:
            self._maybe_rotate()

    async def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        if self._rotate_timer is not None:
            self._rotate_timer.cancel()
        self.upkeep.stop()
        tasks = [t for t in (self._rotation, self._reader) if t is not None and not t.done()]
        conn = self._conn
        if conn is not None:
            conn.retired = True
            await close_quietly(conn.ws)
        for exc in await cancel_all(tasks):
            self._log.warning("Realtime task ended with %s: %s", type(exc).__name__, exc)
        if self._owned_provider is not None:
            await self._owned_provider.aclose()
        self._finish()

    # -- connecting -------------------------------------------------------------------------

    def _is_closing(self) -> bool:
        # A method, not the attribute: close() flips it while the reader awaits.
        return self._closing

    def _ready(self) -> bool:
        return self._conn is not None and self._conn.ready

    def _next_id(self) -> str:
        return f"vb_{next(self._ids)}"

    async def _open(self, *, reseed: bool) -> Session:
        """One connect attempt (see ``connection.Connector.open``), counted."""
        def seed() -> list[dict[str, Any]]:
            return self.history.seed_events(self.target.dialect) if reseed else []

        conn = await self._connector.open(seed, self.on_message)
        self.stats.connects += 1
        self.stats.last_connect_s = conn.connect_s
        self._m_connects.inc()
        return conn

    def _install(self, conn: Session, *, replay: bool = False) -> None:
        self._conn = conn
        self.upkeep.watch(conn, self.on_message,
                          lambda how, detail: self._on_hung(conn, how, detail))
        if self._rotate_timer is not None:
            self._rotate_timer.cancel()
            self._rotate_timer = None
        if conn.expires_at is not None:
            delay = max(0.0, self._rotate_at(conn) - self._wall())
            self._rotate_timer = asyncio.get_running_loop().call_later(delay, self._maybe_rotate)
        if replay:
            self.stats.bytes_replayed += self.upkeep.replay_into(conn)
        self._pump_creates()

    def _on_hung(self, conn: Session, how: str, detail: str) -> None:
        """``conn`` is hung: drop its socket; the reader reconnects as for any drop."""
        if conn is self._conn and not conn.retired and not self._closing:
            self.stats.hung += 1
            self.upkeep.drop_hung(conn, how, detail, self.target.kind)

    # -- reading ----------------------------------------------------------------------------

    async def _run(self) -> None:
        """The reader task. A bug below must not leave the call waiting on a dead stream:
        anything unexpected ends the leg with ``UpstreamLost`` (the call's fallback)."""
        try:
            await self._read_loop()
        except Exception as exc:
            self._log.exception("Realtime reader failed")
            self._lose(f"internal error ({type(exc).__name__})", False)

    async def _read_loop(self) -> None:
        """Read, map, book, emit; reconnect or give up on a close."""
        while not self._closing:
            conn = self._conn
            if conn is None:
                return
            await self._read_session(conn)
            if self._is_closing():
                return
            if conn.retired or conn is not self._conn:
                continue  # rotated away: read the new one
            code = conn.close_code()
            if code not in RETRY_CLOSE_CODES:
                self._lose(*lost_reason(code, self.target.kind))
                return
            reason = f"closed with {code}" + (f" ({conn.close_reason})"
                                              if conn.close_reason else "")
            self._log.warning("Realtime session %s %s: reconnecting", conn.session_id, reason)
            if not await self._reconnect(reason):
                return

    async def _read_session(self, conn: Session) -> None:
        """Every message of ``conn`` until its socket closes."""
        try:
            async for message in conn.ws:
                if self.on_message is not None:
                    self.on_message()
                self.stats.events_received += 1
                for event in conn.mapper.feed(message):
                    self._on_event(conn, event)
        except ConnectionClosed:
            pass

    async def _reconnect(self, reason: str) -> bool:
        """New sessions until one is ready or the policy's time budget has passed since
        the loss (each attempt cut short at the budget's end)."""
        self._end_session_state(reason)
        policy = self.recovery
        if self._flapping():
            self._lose(f"{len(self._drops)} sessions dropped within "
                       f"{policy.flap_window_s:.0f} s: {reason}", False)
            return False
        deadline = time.monotonic() + policy.budget_s
        attempt = 0
        while deadline - time.monotonic() > 0:
            attempt += 1
            if attempt > 1:        # the first attempt at once, then jittered back-off
                await asyncio.sleep(min(policy.backoff(attempt - 1),
                                        max(0.0, deadline - time.monotonic())))
                if self._closing:
                    return False
                if deadline - time.monotonic() <= 0:
                    attempt -= 1
                    break
            self._emit(ev.Reconnecting(attempt, reason))
            conn = await self._attempt(deadline, attempt)
            if isinstance(conn, str):
                reason = conn or reason
                continue
            if conn is None:
                return False
            self.stats.reconnects += 1
            self._m_reconnects.inc()
            self._install(conn, replay=True)
            self._emit(ev.Reconnected(conn.session_id))
            return True
        self._lose(f"no new session within the {policy.budget_s:g} s reconnect budget "
                   f"({attempt} attempts): {reason}", False)
        return False

    async def _attempt(self, deadline: float, attempt: int) -> Session | str | None:
        """One reconnect attempt within ``deadline``: the session, the reason it failed
        (worth another try; "" when cut short by the deadline), or None (given up: auth,
        a refused request)."""
        try:
            async with asyncio.timeout_at(asyncio.get_running_loop().time()
                                          + max(0.0, deadline - time.monotonic())):
                return await self._open(reseed=True)
        except TimeoutError:        # the budget ran out during the attempt
            return ""
        except RealtimeAuthError as exc:
            self._lose(str(exc), True)
            return None
        except _Retryable as exc:
            self._log.warning("Realtime reconnect attempt %d failed: %s", attempt, exc)
            return str(exc)
        except RealtimeUnavailable as exc:
            self._lose(str(exc), False)
            return None

    def _flapping(self) -> bool:
        """Count a session drop; True when too many came within the flap window."""
        return self.recovery.too_many_drops(self._drops, time.monotonic())

    def _end_session_state(self, reason: str) -> None:
        """A session is gone: close its books so the call never waits on it."""
        self.upkeep.stop()
        if self._conn is not None:
            self._conn.ready = False
        done = self.books.session_lost(reason)
        if done is not None:
            self._emit(done)

    def _lose(self, reason: str, fatal_auth: bool) -> None:
        self._count_error("auth" if fatal_auth else "lost")
        self._log.error("Realtime upstream lost: %s", reason)
        self.upkeep.stop()
        if self._conn is not None:
            self._conn.ready = False
        self._emit(ev.UpstreamLost(reason, fatal_auth))
        self._finish()

    def _finish(self) -> None:
        if not self._finished:
            self._finished = True
            self._events.put_nowait(None)

    def _emit(self, event: ev.Event) -> None:
        if not self._finished:
            self._events.put_nowait(event)

    def _count_error(self, error: str) -> None:
        metrics.UPSTREAM_ERRORS.labels(kind=self.target.kind, error=error).inc()

    # -- acting on the books ----------------------------------------------------------------

    def _on_event(self, conn: Session, event: ev.Event) -> None:
        if isinstance(event, ev.ServerError):
            self._on_server_error(conn, event)
        verdict: Verdict = self.books.on_event(event, conn.items)
        self.upkeep.track(event, self.books.response_active)
        if verdict.mute is not None:
            self._mute(verdict.mute)
        if verdict.send_cancel:
            self._send(dialects.response_cancel())
        if verdict.forward:
            self._emit(event)
        if verdict.pump:
            self._pump_creates()
        if verdict.rotate:
            self._maybe_rotate()

    def _on_server_error(self, conn: Session, event: ev.ServerError) -> None:
        self._count_error("server_error")
        if event.code == "session_expired":
            conn.close_reason = "session_expired"
        self._log.warning("Realtime server error %s (event %s)", event.code, event.event_id)

    def _mute(self, response_id: str) -> None:
        """The mapper surfaces no function call of ``response_id`` (being cancelled)."""
        if self._conn is not None:
            self._conn.mapper.cancelled(response_id)

    def _pump_creates(self) -> None:
        """Send the next queued ``response.create`` if none is active. One at most: a
        create written makes a response active (pending); one that cannot be written goes
        back to the head of the queue and waits for the next session."""
        if self.books.due_create():
            self._send_create(self.books.pop_queued())

    # -- writing ----------------------------------------------------------------------------

    def _send_create(self, instructions: str | None) -> None:
        event = dialects.response_create(instructions)
        if self._send(event):
            self.books.create_sent(event["event_id"], instructions)
            self.upkeep.expect("response.create")
        else:
            self.books.create_unsent(instructions)

    def _send(self, event: dict[str, Any]) -> bool:
        conn = self._conn
        if conn is None or not conn.ready:
            self._log.debug("%s not sent: no live session", event.get("type"))
            return False
        event.setdefault("event_id", self._next_id())
        if not conn.write(event):
            return False
        self._log.debug("sent %s %s", event["type"], event["event_id"])
        return True

    # -- rotation ---------------------------------------------------------------------------

    def _rotate_at(self, conn: Session) -> float:
        """When ``conn`` should be replaced: ``rotate_margin_s`` before it expires, but not
        before half its life -- a session shorter than the margin would otherwise be
        rotated again the moment it opened."""
        assert conn.expires_at is not None
        half_life = conn.opened_wall + (conn.expires_at - conn.opened_wall) / 2
        return max(conn.expires_at - self.rotate_margin_s, half_life)

    def _rotation_due(self) -> bool:
        conn = self._conn
        return (conn is not None and conn.ready and conn.expires_at is not None
                and self._wall() >= self._rotate_at(conn))

    def _maybe_rotate(self) -> None:
        if (self._closing or self._finished or
                (self._rotation is not None and not self._rotation.done())):
            return
        if not self._rotation_due() or not self.books.quiet():
            return
        self.stats.rotation_attempts += 1
        self._rotation = asyncio.get_running_loop().create_task(self._rotate(),
                                                                name="realtime-rotate")

    async def _rotate(self) -> None:
        old = self._conn
        if old is None:
            return
        self._log.info("rotating Realtime session %s before it expires", old.session_id)
        try:
            new = await self._open(reseed=True)
        except RealtimeError as exc:
            # The old session still runs; at expiry (1001) the reconnect path takes over.
            self._log.warning("session rotation failed: %s", exc)
            return
        if self._closing or self._conn is not old or not self.books.quiet():
            await close_quietly(new.ws)
            if not self._closing:
                self._log.info("session rotation deferred: the call got busy")
            return
        old.retired = True
        old.ready = False
        self.stats.rotations += 1
        self._install(new)
        self._emit(ev.SessionRotated(new.session_id, old.session_id))
        await close_quietly(old.ws)


__all__ = ["AUDIO_HIGH_WATER", "ClientStats", "RealtimeClient", "RealtimeRejected",
           "RecoveryPolicy"]
