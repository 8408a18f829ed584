"""A small scriptable Realtime server on loopback, for the Realtime client's tests.

It speaks just enough of the protocol for the client's own tests (session.created /
session.update / session.updated, and whatever a test pushes), records the request path,
headers and every event received, and can refuse the handshake with an HTTP status or drop
the socket with any close code (1006 = TCP abort, no close frame).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from bridge.internals.websockets import abort_now


@dataclass
class Captured:
    path: str
    headers: Headers
    events: list[dict[str, Any]] = field(default_factory=list)
    session_id: str = ""


Responder = Callable[["FakeRealtime", ServerConnection, dict[str, Any]],
                     Awaitable[None]]


class FakeRealtime:
    """A loopback WebSocket server shaped like the Realtime service."""

    def __init__(self, *, dialect: str = "ga", reject_status: int | None = None,
                 close_on_connect: int | None = None, expires_in_s: float | None = 1800.0,
                 responder: Responder | None = None) -> None:
        self.dialect = dialect
        #: the n-th session (1-based) waits on this before answering its session.update
        self.hold_update: dict[int, asyncio.Event] = {}
        self.reject_status = reject_status
        self.close_on_connect = close_on_connect
        self.expires_in_s = expires_in_s
        self.responder = responder
        self._hung: list[ServerConnection] = []
        self.sessions: list[Captured] = []
        self.live: list[ServerConnection] = []
        self._server: Server | None = None
        self._n = 0
        self.changed = asyncio.Event()

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def base(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    async def __aenter__(self) -> FakeRealtime:
        self._server = await serve(self._handler, "127.0.0.1", 0,
                                   process_request=self._process_request, compression=None)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        for conn in self._hung:           # a paused socket never sees the client go
            abort_now(conn)
        self._server.close()
        await self._server.wait_closed()

    def _process_request(self, conn: ServerConnection, request: Request) -> Response | None:
        self.sessions.append(Captured(request.path, request.headers))
        self.changed.set()
        if self.reject_status is not None:
            status = HTTPStatus(self.reject_status)
            return conn.respond(status, f"{status.phrase}\n")
        return None

    async def _handler(self, conn: ServerConnection) -> None:
        captured = self.sessions[-1]
        self._n += 1
        captured.session_id = f"sess_{self._n}"
        self.live.append(conn)
        try:
            if self.close_on_connect is not None:
                await conn.send(json.dumps({
                    "type": "error", "event_id": "e0",
                    "error": {"type": "invalid_request_error", "code": "invalid_api_key",
                              "message": "Incorrect API key provided"}}))
                await conn.close(self.close_on_connect)
                return
            session: dict[str, Any] = {"id": captured.session_id, "object": "realtime.session"}
            if self.expires_in_s is not None:
                session["expires_at"] = int(time.time() + self.expires_in_s)
            if self.dialect == "ga":
                session["type"] = "realtime"
            await conn.send(json.dumps({"type": "session.created", "event_id": "e1",
                                        "session": session}))
            async for message in conn:
                event = json.loads(message)
                captured.events.append(event)
                self.changed.set()
                if event["type"] == "session.update":
                    hold = self.hold_update.get(int(captured.session_id.split("_")[1]))
                    if hold is not None:
                        await hold.wait()
                    await conn.send(json.dumps({"type": "session.updated", "event_id": "e2",
                                                "session": session}))
                elif self.responder is not None:
                    await self.responder(self, conn, event)
        except Exception:  # a dropped test socket ends the handler
            pass
        finally:
            self.live.remove(conn)
            self.changed.set()

    async def send(self, event: dict[str, Any]) -> None:
        """Send ``event`` on every live socket."""
        for conn in list(self.live):
            await conn.send(json.dumps(event))

    async def drop(self, code: int) -> None:
        for conn in list(self.live):
            if code == 1006:
                abort_now(conn)
            else:
                await conn.close(code)

    def hang(self) -> None:
        """Freeze every live socket (nothing read: no events, no pongs; TCP stays open)."""
        for conn in list(self.live):
            conn.transport.pause_reading()
            self._hung.append(conn)

    async def wait_for(self, predicate: Callable[[FakeRealtime], bool],
                       within: float = 10.0) -> None:
        async with asyncio.timeout(within):
            while not predicate(self):
                self.changed.clear()
                await self.changed.wait()

    def all_events(self) -> list[dict[str, Any]]:
        return [e for s in self.sessions for e in s.events]

    def types(self, session: int = -1) -> list[str]:
        return [e["type"] for e in self.sessions[session].events]
