"""The Realtime client: one WebSocket per call to Azure OpenAI / OpenAI / the emulator.

Theory of operation
-------------------
The wire mapping lives in ``dialects.EventMapper`` (sans-I/O), the conversation text in
``history.History``, the session settings in ``profile``; this module is the asyncio
adapter around them and owns exactly one task: the reader. It

* opens the socket (raw ``websockets``, ``compression=None``: audio is base64 and does
  not compress, and permessage-deflate costs CPU on every frame), waits for
  ``session.created``, sends ``session.update``, waits for ``session.updated``, and -- on a
  new socket mid-call -- re-seeds the conversation text (PROTOCOL.md §8);
* reads server events, maps them, keeps the books (the one active response, queued
  ``response.create``, function-call items, assistant audio per item, the caller's turns)
  and hands the events to the call through ``events()``;
* on a close worth retrying (1001, 1005, 1006, 1011, 1012, 1013) reconnects with back-off
  to a new session; on auth (HTTP 401/403, close 3000) or bad-request failures (HTTP
  400/404, close 4000) gives up at once with ``UpstreamLost``, and so it does when sessions
  keep dropping (more than ``max_reconnects`` drops within ``flap_window_s``: each
  reconnect succeeding on its own would otherwise keep the caller in silence for ever);
* rotates the session before ``expires_at`` at a quiet moment (no response active,
  playout idle, caller not speaking, no caller turn waiting for server VAD's answer, no
  tool call outstanding) in a short-lived task that
  opens the new session beside the old one and swaps them.

Writing never awaits. Every client event is one unfragmented text frame, so the client
hands it to the connection's protocol object and flushes it to the transport in the same
step (what ``websockets``' own ``send`` does, minus the coroutine and the drain). That
keeps ``append_audio`` -- called from a datagram callback 50 times a second per call --
free of tasks, futures and loop wake-ups. Flow control: while more than
``AUDIO_HIGH_WATER`` bytes wait in the transport, audio frames are dropped (and counted)
instead of piling up latency; control events are always written.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import json
import logging
import os
import random
import struct
import time
from binascii import b2a_base64
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import websockets
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI
from websockets.protocol import State
from websockets.utils import apply_mask as _apply_mask_py

from bridge import __version__, metrics
from bridge.errors import RealtimeAuthError, RealtimeError, RealtimeUnavailable
from bridge.realtime import dialects
from bridge.realtime import events as ev
from bridge.realtime.auth import EntraTokenProvider, TokenProvider, handshake_headers
from bridge.realtime.config import RealtimeTarget, redact_url
from bridge.realtime.dialects import APPEND_PREFIX, APPEND_SUFFIX, EventMapper
from bridge.realtime.history import History
from bridge.realtime.profile import SessionProfile, build_session_update

try:   # websockets' C masking, as its own framing uses
    from websockets.speedups import apply_mask
except ImportError:   # pragma: no cover - websockets built without its C extension
    apply_mask = _apply_mask_py

#: Close codes worth a reconnect (PROTOCOL.md §8).
RETRY_CLOSE_CODES = frozenset({1001, 1005, 1006, 1011, 1012, 1013})
#: Close codes that mean "do not try again": auth, bad request shape.
AUTH_CLOSE_CODES = frozenset({3000})
REJECT_CLOSE_CODES = frozenset({4000})
AUTH_HTTP = frozenset({401, 403})
REJECT_HTTP = frozenset({400, 404})

#: Audio waiting in the transport beyond this is a stalled upstream: drop frames, not latency.
AUDIO_HIGH_WATER = 256 * 1024
_OPEN = State.OPEN
MAX_MESSAGE = 16 * 1024 * 1024


@functools.lru_cache(maxsize=64)
def _text_frame_header(length: int) -> bytes:
    """FIN + text opcode and a masked length (RFC 6455 §5.2; client frames are masked)."""
    if length < 126:
        return struct.pack("!BB", 0x81, 0x80 | length)
    if length < 65536:
        return struct.pack("!BBH", 0x81, 0x80 | 126, length)
    return struct.pack("!BBQ", 0x81, 0x80 | 127, length)


class _Masks:
    """Masking keys for client frames. RFC 6455 §5.3: the client MUST pick a fresh key
    for each frame, unpredictable, "derived from a strong source of entropy": each key is
    4 fresh bytes of ``os.urandom``, fetched 1 KiB at a time instead of one syscall per
    frame."""

    __slots__ = ("_pool", "_at")

    def __init__(self) -> None:
        self._pool = b""
        self._at = 0

    def apply(self, payload: bytes) -> bytes:
        key = self.key()
        return key + apply_mask(payload, key)

    def key(self) -> bytes:
        """The next fresh 4-byte masking key."""
        at = self._at
        if at + 4 > len(self._pool):
            self._pool, at = os.urandom(1024), 0
        self._at = at + 4
        return self._pool[at:at + 4]


class RealtimeRejected(RealtimeUnavailable):
    """The upstream refused the request itself (HTTP 400/404, close 4000, a rejected
    ``session.update``): retrying the same thing cannot help."""


class _Retryable(RealtimeUnavailable):
    """A failure worth another attempt (network, HTTP 429/5xx, a recoverable close)."""


@dataclass
class ClientStats:
    connects: int = 0
    reconnects: int = 0
    rotations: int = 0
    rotation_attempts: int = 0   # rotations started (a busy call may defer one)
    frames_appended: int = 0
    frames_dropped: int = 0
    bytes_appended: int = 0
    events_received: int = 0
    last_connect_s: float = 0.0


@dataclass
class _Conn:
    """One socket and its session."""

    ws: ClientConnection
    mapper: EventMapper
    session_id: str = ""
    expires_at: float | None = None
    ready: bool = False
    retired: bool = False
    call_ids: set[str] = field(default_factory=set)
    items: set[str] = field(default_factory=set)   # assistant output items of this session
    close_reason: str = ""
    opened_wall: float = 0.0   # wall-clock time the session was ready (epoch s)


class RealtimeClient:
    """The upstream Realtime leg of one call. See the module docstring."""

    def __init__(self, target: RealtimeTarget, profile: SessionProfile, *,
                 token_provider: Callable[[], Awaitable[str]] | None = None,
                 log: logging.Logger | logging.LoggerAdapter[Any] | None = None,
                 max_reconnects: int = 3, rotate_margin_s: float = 120.0,
                 reconnect_backoff_s: float = 0.5, open_timeout_s: float = 15.0,
                 flap_window_s: float = 60.0,
                 wall_clock: Callable[[], float] = time.time) -> None:
        self.target = target
        self.profile = profile
        self._log = log if log is not None else logging.getLogger("bridge.realtime.client")
        self._owned_provider: EntraTokenProvider | None = None
        if token_provider is None and target.use_entra and not target.api_key:
            self._owned_provider = EntraTokenProvider()
            token_provider = self._owned_provider
        self._token_provider: TokenProvider | None = token_provider
        self.max_reconnects = max_reconnects
        self.rotate_margin_s = rotate_margin_s
        self.reconnect_backoff_s = reconnect_backoff_s
        self.open_timeout_s = open_timeout_s
        self.flap_window_s = flap_window_s
        self._drops: deque[float] = deque()   # monotonic times of recent session drops
        self._wall = wall_clock
        self.stats = ClientStats()
        self.history = History()
        #: called as bytes arrive and before each received message is handled: a busy
        #: process's media clock delivers a due tick there instead of after a whole burst
        #: of socket reads and messages (set before ``connect``)
        self.on_message: Callable[[], object] | None = None

        self._conn: _Conn | None = None
        self._events: asyncio.Queue[ev.Event | None] = asyncio.Queue()
        self._reader: asyncio.Task[None] | None = None
        self._rotation: asyncio.Task[None] | None = None
        self._rotate_timer: asyncio.TimerHandle | None = None
        self._closing = False
        self._finished = False
        self._ids = itertools.count(1)
        self._drop_warned = False
        self._masks = _Masks()

        # Response bookkeeping: PROTOCOL.md §5.4, one active response at a time.
        self._active: str | None = None         # response id, or "" while our create is unacked
        self._create_event_id: str | None = None
        self._create_instructions: str | None = None
        self._queued: deque[str | None] = deque()
        self._suppressed: set[str] = set()      # responses being cancelled: no audio, no tools
        self._caller_speaking = False
        # Server VAD ended a caller turn and will answer it on *this* session: swapping
        # sessions before its response.created would lose the caller's words.
        self._answer_due = False
        self._server_answers = (profile.turn_detection is not None
                                and profile.turn_detection.create_response)
        self._playout_active = False
        self._tools_outstanding: set[str] = set()
        self._calls: dict[str, ev.FunctionCall] = {}
        self._cancel_on_create = False
        self._audio_item: str | None = None
        self._session_update_id = ""

        kind = target.kind
        self._m_connects = metrics.UPSTREAM_CONNECTS.labels(kind=kind)
        self._m_reconnects = metrics.UPSTREAM_RECONNECTS.labels(kind=kind)

    # -- public API -----------------------------------------------------------------------

    @property
    def response_active(self) -> bool:
        return self._active is not None

    @property
    def session_id(self) -> str:
        return self._conn.session_id if self._conn is not None else ""

    @property
    def expires_at(self) -> float | None:
        return self._conn.expires_at if self._conn is not None else None

    @property
    def connected(self) -> bool:
        conn = self._conn
        return conn is not None and conn.ready and conn.ws.protocol.state is State.OPEN

    @property
    def write_backlog(self) -> int:
        """Bytes written but not yet taken by the kernel (0 without a socket)."""
        conn = self._conn
        if conn is None or conn.ws.transport.is_closing():
            return 0
        return int(conn.ws.transport.get_write_buffer_size())

    async def connect(self) -> None:
        """Open the session; returns after ``session.updated``.

        Raises ``RealtimeAuthError`` (credentials refused), ``RealtimeRejected`` (request
        refused) or ``RealtimeUnavailable`` (unreachable after the retries).
        """
        if self._reader is not None:
            raise RealtimeError("connect() called twice")
        attempt = 0
        while True:
            attempt += 1
            try:
                conn = await self._open(reseed=False)
                break
            except _Retryable as exc:
                if attempt > self.max_reconnects:
                    self._count_error("unavailable")
                    raise RealtimeUnavailable(
                        f"{self.target.kind} unreachable after {attempt} attempts: {exc}"
                    ) from None
                self._log.warning("Realtime connect attempt %d failed: %s", attempt, exc)
                await asyncio.sleep(self._backoff(attempt))
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
            yield item

    def append_audio(self, data: bytes) -> None:
        """Send caller audio (in the session's input format). Synchronous and cheap: no
        task, no await. Dropped (and counted) while no session is ready or the upstream
        is not draining."""
        conn = self._conn
        if conn is None or not conn.ready:
            self.stats.frames_dropped += 1
            return
        ws = conn.ws
        proto = ws.protocol
        if proto.state is not _OPEN:
            self.stats.frames_dropped += 1
            return
        transport = ws.transport
        if transport.get_write_buffer_size() > AUDIO_HIGH_WATER:
            self.stats.frames_dropped += 1
            if not self._drop_warned:
                self._drop_warned = True
                self._log.warning("Realtime upstream not draining: dropping caller audio")
            return
        self._drop_warned = False
        payload = b"".join((APPEND_PREFIX, b2a_base64(data, newline=False), APPEND_SUFFIX))
        if proto.extensions or proto.expect_continuation_frame:
            proto.send_text(payload)          # not expected (compression=None); be correct
            for chunk in proto.data_to_send():
                transport.write(chunk)
        else:
            # The frame is built here, not through Frame.serialize (a dataclass, a BytesIO
            # and a getrandom syscall per frame): 50 times a second per call, the framing
            # cost as much as the base64. Anything the protocol has pending goes first
            # (checked before calling data_to_send, which allocates a list every time).
            if proto.writes:
                for chunk in proto.data_to_send():
                    transport.write(chunk)
            key = self._masks.key()
            transport.write(b"".join((_text_frame_header(len(payload)), key,
                                      apply_mask(payload, key))))
        self.stats.frames_appended += 1
        self.stats.bytes_appended += len(data)

    async def create_response(self, instructions: str | None = None) -> None:
        """``response.create``; queued while a response is active (PROTOCOL.md §5.4)."""
        if self._active is not None or self._conn is None or not self._conn.ready:
            self._queued.append(instructions)
            return
        self._send_create(instructions)

    async def cancel_response(self) -> None:
        """Cancel the active response (the bridge's own interruption: DTMF, a tool)."""
        rid = self._active
        if rid is None:
            return
        if rid == "":
            # Our response.create is not acknowledged yet: cancel it once it is.
            self._cancel_on_create = True
            return
        self._suppress(rid)
        self._send(dialects.response_cancel())

    async def truncate(self, item_id: str, audio_end_ms: int) -> None:
        """The caller heard ``audio_end_ms`` of assistant item ``item_id`` (PROTOCOL.md §6).

        Clamped to the audio received for the item; skipped on the wire at 0 ms
        (truncating an item with no audio is an error) and for items of an earlier
        session. The conversation history is trimmed to what was heard either way.
        """
        received = self.history.audio_ms(item_id)
        heard = max(0, min(int(audio_end_ms), int(received)))
        self.history.heard(item_id, heard)
        conn = self._conn
        if heard <= 0 or conn is None or item_id not in conn.items:
            return
        self._send(dialects.truncate_event(item_id, heard))

    def report_heard(self, item_id: str, heard_ms: float) -> None:
        """Trim the history only (e.g. playout stopped at hang-up): no wire event."""
        self.history.heard(item_id, heard_ms)

    async def send_tool_output(self, call_id: str, output: str) -> None:
        """Answer a ``FunctionCall``; then call ``create_response()`` once all are in."""
        self._tools_outstanding.discard(call_id)
        call = self._calls.pop(call_id, None)
        conn = self._conn
        if conn is not None and conn.ready and call_id not in conn.call_ids:
            if call is None:
                self._log.warning("tool output for unknown call %s dropped", call_id)
                self._maybe_rotate()
                return
            # The call was made on a session that has since been replaced: give the new
            # session the function_call item first, so the output has something to answer.
            if self._send(dialects.function_call_item(call.call_id, call.name,
                                                      call.arguments)):
                conn.call_ids.add(call_id)
        self._send(dialects.function_output_item(call_id, output))
        self._maybe_rotate()

    async def add_user_text(self, text: str) -> None:
        """A user text message (e.g. DTMF digits described in words)."""
        self.history.user_text(text)
        self._send(dialects.user_text_item(text, self.target.dialect))

    def set_playout_active(self, active: bool) -> None:
        self._playout_active = active
        if not active:
            self._maybe_rotate()

    async def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        if self._rotate_timer is not None:
            self._rotate_timer.cancel()
        tasks = [t for t in (self._rotation, self._reader) if t is not None and not t.done()]
        conn = self._conn
        if conn is not None:
            conn.retired = True
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2.0):
                    await conn.ws.close(1000)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._owned_provider is not None:
            await self._owned_provider.aclose()
        self._finish()

    # -- connecting -------------------------------------------------------------------------

    def _is_closing(self) -> bool:
        # A method, not the attribute: close() flips it while the reader awaits.
        return self._closing

    def _next_id(self) -> str:
        return f"vb_{next(self._ids)}"

    def _backoff(self, attempt: int) -> float:
        base: float = self.reconnect_backoff_s * 2.0 ** (attempt - 1)
        return min(base, 8.0) * random.uniform(0.8, 1.2)

    async def _open(self, *, reseed: bool) -> _Conn:
        """One connect attempt: handshake, session.created, session.update, updated."""
        started = time.perf_counter()
        headers = await handshake_headers(self.target, self._token_provider)
        self._log.debug("connecting to %s", self.target.safe_url)
        try:
            ws = await websockets.connect(
                self.target.url,
                create_connection=_HookedConnection,
                additional_headers=headers,
                compression=None,
                max_size=MAX_MESSAGE,
                open_timeout=self.open_timeout_s,
                close_timeout=2.0,
                user_agent_header=f"voicebridge/{__version__}",
                # websockets logs handshake headers at DEBUG: keep credentials out of logs.
                logger=_QUIET_WS_LOGGER,
            )
        except InvalidStatus as exc:
            status = exc.response.status_code
            if status in AUTH_HTTP:
                raise RealtimeAuthError(
                    f"{self.target.kind} refused the credentials (HTTP {status})") from None
            if status in REJECT_HTTP:
                raise RealtimeRejected(
                    f"{self.target.kind} rejected the request (HTTP {status}): check the "
                    "endpoint, deployment and API version") from None
            raise _Retryable(f"HTTP {status} at the handshake") from None
        except (OSError, TimeoutError, InvalidHandshake) as exc:
            raise _Retryable(f"{type(exc).__name__}: {_safe_text(exc)}") from None
        except (InvalidURI, ValueError) as exc:
            # A URL that cannot be parsed: no retry helps, and the exception's text is the
            # URL itself, api-key query and all -- never let it out.
            raise RealtimeRejected(f"{self.target.kind}: {self.target.safe_url} is not a "
                                   f"usable WebSocket URL ({type(exc).__name__})") from None
        if isinstance(ws, _HookedConnection):
            ws.hook = self.on_message
        conn = _Conn(ws, EventMapper(self.target.dialect))
        try:
            async with asyncio.timeout(self.open_timeout_s):
                await self._handshake(conn)
        except TimeoutError:
            await _abort(ws)
            raise _Retryable("no session.updated in time") from None
        except BaseException:
            await _abort(ws)
            raise
        if reseed:
            for event in self.history.seed_events(self.target.dialect):
                self._write(conn, event)
        conn.ready = True
        conn.opened_wall = self._wall()
        elapsed = time.perf_counter() - started
        self.stats.connects += 1
        self.stats.last_connect_s = elapsed
        self._m_connects.inc()
        self._log.info("Realtime session %s ready on %s in %.0f ms", conn.session_id,
                       self.target.kind, elapsed * 1000)
        return conn

    async def _handshake(self, conn: _Conn) -> None:
        last_error: ev.ServerError | None = None
        sent_update = False
        update = build_session_update(self.profile, self.target.dialect)
        update["event_id"] = update_id = self._next_id()
        while True:
            try:
                message = await conn.ws.recv()
            except ConnectionClosed:
                raise self._close_error(conn, last_error) from None
            for event in conn.mapper.feed(message):
                if isinstance(event, ev.SessionCreated) and not sent_update:
                    conn.session_id = event.session_id
                    conn.expires_at = event.expires_at
                    self._write(conn, update)
                    sent_update = True
                elif isinstance(event, ev.SessionReady) and sent_update:
                    conn.session_id = event.session_id or conn.session_id
                    conn.expires_at = event.expires_at
                    return
                elif isinstance(event, ev.ServerError):
                    last_error = event
                    if event.event_id == update_id:
                        raise RealtimeRejected(
                            f"session.update rejected: {event.code}: {event.message}")
                    self._log.warning("Realtime error before session ready: %s", event.code)

    def _close_error(self, conn: _Conn, last_error: ev.ServerError | None) -> RealtimeError:
        code = _close_code(conn.ws)
        detail = f" ({last_error.code})" if last_error and last_error.code else ""
        if code in AUTH_CLOSE_CODES:
            return RealtimeAuthError(f"{self.target.kind} closed with {code}{detail}: "
                                     "credentials refused")
        if code in REJECT_CLOSE_CODES:
            return RealtimeRejected(f"{self.target.kind} closed with {code}{detail}: "
                                    "request refused")
        return _Retryable(f"closed with {code}{detail}")

    def _install(self, conn: _Conn) -> None:
        self._conn = conn
        if self._rotate_timer is not None:
            self._rotate_timer.cancel()
            self._rotate_timer = None
        if conn.expires_at is not None:
            delay = max(0.0, self._rotate_at(conn) - self._wall())
            self._rotate_timer = asyncio.get_running_loop().call_later(delay, self._maybe_rotate)
        while self._queued and self._active is None:
            self._send_create(self._queued.popleft())

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
        """Read, map, track, emit; reconnect or give up on a close."""
        while not self._closing:
            conn = self._conn
            if conn is None:
                return
            try:
                async for message in conn.ws:
                    if self.on_message is not None:
                        self.on_message()
                    self.stats.events_received += 1
                    for event in conn.mapper.feed(message):
                        self._on_event(conn, event)
            except ConnectionClosed:
                pass
            if self._is_closing():
                return
            if conn.retired or conn is not self._conn:
                continue  # rotated away: read the new one
            code = _close_code(conn.ws)
            if code in RETRY_CLOSE_CODES:
                reason = f"closed with {code}" + (f" ({conn.close_reason})"
                                                  if conn.close_reason else "")
                self._log.warning("Realtime session %s %s: reconnecting", conn.session_id,
                                  reason)
                if not await self._reconnect(reason):
                    return
                continue
            fatal_auth = code in AUTH_CLOSE_CODES
            what = ("credentials refused" if fatal_auth else
                    "request refused" if code in REJECT_CLOSE_CODES else "closed by the server")
            self._lose(f"{self.target.kind} {what} (close {code})", fatal_auth)
            return

    async def _reconnect(self, reason: str) -> bool:
        self._end_session_state(reason)
        now = time.monotonic()
        self._drops.append(now)
        while now - self._drops[0] > self.flap_window_s:
            self._drops.popleft()
        if len(self._drops) > self.max_reconnects:
            self._lose(f"{len(self._drops)} sessions dropped within {self.flap_window_s:.0f} s: "
                       f"{reason}", False)
            return False
        for attempt in range(1, self.max_reconnects + 1):
            self._emit(ev.Reconnecting(attempt, reason))
            await asyncio.sleep(self._backoff(attempt))
            if self._closing:
                return False
            try:
                conn = await self._open(reseed=True)
            except RealtimeAuthError as exc:
                self._lose(str(exc), True)
                return False
            except _Retryable as exc:
                reason = str(exc)
                self._log.warning("Realtime reconnect attempt %d failed: %s", attempt, reason)
                continue
            except RealtimeUnavailable as exc:
                self._lose(str(exc), False)
                return False
            self.stats.reconnects += 1
            self._m_reconnects.inc()
            self._install(conn)
            self._emit(ev.Reconnected(conn.session_id))
            return True
        self._lose(f"gave up after {self.max_reconnects} reconnect attempts: {reason}", False)
        return False

    def _end_session_state(self, reason: str) -> None:
        """A session is gone: close its books so the call never waits on it."""
        old = self._conn
        if old is not None:
            old.ready = False
        rid = self._active
        self._active = None
        self._create_event_id = None
        self._cancel_on_create = False
        self._caller_speaking = False
        self._answer_due = False
        self._tools_outstanding.clear()
        if rid:
            self._emit(ev.ResponseDone(rid, "failed", "connection_lost", None,
                                       {"code": "connection_lost", "message": reason}))

    def _lose(self, reason: str, fatal_auth: bool) -> None:
        self._count_error("auth" if fatal_auth else "lost")
        self._log.error("Realtime upstream lost: %s", reason)
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

    # -- bookkeeping ------------------------------------------------------------------------

    def _on_event(self, conn: _Conn, event: ev.Event) -> None:
        handler = _TRACKERS.get(type(event))
        forward = handler(self, conn, event) if handler is not None else True
        if forward:
            self._emit(event)

    def _t_response_created(self, conn: _Conn, event: ev.Event) -> bool:
        assert isinstance(event, ev.ResponseCreated)
        self._active = event.response_id
        self._answer_due = False
        if self._cancel_on_create:
            self._cancel_on_create = False
            self._suppress(event.response_id)
            self._send(dialects.response_cancel())
        # _create_event_id stays until this response is done: if the server started this
        # one itself, the refusal of our create arrives after it (see _t_error).
        return True

    def _t_response_done(self, conn: _Conn, event: ev.Event) -> bool:
        assert isinstance(event, ev.ResponseDone)
        self._suppressed.discard(event.response_id)
        if self._active in (event.response_id, ""):
            self._active = None
            self._create_event_id = None
        self._emit(event)
        if self._active is None and self._queued:
            self._send_create(self._queued.popleft())
        self._maybe_rotate()
        return False  # already emitted, before any queued create goes out

    def _t_item_added(self, conn: _Conn, event: ev.Event) -> bool:
        assert isinstance(event, ev.OutputItemAdded)
        conn.items.add(event.item_id)
        if event.item_type == "message":
            self.history.assistant_item(event.item_id, event.response_id)
        return event.response_id not in self._suppressed

    def _t_audio(self, conn: _Conn, event: ev.Event) -> bool:
        assert isinstance(event, ev.AudioDelta)
        if event.response_id in self._suppressed:
            return False
        self.history.assistant_audio(event.item_id, len(event.audio) / self.profile.bytes_per_ms)
        return True

    def _t_transcript_delta(self, conn: _Conn, event: ev.Event) -> bool:
        assert isinstance(event, ev.TranscriptDelta)
        return event.response_id not in self._suppressed

    def _t_transcript_done(self, conn: _Conn, event: ev.Event) -> bool:
        assert isinstance(event, ev.TranscriptDone)
        self.history.assistant_transcript(event.item_id, event.transcript)
        return True

    def _t_function_call(self, conn: _Conn, event: ev.Event) -> bool:
        assert isinstance(event, ev.FunctionCall)
        if event.response_id in self._suppressed:
            return False
        conn.call_ids.add(event.call_id)
        self._tools_outstanding.add(event.call_id)
        self._calls[event.call_id] = event
        while len(self._calls) > 32:  # answered calls are popped; bound the forgotten ones
            del self._calls[next(iter(self._calls))]
        return True

    def _t_speech_started(self, conn: _Conn, event: ev.Event) -> bool:
        self._caller_speaking = True
        # PROTOCOL.md §6.4: with interrupt_response the server cancels the running response
        # itself; what it still sends of it is stale audio the caller must not hear.
        if self._active and self.profile.interrupt_response:
            self._suppress(self._active)
            self.history.interrupted(self._active)
        return True

    def _t_speech_stopped(self, conn: _Conn, event: ev.Event) -> bool:
        self._caller_speaking = False
        self._answer_due = self._server_answers
        self._maybe_rotate()
        return True

    def _t_input_timeout(self, conn: _Conn, event: ev.Event) -> bool:
        # The server commits the silence and answers it (a "still there?").
        self._answer_due = self._server_answers
        return True

    def _t_committed(self, conn: _Conn, event: ev.Event) -> bool:
        assert isinstance(event, ev.InputCommitted)
        self._caller_speaking = False
        self.history.user_turn(event.item_id)
        return True

    def _t_user_transcript(self, conn: _Conn, event: ev.Event) -> bool:
        assert isinstance(event, ev.UserTranscript)
        self.history.user_transcript(event.item_id, event.transcript)
        return True

    def _t_error(self, conn: _Conn, event: ev.Event) -> bool:
        assert isinstance(event, ev.ServerError)
        self._count_error("server_error")
        if event.code == "session_expired":
            conn.close_reason = "session_expired"
        if (event.code == "conversation_already_has_active_response"
                and event.event_id is not None and event.event_id == self._create_event_id):
            # Our create collided with one the server started itself (server VAD): run it
            # after that one is done instead (unless the call has cancelled it meanwhile).
            if self._cancel_on_create:
                self._cancel_on_create = False
            else:
                self._queued.appendleft(self._create_instructions)
            self._create_event_id = None
            if self._active == "":
                self._active = None
        self._log.warning("Realtime server error %s (event %s)", event.code, event.event_id)
        return True

    def _t_session_created(self, conn: _Conn, event: ev.Event) -> bool:
        return False  # internal: the handshake has handled it

    def _suppress(self, response_id: str) -> None:
        if response_id:
            self._suppressed.add(response_id)
            if self._conn is not None:
                self._conn.mapper.cancelled(response_id)

    # -- writing ----------------------------------------------------------------------------

    def _send_create(self, instructions: str | None) -> None:
        event = dialects.response_create(instructions)
        if self._send(event):
            self._active = ""  # pending until response.created
            self._create_event_id = event["event_id"]
            self._create_instructions = instructions
        else:
            self._queued.appendleft(instructions)

    def _send(self, event: dict[str, Any]) -> bool:
        conn = self._conn
        if conn is None or not conn.ready:
            self._log.debug("%s not sent: no live session", event.get("type"))
            return False
        return self._write(conn, event)

    def _write(self, conn: _Conn, event: dict[str, Any]) -> bool:
        event.setdefault("event_id", self._next_id())
        ws = conn.ws
        if ws.protocol.state is not State.OPEN:
            return False
        ws.protocol.send_text(json.dumps(event, separators=(",", ":")).encode())
        for chunk in ws.protocol.data_to_send():
            ws.transport.write(chunk)
        self._log.debug("sent %s %s", event["type"], event["event_id"])
        return True

    # -- rotation ---------------------------------------------------------------------------

    def _quiet(self) -> bool:
        return (self._active is None and not self._queued and not self._playout_active
                and not self._caller_speaking and not self._answer_due
                and not self._tools_outstanding)

    def _rotate_at(self, conn: _Conn) -> float:
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
        if not self._rotation_due() or not self._quiet():
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
            # The old session still runs; at expiry the server closes it (1001) and the
            # reconnect path takes over.
            self._log.warning("session rotation failed: %s", exc)
            return
        if self._closing or self._conn is not old or not self._quiet():
            await _close_quietly(new.ws)
            if not self._closing:
                self._log.info("session rotation deferred: the call got busy")
            return
        old.retired = True
        old.ready = False
        self.stats.rotations += 1
        self._install(new)
        self._emit(ev.SessionRotated(new.session_id, old.session_id))
        await _close_quietly(old.ws)


_TRACKERS: dict[type, Callable[[RealtimeClient, _Conn, ev.Event], bool]] = {
    ev.ResponseCreated: RealtimeClient._t_response_created,
    ev.ResponseDone: RealtimeClient._t_response_done,
    ev.OutputItemAdded: RealtimeClient._t_item_added,
    ev.AudioDelta: RealtimeClient._t_audio,
    ev.TranscriptDelta: RealtimeClient._t_transcript_delta,
    ev.TranscriptDone: RealtimeClient._t_transcript_done,
    ev.FunctionCall: RealtimeClient._t_function_call,
    ev.SpeechStarted: RealtimeClient._t_speech_started,
    ev.SpeechStopped: RealtimeClient._t_speech_stopped,
    ev.InputTimeout: RealtimeClient._t_input_timeout,
    ev.InputCommitted: RealtimeClient._t_committed,
    ev.UserTranscript: RealtimeClient._t_user_transcript,
    ev.ServerError: RealtimeClient._t_error,
    ev.SessionCreated: RealtimeClient._t_session_created,
}


class _QuietLogger(logging.LoggerAdapter[logging.Logger]):
    """websockets' connection logger minus DEBUG (which prints the handshake headers)."""

    def isEnabledFor(self, level: int) -> bool:
        return level > logging.DEBUG and self.logger.isEnabledFor(level)

    def debug(self, msg: object, *args: object, **kwargs: Any) -> None:
        return None


_QUIET_WS_LOGGER = _QuietLogger(logging.getLogger("bridge.realtime.ws"), {})


class _HookedConnection(ClientConnection):
    """A connection that calls ``hook`` as bytes arrive, before websockets parses them:
    a busy process's media clock delivers a due tick there (see ``on_message``). Set once
    the handshake is done (the handshake's own bytes need no hook)."""

    hook: Callable[[], object] | None = None

    def data_received(self, data: bytes) -> None:
        hook = self.hook
        if hook is not None:
            hook()
        super().data_received(data)


def _close_code(ws: ClientConnection) -> int:
    code = ws.close_code
    return 1006 if code is None else int(code)


def _safe_text(exc: BaseException) -> str:
    # Connection errors carry host and port; an invalid-URI error would carry the URL.
    return redact_url(str(exc))[:200]


async def _abort(ws: ClientConnection) -> None:
    ws.transport.abort()
    with contextlib.suppress(Exception):
        async with asyncio.timeout(1.0):
            await ws.wait_closed()


async def _close_quietly(ws: ClientConnection) -> None:
    with contextlib.suppress(Exception):
        async with asyncio.timeout(2.0):
            await ws.close(1000)
