"""SIP over TCP: the connections, their limits and their timers.

:class:`TcpGuard` is the sans-I/O part: which connection may open (``tcp_max_connections``
from everyone, ``tcp_max_per_source`` from one address) and which must close, given
``now``: one whose message has been arriving for longer than ``tcp_message_timeout_s``
(slowloris: a few bytes now and then keep a connection and its buffer for ever), or one
with no message for ``tcp_idle_timeout_s`` and no live call set up over it. A message is
bounded by the parser (64 KiB of headers, 256 KiB of body; more is answered ``513``
when it can be, and the connection closed), so the memory a connection holds is too.

:class:`TcpPort` is the asyncio adapter around it: the listening socket and its own
accept loop, the transports by peer address, and a one-second sweep while any connection
is open. It accepts itself (not ``loop.create_server``) so that a connection over a limit
is closed before any transport or protocol is made for it, and so that running out of
file descriptors (EMFILE/ENFILE on accept) is handled once: asyncio's server would report
every failed accept of a batch to the loop's exception handler, with a traceback each,
and schedule a retry for each. Here it is counted (``reason="fd_exhausted"``), logged as
one throttled line, and accepting pauses for :data:`ACCEPT_BACKOFF_S`.

What we write is bounded too: a peer that leaves more than :data:`MAX_UNREAD` of our
messages unread is closed.

Every refusal and close is counted in ``voicebridge_sip_tcp_dropped_total`` by reason:
``overall``, ``per_source``, ``slow``, ``idle``, ``unread``, ``too_large``, ``malformed``,
``fd_exhausted``.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass

from bridge import metrics
from bridge.logthrottle import Throttle
from bridge.sip.settings import SipSettings

log = logging.getLogger("bridge.sip.service")
_throttled = Throttle(log)

Address = tuple[str, int]
#: How often open connections are checked against their timeouts (seconds).
SWEEP_S = 1.0
#: Accepting pauses this long when the process is out of file descriptors.
ACCEPT_BACKOFF_S = 1.0
#: Connections accepted per readiness event (then the loop runs other callbacks).
ACCEPT_BATCH = 64
LISTEN_BACKLOG = 128
#: Bytes of ours a peer may leave unread (it sends requests but never reads the
#: answers); past this its connection is closed (``reason="unread"``).
MAX_UNREAD = 256 * 1024
_EXHAUSTED = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
#: SO_LINGER on, 0 s: close() sends a RST and keeps no TIME_WAIT state for a refusal.
_RESET = struct.pack("ii", 1, 0)


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
        self.stats = {"refused": 0, "closed": 0, "fd_exhausted": 0}
        self._on_data, self._on_lost, self._busy, self._local = on_data, on_lost, busy, local
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sock: socket.socket | None = None
        self._sweep: asyncio.TimerHandle | None = None
        self._resume: asyncio.TimerHandle | None = None
        self._starting: set[asyncio.Task[None]] = set()

    async def listen(self, host: str, port: int) -> tuple[str, int]:
        loop = self._loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                       flags=socket.AI_PASSIVE)
        family, _, proto, _, address = infos[0]
        sock = socket.socket(family, socket.SOCK_STREAM, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
            sock.listen(LISTEN_BACKLOG)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        self._sock = sock
        loop.add_reader(sock.fileno(), self._accept)
        sockname = sock.getsockname()
        return sockname[0], sockname[1]

    async def close(self) -> None:
        """Close every connection and the listener."""
        for handle in (self._sweep, self._resume):
            if handle is not None:
                handle.cancel()
        self._sweep = self._resume = None
        if self._sock is not None and self._loop is not None:
            self._loop.remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None
        for task in list(self._starting):
            task.cancel()
        for addr, transport in list(self.connections.items()):
            transport.close()
            self.guard.close(addr)
        self.connections.clear()

    async def connect(self, host: str, port: int) -> Address:
        """Open a connection to ``host:port`` (a registrar; ``host`` an address), kept and
        limited like an accepted one, and return its key; OSError when it cannot be opened
        or a limit refuses it. (:meth:`bridge.sip.tls.TlsPort.connect` has the same shape.)"""
        addr: Address = (host, port)
        loop = self._loop = self._loop or asyncio.get_running_loop()
        refused = self.guard.open(addr, loop.time())
        if refused is not None:
            raise OSError(f"SIP/TCP connection limit ({refused})")
        try:
            await loop.create_connection(lambda: _TcpProtocol(self, addr), addr[0], addr[1])
        except BaseException:
            self.guard.close(addr)
            raise
        return addr

    def write(self, addr: Address, data: bytes) -> bool:
        conn = self.connections.get(addr)
        if conn is None:
            return False
        conn.write(data)
        if conn.get_write_buffer_size() > MAX_UNREAD:
            _throttled.log(logging.INFO, "tcp-unread", "closing SIP/TCP connection from "
                           "%s:%d: it leaves our answers unread", addr[0], addr[1])
            self.drop(addr, "unread")
            self._on_lost(addr)
        return True

    def drop(self, addr: Address, reason: str) -> None:
        """Close the connection from ``addr`` because of ``reason`` (counted)."""
        conn = self.connections.pop(addr, None)
        self.guard.close(addr)
        if conn is None:
            return
        self.stats["closed"] += 1
        count(reason)
        if reason == "unread":
            # A graceful close would first flush what the peer does not read: never.
            conn.abort()
        else:
            conn.close()

    # -- accepting --------------------------------------------------------------------------

    def _accept(self) -> None:
        assert self._loop is not None and self._sock is not None
        for _ in range(ACCEPT_BATCH):
            try:
                conn, peer = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue
            except OSError as exc:
                if exc.errno in _EXHAUSTED:
                    self._exhausted(exc)
                else:
                    _throttled.log(logging.WARNING, "tcp-accept", "SIP/TCP accept failed: %s",
                                   exc)
                return
            addr: Address = (peer[0], peer[1])
            refused = self.guard.open(addr, self._loop.time())
            if refused is not None:
                self._refuse(conn, addr, refused)
                continue
            conn.setblocking(False)
            task = self._loop.create_task(self._start(conn, addr))
            self._starting.add(task)
            task.add_done_callback(self._starting.discard)

    def _refuse(self, conn: socket.socket, addr: Address, reason: str) -> None:
        # Closed at once: idle connections must not use up the file descriptors the
        # calls' sockets need, nor one source all of the connections.
        self.stats["refused"] += 1
        count(reason)
        _throttled.log(logging.WARNING, f"tcp-{reason}",
                       "SIP/TCP connection from %s refused (%s): %d open, %d from it",
                       addr[0], reason, len(self.guard), self.guard.from_source(addr[0]))
        try:
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
        finally:
            conn.close()

    async def _start(self, conn: socket.socket, addr: Address) -> None:
        assert self._loop is not None
        try:
            await self._loop.connect_accepted_socket(lambda: _TcpProtocol(self, addr), conn)
        except OSError as exc:
            self.guard.close(addr)
            conn.close()
            log.info("SIP/TCP connection from %s:%d failed: %s", addr[0], addr[1], exc)

    def _exhausted(self, exc: OSError) -> None:
        assert self._loop is not None and self._sock is not None
        self.stats["fd_exhausted"] += 1
        count("fd_exhausted")
        _throttled.log(logging.WARNING, "tcp-fd", "SIP/TCP accept failed (%s): out of file "
                       "descriptors; not accepting for %.0f s", exc.strerror or exc,
                       ACCEPT_BACKOFF_S)
        self._loop.remove_reader(self._sock.fileno())
        self._resume = self._loop.call_later(ACCEPT_BACKOFF_S, self._resume_accepting)

    def _resume_accepting(self) -> None:
        self._resume = None
        if self._sock is not None and self._loop is not None:
            self._loop.add_reader(self._sock.fileno(), self._accept)

    # -- the protocol's calls -------------------------------------------------------------

    def _made(self, transport: asyncio.Transport, addr: Address) -> str | None:
        assert self._loop is not None
        self.connections[addr] = transport
        if self._sweep is None:
            self._sweep = self._loop.call_later(SWEEP_S, self._on_sweep)
        return self._local(transport, addr)

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


class _TcpProtocol(asyncio.Protocol):
    def __init__(self, port: TcpPort, addr: Address) -> None:
        self._port = port
        self._addr = addr
        self._local_host: str | None = None
        self._live = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._live = True
        self._local_host = self._port._made(transport, self._addr)

    def data_received(self, data: bytes) -> None:
        self._port._data(self._addr, data, self._local_host)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._live:
            self._port._lost(self._addr)


__all__ = ["ACCEPT_BACKOFF_S", "SWEEP_S", "TcpGuard", "TcpPort", "count"]
