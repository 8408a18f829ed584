"""The emulator's asyncio adapter: a ``websockets`` server around :class:`SessionCore`.

Per connection there are exactly two tasks: the handler, which reads frames and feeds them
to the core, and a writer, which sends whatever the core produced and sleeps until the
core's next deadline (the next paced audio delta, a scripted close, the session's expiry).
Nothing here knows the protocol beyond the handshake:

- paths: GA ``/openai/v1/realtime?model=X`` and ``/v1/realtime?model=X``; preview
  ``/openai/realtime?api-version=V&deployment=X``; anything else is HTTP 404;
- authentication, when configured, is checked before the upgrade as Azure does: a missing
  or wrong ``api-key`` header (or ``api-key`` query parameter on the preview path) or
  ``Authorization: Bearer`` token is HTTP 401;
- ``OpenAI-Beta: realtime=v1`` on a GA path is refused the way OpenAI refuses it (an
  ``error`` event ``beta_api_shape_disabled``, then close code 4000);
- a ``POST`` is Chat Completions, served on the same port with the same credentials
  (``bridge.realtime.emulator.chat`` and ``chat_http``).
"""

from __future__ import annotations

import asyncio
import hmac
import itertools
import json
import logging
import time
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from types import TracebackType
from urllib.parse import parse_qsl, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from bridge.internals.websockets import abort_now
from bridge.realtime.emulator.chat import ChatCore
from bridge.realtime.emulator.chat_http import connection_class
from bridge.realtime.emulator.record import (
    EmulatorRecord,
    SessionRecord,
    redact_headers,
    redact_query,
)
from bridge.realtime.emulator.script import Script, load_script
from bridge.realtime.emulator.session import Close, SessionCore
from bridge.realtime.emulator.speech import render_texts
from bridge.realtime.emulator.transcription import TranscriptionJob

__all__ = ["Emulator", "EmulatorConfig"]

log = logging.getLogger("bridge.realtime.emulator")

GA_PATHS = frozenset({"/openai/v1/realtime", "/v1/realtime"})
PREVIEW_PATH = "/openai/realtime"


@dataclass(frozen=True)
class EmulatorConfig:
    """Settings of one emulator.

    ``api_key`` / ``bearer_token``: when either is set, a connection must present one of
    them (``api-key`` header, or ``Authorization: Bearer``); neither set = no auth.
    ``pace``: audio deltas go out this many times faster than real time (0 = at once).
    ``keep_input_audio``: bytes of each session's input audio kept in its record, as the
    client appended them (for tests; 0, the default, keeps none).
    """

    host: str = "127.0.0.1"
    port: int = 0
    api_key: str | None = None
    bearer_token: str | None = None
    script: str | Path | None = None
    session_max_s: float = 1800.0
    greeting_ms: int = 1200
    pace: float = 4.0
    model: str = "gpt-realtime"
    keep_input_audio: int = 0
    #: wait this long before ``session.created``, as a cloud service's session set-up does
    open_delay_ms: int = 0
    #: between two streamed Chat Completions chunks (``bridge.realtime.emulator.chat``)
    chat_chunk_ms: int = 60

    def __repr__(self) -> str:  # never show the secrets
        return (f"EmulatorConfig(host={self.host!r}, port={self.port}, "
                f"api_key={'<set>' if self.api_key else None}, "
                f"bearer_token={'<set>' if self.bearer_token else None}, "
                f"script={self.script!r}, session_max_s={self.session_max_s}, "
                f"greeting_ms={self.greeting_ms}, pace={self.pace})")


@dataclass(frozen=True)
class _Handshake:
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    dialect: str
    model: str
    beta_header: bool


class _Conn:
    __slots__ = ("core", "jobs", "wake", "ws")

    def __init__(self, ws: ServerConnection, core: SessionCore) -> None:
        self.ws = ws
        self.core = core
        self.wake = asyncio.Event()
        #: transcription turns being recognised (cancelled with the connection)
        self.jobs: set[asyncio.Task[None]] = set()


def _bad(connection: ServerConnection, status: HTTPStatus, text: str) -> Response:
    return connection.respond(status, text + "\n")


