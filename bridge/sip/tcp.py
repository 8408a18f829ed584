"""SIP over TCP: the connections, their limits and their timers.

:class:`TcpGuard` is the sans-I/O part: which connection may open (``tcp_max_connections``
from everyone, ``tcp_max_per_source`` from one address) and which must close, given
``now``: one whose message has been arriving for longer than ``tcp_message_timeout_s``
(slowloris: a few bytes now and then keep a connection and its buffer for ever), or one
with no message for ``tcp_idle_timeout_s`` and no live call set up over it. A message is
bounded by the parser (64 KiB of headers, 256 KiB of body; more is answered ``513``
when it can be, and the connection closed), so the memory a connection holds is too.

:class:`TcpPort` is the asyncio adapter around it: the listener, the transports by peer
address, a one-second sweep while any connection is open, and accept failures. When the
process is out of file descriptors (EMFILE/ENFILE), asyncio's accept loop reports it to
the loop's exception handler (with a traceback, every time) and stops accepting for a
second; :class:`TcpPort` catches that report for its own sockets, counts it
(``reason="fd_exhausted"``) and logs a throttled line without the traceback.

Every refusal and close is counted in ``voicebridge_sip_tcp_dropped_total`` by reason:
``overall``, ``per_source``, ``slow``, ``idle``, ``too_large``, ``malformed``,
``fd_exhausted``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bridge import metrics
from bridge.logthrottle import Throttle
from bridge.sip.settings import SipSettings

log = logging.getLogger("bridge.sip.service")
_throttled = Throttle(log)

Address = tuple[str, int]
#: How often open connections are checked against their timeouts (seconds).
SWEEP_S = 1.0
#: What asyncio's accept loop reports when accept() fails for lack of descriptors.
_ACCEPT_EXHAUSTED = "socket.accept() out of system resource"


@dataclass
class _Conn:
    opened: float
    #: When the last whole message arrived (or the connection opened).
    last_message: float
    #: When the message now arriving began; None between messages.
    message_since: float | None = None


class TcpGuard:
    """Connection limits and timeouts, sans-I/O (see the module docstring)."""

    def __init__(self, settings: SipSettings) -> None:
        self.max_total = settings.tcp_max_connections
        self.max_per_source = settings.tcp_max_per_source
        self.message_timeout = settings.tcp_message_timeout_s
        self.idle_timeout = settings.tcp_idle_timeout_s
        self._conns: dict[Address, _Conn] = {}
        self._per_source: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._conns)

    def from_source(self, host: str) -> int:
        return self._per_source.get(host, 0)

    def open(self, addr: Address, now: float) -> str | None:
        """Register a new connection; or the reason it must be refused."""
        if len(self._conns) >= self.max_total:
            return "overall"
        if self._per_source.get(addr[0], 0) >= self.max_per_source:
            return "per_source"
        self._conns[addr] = _Conn(now, now)
        self._per_source[addr[0]] = self._per_source.get(addr[0], 0) + 1
        return None

    def close(self, addr: Address) -> None:
        if self._conns.pop(addr, None) is None:
            return
        left = self._per_source.get(addr[0], 1) - 1
        if left > 0:
            self._per_source[addr[0]] = left
        else:
            self._per_source.pop(addr[0], None)

    def received(self, addr: Address, now: float, *, messages: bool, in_progress: bool
                 ) -> None:
        """Bytes arrived: ``messages`` when they completed at least one message,
        ``in_progress`` when a message is unfinished after them."""
        conn = self._conns.get(addr)
        if conn is None:
            return
        if messages:
            conn.last_message = now
            conn.message_since = now if in_progress else None
        elif not in_progress:
            conn.message_since = None            # keep-alive CRLFs only
        elif conn.message_since is None:
            conn.message_since = now

    def expired(self, now: float, busy: Callable[[Address], bool]
                ) -> list[tuple[Address, str]]:
        """Connections past a timeout, with the reason (``slow`` or ``idle``); ``busy``
        says whether a live call was set up over one (then it is not idle)."""
        out: list[tuple[Address, str]] = []
        for addr, conn in self._conns.items():
            if conn.message_since is not None:
                if self.message_timeout and now - conn.message_since >= self.message_timeout:
                    out.append((addr, "slow"))
            elif (self.idle_timeout and now - conn.last_message >= self.idle_timeout
                  and not busy(addr)):
                out.append((addr, "idle"))
        return out


def count(reason: str) -> None:
    metrics.SIP_TCP_DROPPED.labels(reason=reason).inc()
    if reason in ("overall", "per_source"):
        metrics.SIP_TCP_REFUSED.inc()


class TcpPort:
    """The SIP/TCP listener and its connections (see the module docstring).

    ``on_data(data, addr, local_host)`` feeds the user agent and returns (whether a whole
    message was among the bytes, whether a message is unfinished after them);
    ``on_lost(addr)`` tells it the stream is gone; ``busy(addr)``: a live call on it;
    ``local(transport, addr)``: the address of ours the peer reached (or None).
    """

    def __init__(self, settings: SipSettings,
                 on_data: Callable[[bytes, Address, str | None], tuple[bool, bool]],
                 on_lost: Callable[[Address], None], busy: Callable[[Address], bool],
                 local: Callable[[asyncio.BaseTransport, Address], str | None]) -> None:
        self.guard = TcpGuard(settings)
        self.connections: dict[Address, asyncio.Transport] = {}
        self.server: asyncio.Server | None = None
        self.stats = {"refused": 0, "closed": 0, "fd_exhausted": 0}
        self._on_data, self._on_lost, self._busy, self._local = on_data, on_lost, busy, local
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sweep: asyncio.TimerHandle | None = None
        self._previous_handler: Any = None

    async def listen(self, host: str, port: int) -> tuple[str, int]:
        loop = self._loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: _TcpProtocol(self), host, port,
                                               reuse_address=True)
        self._previous_handler = loop.get_exception_handler()
        loop.set_exception_handler(self._exception_handler)
        sockname = self.server.sockets[0].getsockname()
        return sockname[0], sockname[1]

    async def close(self) -> None:
        """Close every connection and the listener."""
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        for addr, transport in list(self.connections.items()):
            transport.close()
            self.guard.close(addr)
        self.connections.clear()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
            self.server = None
        loop = self._loop
        if loop is not None and loop.get_exception_handler() == self._exception_handler:
            loop.set_exception_handler(self._previous_handler)

    def write(self, addr: Address, data: bytes) -> bool:
        conn = self.connections.get(addr)
        if conn is None:
            return False
        conn.write(data)
        return True

    def drop(self, addr: Address, reason: str) -> None:
        """Close the connection from ``addr`` because of ``reason`` (counted)."""
        conn = self.connections.pop(addr, None)
        self.guard.close(addr)
        if conn is None:
            return
        self.stats["closed"] += 1
        count(reason)
        conn.close()

    # -- the protocol's calls -------------------------------------------------------------

    def _made(self, transport: asyncio.Transport) -> tuple[Address, str | None] | None:
        assert self._loop is not None
        peer = transport.get_extra_info("peername")
        addr: Address = (peer[0], peer[1])
        refused = self.guard.open(addr, self._loop.time())
        if refused is not None:
            # Closed at once: idle connections must not use up the file descriptors the
            # calls' sockets need, nor one source all of the connections.
            self.stats["refused"] += 1
            count(refused)
            _throttled.log(logging.WARNING, f"tcp-{refused}",
                           "SIP/TCP connection from %s refused (%s): %d open, %d from it",
                           addr[0], refused, len(self.guard), self.guard.from_source(addr[0]))
            transport.abort()
            return None
        self.connections[addr] = transport
        if self._sweep is None:
            self._sweep = self._loop.call_later(SWEEP_S, self._on_sweep)
        return addr, self._local(transport, addr)

    def _data(self, addr: Address, data: bytes, local_host: str | None) -> None:
        assert self._loop is not None
        if addr not in self.connections:
            return
        messages, in_progress = self._on_data(data, addr, local_host)
        self.guard.received(addr, self._loop.time(), messages=messages,
                            in_progress=in_progress)

    def _lost(self, addr: Address) -> None:
        self.connections.pop(addr, None)
        self.guard.close(addr)
        self._on_lost(addr)

    def _on_sweep(self) -> None:
        assert self._loop is not None
        self._sweep = None
        for addr, reason in self.guard.expired(self._loop.time(), self._busy):
            _throttled.log(logging.INFO, f"tcp-{reason}", "closing SIP/TCP connection from "
                           "%s:%d: %s", addr[0], addr[1],
                           "no whole message in time" if reason == "slow" else "idle")
            self.drop(addr, reason)
            self._on_lost(addr)
        if self.connections:
            self._sweep = self._loop.call_later(SWEEP_S, self._on_sweep)

    def _exception_handler(self, loop: asyncio.AbstractEventLoop,
                           context: dict[str, Any]) -> None:
        if context.get("message") == _ACCEPT_EXHAUSTED and self._ours(context.get("socket")):
            # asyncio stops accepting on this socket for a second, then tries again.
            self.stats["fd_exhausted"] += 1
            count("fd_exhausted")
            exc = context.get("exception")
            _throttled.log(logging.WARNING, "tcp-fd", "SIP/TCP accept failed (%s): out of "
                           "file descriptors; not accepting for a second",
                           getattr(exc, "strerror", None) or exc)
            return
        if self._previous_handler is not None:
            self._previous_handler(loop, context)
        else:
            loop.default_exception_handler(context)

    def _ours(self, sock: Any) -> bool:
        if sock is None or self.server is None:
            return False
        try:
            fileno = sock.fileno()
        except OSError:
            return False
        return any(s.fileno() == fileno for s in self.server.sockets)


class _TcpProtocol(asyncio.Protocol):
    def __init__(self, port: TcpPort) -> None:
        self._port = port
        self._addr: Address | None = None
        self._local_host: str | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        made = self._port._made(transport)
        if made is not None:
            self._addr, self._local_host = made

    def data_received(self, data: bytes) -> None:
        if self._addr is not None:
            self._port._data(self._addr, data, self._local_host)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._addr is not None:
            self._port._lost(self._addr)


__all__ = ["SWEEP_S", "TcpGuard", "TcpPort", "count"]
