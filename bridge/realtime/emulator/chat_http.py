"""Chat Completions over HTTP on the emulator's own port, beside its WebSocket.

``websockets`` parses only a handshake (a GET without a body), so the emulator's
connections are :class:`ChatAwareConnection`: it looks at the first bytes a client sends;
a ``POST`` is read here as one HTTP/1.1 request (headers up to :data:`MAX_HEAD`, a
``Content-Length`` body up to :data:`MAX_BODY`, within :data:`READ_TIMEOUT_S`), handed to
:class:`~bridge.realtime.emulator.chat.ChatCore`, and answered (a streamed answer with
chunked transfer coding, one SSE event per chunk, ``delay_s`` apart), then the connection
closes. Anything else goes to ``websockets`` untouched. One URL serves both legs: the
bridge derives its chat URL from the Realtime one.
"""

from __future__ import annotations

import asyncio
import logging
from http import HTTPStatus
from typing import Any

from websockets.asyncio.server import ServerConnection

from bridge.realtime.emulator.chat import ChatCore, ChatReply

__all__ = ["MAX_BODY", "MAX_HEAD", "ChatAwareConnection", "connection_class"]

log = logging.getLogger("bridge.realtime.emulator")

MAX_HEAD = 16 * 1024
MAX_BODY = 1024 * 1024
READ_TIMEOUT_S = 10.0


def _head(status: int, headers: list[tuple[str, str]], *, chunked: bool,
          length: int = 0) -> bytes:
    lines = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}", "connection: close"]
    lines += [f"{k}: {v}" for k, v in headers]
    lines.append("transfer-encoding: chunked" if chunked else f"content-length: {length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _plain(status: int, text: str) -> ChatReply:
    return ChatReply(status, [("content-type", "text/plain")], (text + "\n").encode())


class ChatAwareConnection(ServerConnection):
    """A ``websockets`` connection that serves a plain ``POST`` itself (module docstring)."""

    chat: ChatCore

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._mode = ""             # "" undecided, "ws", "http"
        self._first = b""
        self._reader: asyncio.StreamReader | None = None
        self._http_task: asyncio.Task[None] | None = None

    def data_received(self, data: bytes) -> None:
        if self._mode == "ws":
            super().data_received(data)
            return
        if self._reader is not None:
            self._reader.feed_data(data)
            return
        self._first += data
        if len(self._first) < 5 and b" " not in self._first:
            return
        first, self._first = self._first, b""
        if first.startswith(b"POST "):
            self._mode = "http"
            self._reader = asyncio.StreamReader(limit=MAX_HEAD)
            self._reader.feed_data(first)
            self._http_task = asyncio.get_running_loop().create_task(self._serve())
        else:
            self._mode = "ws"
            super().data_received(first)

    def eof_received(self) -> None:
        if self._reader is not None:
            self._reader.feed_eof()
            return
        super().eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._reader is not None:
            self._reader.feed_eof()
        super().connection_lost(exc)

    async def _serve(self) -> None:
        try:
            reply = await self._read_and_answer()
            await self._write(reply)
        except Exception:       # asyncio.CancelledError is not an Exception
            log.exception("emulator: a Chat Completions request failed")
        finally:
            self.transport.close()

    async def _read_and_answer(self) -> ChatReply:
        assert self._reader is not None
        try:
            async with asyncio.timeout(READ_TIMEOUT_S):
                head = await self._reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, target, _version = lines[0].split(" ", 2)
                headers: dict[str, str] = {}
                for line in lines[1:]:
                    if line:
                        name, _, value = line.partition(":")
                        headers[name.strip().lower()] = value.strip()
                if "transfer-encoding" in headers:
                    return _plain(411, "a Content-Length body is required")
                length = int(headers.get("content-length", "0"))
                if not 0 <= length <= MAX_BODY:
                    return _plain(413, "request body too large")
                body = await self._reader.readexactly(length)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            return _plain(400, "malformed HTTP request")
        except TimeoutError:
            return _plain(408, "request timeout")
        return self.chat.handle(method, target, headers, body)

    async def _write(self, reply: ChatReply) -> None:
        if reply.chunks is None:
            self.transport.write(_head(reply.status, reply.headers, chunked=False,
                                       length=len(reply.body)) + reply.body)
            return
        self.transport.write(_head(reply.status, reply.headers, chunked=True))
        for i, chunk in enumerate(reply.chunks):
            if self.transport.is_closing():
                return
            if i and reply.delay_s > 0:
                await asyncio.sleep(reply.delay_s)
            self.transport.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
        self.transport.write(b"0\r\n\r\n")


def connection_class(chat: ChatCore) -> type[ChatAwareConnection]:
    """A connection class serving ``chat`` (for ``serve(create_connection=...)``)."""
    return type("EmulatorConnection", (ChatAwareConnection,), {"chat": chat})