class Emulator:
    """A local Realtime server: ``async with Emulator(cfg) as emu: ... emu.url``."""

    def __init__(self, config: EmulatorConfig | None = None) -> None:
        self.config = config or EmulatorConfig()
        self.record = EmulatorRecord()
        self._server: Server | None = None
        self._script: Script | None = None
        self._speech: dict[str, bytes] = {}
        self._conns: set[_Conn] = set()
        # keyed weakly: a handshake accepted here whose upgrade then fails leaves nothing
        self._handshakes: weakref.WeakKeyDictionary[ServerConnection, _Handshake] = (
            weakref.WeakKeyDictionary())
        self._waiters: list[asyncio.Future[None]] = []
        self._session_count = itertools.count(1)
        #: one recognition at a time (transcription sessions; ``transcription.py``)
        self._recognising = asyncio.Lock()
        self.port = 0
        #: Chat Completions on the same port (``bridge.realtime.emulator.chat``)
        self.chat = ChatCore(self._authorized, chunk_ms=self.config.chat_chunk_ms)

    # --- lifecycle ----------------------------------------------------------------------

    async def __aenter__(self) -> Emulator:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.stop()

    async def start(self) -> None:
        if self.config.script is not None:
            self._script = load_script(self.config.script)
            self._speech = await render_texts(self._script.texts(), self._script.speech)
        self._server = await serve(
            self._handler, self.config.host, self.config.port,
            process_request=self._process_request, compression=None,
            max_size=16 * 2**20, ping_interval=20, ping_timeout=20, close_timeout=2,
            create_connection=connection_class(self.chat),
        )
        sock = next(iter(self._server.sockets))
        self.port = int(sock.getsockname()[1])
        log.info("Realtime emulator listening on %s", self.url)

    async def stop(self) -> None:
        if self._server is None:
            return
        for conn in self._conns:
            if not conn.ws.transport.is_reading():   # hung: it would never see its peer go
                abort_now(conn.ws)
        self._server.close()
        await self._server.wait_closed()
        self._server = None

    @property
    def url(self) -> str:
        host = self.config.host
        if ":" in host:
            host = f"[{host}]"
        return f"ws://{host}:{self.port}"

    # --- for tests ----------------------------------------------------------------------

    async def wait_for(self, predicate: Callable[[EmulatorRecord], bool],
                       timeout: float) -> EmulatorRecord:  # noqa: ASYNC109 (the contract's API)
        """Wait until ``predicate(record)`` holds; raise ``TimeoutError`` after ``timeout``."""
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(timeout):
            while not predicate(self.record):
                fut: asyncio.Future[None] = loop.create_future()
                self._waiters.append(fut)
                await fut
        return self.record

    async def drop(self, code: int) -> None:
        """Close every live session with ``code`` (1006: abort TCP, no close frame)."""
        await asyncio.gather(*(self._close(c, code, "dropped by the emulator")
                               for c in list(self._conns)))

    def hang(self) -> None:
        """Freeze every live session as a stopped process would: nothing more is read
        (no events handled, no pong), the TCP connection stays open. New connections are
        served as usual."""
        for conn in list(self._conns):
            conn.ws.transport.pause_reading()

    def _notify(self) -> None:
        if self._waiters:
            waiters, self._waiters = self._waiters, []
            for fut in waiters:
                if not fut.done():
                    fut.set_result(None)

    # --- handshake ----------------------------------------------------------------------

    def _authorized(self, headers: Headers | Mapping[str, str], query: dict[str, str],
                    dialect: str) -> bool:
        key, token = self.config.api_key, self.config.bearer_token
        if key is None and token is None:
            return True
        offered = [headers.get("api-key")]
        if dialect == "preview":
            offered.append(query.get("api-key"))
        auth = headers.get("authorization", "")
        bearer = auth[7:].strip() if auth[:7].lower() == "bearer " else None
        good = False
        # Compare in constant time: a local test server, but a credential all the same.
        for candidate in offered:
            if candidate is not None and key is not None:
                good |= hmac.compare_digest(candidate.encode(), key.encode())
        if bearer is not None:
            for secret in (token, key):
                if secret is not None:
                    good |= hmac.compare_digest(bearer.encode(), secret.encode())
        return good

    def _process_request(self, connection: ServerConnection,
                         request: Request) -> Response | None:
        parts = urlsplit(request.path)
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        if parts.path in GA_PATHS:
            dialect = "ga"
            model = query.get("model", "")
            if parts.path.startswith("/openai/") and "api-version" in query:
                # Azure's GA endpoint refuses an api-version (docs/realtime-protocol.md §1).
                return _bad(connection, HTTPStatus.UNAUTHORIZED,
                            "api-version is not accepted on the GA endpoint")
        elif parts.path == PREVIEW_PATH:
            dialect = "preview"
            model = query.get("deployment", "")
            if not query.get("api-version"):
                return _bad(connection, HTTPStatus.BAD_REQUEST, "missing api-version")
        else:
            return _bad(connection, HTTPStatus.NOT_FOUND, "not found")
        if not model and dialect == "preview" and query.get("intent") == "transcription":
            model = "transcription"          # a preview transcription session names none
        if not model:
            return _bad(connection, HTTPStatus.BAD_REQUEST,
                        "missing " + ("model" if dialect == "ga" else "deployment"))
        if not self._authorized(request.headers, query, dialect):
            log.info("emulator: refused a connection with bad credentials (401)")
            return _bad(connection, HTTPStatus.UNAUTHORIZED, "invalid credentials")
        beta = dialect == "ga" and "realtime=v1" in request.headers.get("openai-beta", "")
        self._handshakes[connection] = _Handshake(
            path=parts.path, query=redact_query(query),
            headers=redact_headers({k: v for k, v in request.headers.raw_items()}),
            dialect=dialect, model=model, beta_header=beta)
        return None

    # --- a session ----------------------------------------------------------------------

    async def _handler(self, ws: ServerConnection) -> None:
        hs = self._handshakes.pop(ws, None)
        if hs is None:  # cannot happen: process_request ran first
            await ws.close(1011, "no handshake")
            return
        loop = asyncio.get_running_loop()
        record = SessionRecord(session_id="", path=hs.path, query=hs.query, headers=hs.headers,
                               dialect=hs.dialect,
                               keep_input_audio=self.config.keep_input_audio)
        self.record.sessions.append(record)
        if hs.beta_header:
            await self._refuse_beta(ws, record)
            return
        core = SessionCore(record, dialect=hs.dialect, model=hs.model, now=loop.time(),
                           wall_time=time.time(), session_max_s=self.config.session_max_s,
                           greeting_ms=self.config.greeting_ms, script=self._script,
                           speech=self._speech, session_index=next(self._session_count),
                           pace=self.config.pace)
        conn = _Conn(ws, core)
        self._conns.add(conn)
        log.info("emulator: session %s opened on %s (%s)", core.session_id, hs.path, hs.dialect)
        writer = asyncio.create_task(self._writer(conn),
                                     name=f"emulator-writer-{record.session_id}")
        writer.add_done_callback(lambda task: self._writer_done(task, conn))
        try:
            if self.config.open_delay_ms > 0:
                await asyncio.sleep(self.config.open_delay_ms / 1000)
            core.start(loop.time())
            conn.wake.set()
            self._notify()
            async for message in ws:
                if isinstance(message, str):
                    core.receive_text(message, loop.time())
                else:
                    core.receive_bytes(message, loop.time())
                for job in core.take_jobs():
                    self._recognise(conn, job)
                if core.has_output or core.closed:
                    conn.wake.set()
                self._notify()
        except ConnectionClosed:
            pass
        finally:
            self._conns.discard(conn)
            for pending in list(conn.jobs):
                pending.cancel()
            writer.cancel()  # no-op if it already ended
            failed = writer.done() and not writer.cancelled() and writer.exception() is not None
            if not failed:  # a failed writer was reported by _writer_done
                try:
                    await writer
                except asyncio.CancelledError:
                    current = asyncio.current_task()
                    if current is not None and current.cancelling():
                        raise
            core.abandon(ws.close_code if ws.close_code is not None else 1006)
            log.info("emulator: session %s closed (%s)", record.session_id, record.close_code)
            self._notify()

    def _recognise(self, conn: _Conn, job: TranscriptionJob) -> None:
        """Recognise a transcription session's turn in a worker thread (one at a time per
        emulator: the CPU is shared with whoever runs it), then answer it."""
        async def run() -> None:
            async with self._recognising:
                text = await asyncio.to_thread(job.run)
            conn.core.finish_job(job, text)
            conn.wake.set()
            self._notify()
        task = asyncio.create_task(run(), name=f"emulator-recognise-{job.item_id}")
        conn.jobs.add(task)
        task.add_done_callback(conn.jobs.discard)

    async def _writer(self, conn: _Conn) -> None:
        loop = asyncio.get_running_loop()
        core, ws = conn.core, conn.ws
        while True:
            deadline = core.next_deadline()
            if deadline is None:
                await conn.wake.wait()
            else:
                delay = deadline - loop.time()
                if delay > 0:
                    try:
                        async with asyncio.timeout(delay):
                            await conn.wake.wait()
                    except TimeoutError:
                        pass
            conn.wake.clear()
            core.handle_timer(loop.time())
            out = core.take_output()
            try:
                for frame in out:
                    if isinstance(frame, Close):
                        await self._close(conn, frame.code, frame.reason)
                        return
                    await ws.send(frame)
            except ConnectionClosed:
                return
            if out:
                self._notify()

    @staticmethod
    def _writer_done(task: asyncio.Task[None], conn: _Conn) -> None:
        if task.cancelled() or task.exception() is None:
            return
        # A bug in the core must not leave a caller talking to a session that never
        # answers: drop the connection (the client sees 1006 and reconnects).
        log.error("emulator: session %s failed", conn.core.session_id,
                  exc_info=task.exception())
        abort_now(conn.ws)

    async def _close(self, conn: _Conn, code: int, reason: str) -> None:
        conn.core.closed = True
        if code == 1006:
            # 1006 is never sent on the wire (RFC 6455 §7.4.1): it means the TCP
            # connection went away without a close frame, so that is what we do.
            abort_now(conn.ws)
            return
        await conn.ws.close(code, reason)

    async def _refuse_beta(self, ws: ServerConnection, record: SessionRecord) -> None:
        event = {"type": "error", "event_id": "event_beta_refused", "error": {
            "type": "invalid_request_error", "code": "beta_api_shape_disabled",
            "message": "The 'OpenAI-Beta: realtime=v1' header selects the retired beta shape; "
                       "remove it to use the GA protocol.", "param": None, "event_id": None}}
        record.errors.append(("beta_api_shape_disabled", None))
        try:
            await ws.send(json.dumps(event))
            await ws.close(4000, "beta api shape disabled")
        except ConnectionClosed:
            pass
        record.open = False
        record.close_code = 4000
        self._notify()
