"""SIP over TLS (RFC 3261 §26.2, RFC 5630): the listener, client connections, contexts.

:class:`TlsPort` is :class:`bridge.sip.tcp.TcpPort` with an SSL context: the same accept
loop, connection caps (``tcp_max_connections``, ``tcp_max_per_source``), slowloris and
idle timeouts and unread-output bound, plus a handshake that must finish within
``tls_handshake_timeout_s``. A connection counts against the caps from its accept, so
handshakes in progress are bounded too. A failed handshake (not TLS at all, a protocol
or version we refuse, a client certificate missing or not signed by ``tls_ca`` when
``tls_verify_client`` is on, the time limit, the peer going away) closes the connection,
is counted in ``voicebridge_sip_tls_handshake_failed_total{side, reason}`` and logged as
one throttled line. TLS 1.2 is the minimum either way.

Messages that arrive over TLS reach the user agent with transport ``"tls"``: it answers
over the same connection, writes ``SIP/2.0/TLS`` and our TLS port in its Via, and a
Contact that is ``sips:`` when the dialog asked for one (§12.1.1: a ``sips:``
Request-URI, or top Record-Route, or Contact) and ``sip:…;transport=tls`` otherwise.
Requests it sends inside a call set up over TLS (BYE, REFER, re-INVITE answers) go back
over that connection while it is up.

The client side
---------------
The same port opens TLS connections to servers, verifying the server's certificate
against ``tls_ca`` (or the system's store when unset) and its name against the host we
connect to; when ``tls_cert``/``tls_key`` are set they are presented as our client
certificate. The API, for anything in the SIP package that sends requests:

``await port.connect(host, port)``
    Open a connection to ``host:port`` (or reuse the one that is up; concurrent callers
    share one attempt) and return its key, ``(host, port)`` exactly as given. Raises
    :class:`TlsConnectFailed` when it cannot connect or the certificate
    does not verify; that failure is counted (``side="client"``).
``port.send(key, data)``
    Write to the connection with that key. With none up, and the key not one of a
    connection a peer made to us (that one is gone for good: its port was the peer's),
    a client connection is opened to it and ``data`` is sent once it is up (queued up to
    :data:`bridge.sip.tcp.MAX_UNREAD` bytes; past that, or on failure, dropped and counted).
:func:`target_of`
    The key for a ``sips:`` or ``;transport=tls`` URI: its ``maddr`` or host, and its port
    or 5061.

Bytes that arrive on a client connection go to the user agent like any other TLS bytes
(keyed by the same ``(host, port)``), so responses reach its client transactions and a
request the server sends back over the connection is answered over it. The user agent
core reaches this port by itself: a message it queues for ``Peer("tls", key)`` is
handed to :meth:`TlsPort.send` by the service. Client connections obey the idle timeout
like accepted ones (reopened on the next send).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bridge import metrics
from bridge.errors import ConfigError, SipError
from bridge.logthrottle import Throttle
from bridge.sip.settings import SipSettings
from bridge.sip.tcp import MAX_UNREAD, Address, TcpPort, _TcpProtocol, count
from bridge.sip.uri import SipUri

log = logging.getLogger("bridge.sip.service")
_throttled = Throttle(log)

DEFAULT_TLS_PORT = 5061
#: Addresses of connections peers made to us that are remembered (so that a message for
#: one of them, once it is closed, is dropped rather than sent to a new connection).
ACCEPTED_MEMORY = 4096
#: Client connections being opened at once; more sends to new targets are dropped.
MAX_OPENING = 64
#: A client connection (TCP connect and handshake) must be up within this many times
#: ``tls_handshake_timeout_s``.
CONNECT_FACTOR = 2


class TlsConnectFailed(SipError):
    """A client TLS connection could not be opened or its server not verified."""


def _readable(key: str, path: str | None) -> str:
    if not path:
        raise ConfigError(f"[sip] {key}: needed for the tls transport (a PEM file; "
                          "`voicebridge dev-cert` makes one for testing)")
    try:
        with Path(path).open("rb") as handle:
            handle.read(1)
    except OSError as exc:
        raise ConfigError(f"[sip] {key}: cannot read {path}: {exc.strerror or exc}") from None
    return path


def _no_password() -> bytes:
    raise ConfigError("[sip] tls_key: the key is encrypted; give an unencrypted key file "
                      "(readable by this service only)")


def _load_chain(context: ssl.SSLContext, cert: str, key: str) -> None:
    try:
        context.load_cert_chain(cert, key, password=_no_password)
    except ssl.SSLError as exc:
        raise ConfigError(f"[sip] tls_cert {cert} / tls_key {key}: not a usable certificate "
                          f"and key ({exc.reason or exc})") from None


def _load_ca(context: ssl.SSLContext, ca: str) -> None:
    try:
        context.load_verify_locations(cafile=ca)
    except (ssl.SSLError, ValueError) as exc:
        raise ConfigError(f"[sip] tls_ca: {ca} holds no usable CA certificate ({exc})"
                          ) from None


def server_context(settings: SipSettings) -> ssl.SSLContext:
    """The listener's context: our certificate, TLS 1.2 or later, client certificates
    required and checked against ``tls_ca`` when ``tls_verify_client`` is on."""
    cert = _readable("tls_cert", settings.tls_cert)
    key = _readable("tls_key", settings.tls_key)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    _load_chain(context, cert, key)
    if settings.tls_verify_client:
        if not settings.tls_ca:
            raise ConfigError("[sip] tls_verify_client: needs tls_ca (the CA certificates "
                              "that client certificates must be signed by)")
        _load_ca(context, _readable("tls_ca", settings.tls_ca))
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def client_context(settings: SipSettings) -> ssl.SSLContext:
    """The context of connections we open: the server's certificate verified against
    ``tls_ca`` (or the system's store) and its host name checked; our certificate, when
    configured, offered as the client certificate."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)      # CERT_REQUIRED, check_hostname
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if settings.tls_ca:
        _load_ca(context, _readable("tls_ca", settings.tls_ca))
    else:
        context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    if settings.tls_cert and settings.tls_key:
        _load_chain(context, settings.tls_cert, settings.tls_key)
    return context


def target_of(uri: SipUri) -> Address:
    """Where a ``sips:`` or ``;transport=tls`` URI is reached: (maddr or host, port)."""
    return uri.param("maddr") or uri.host, uri.port or DEFAULT_TLS_PORT


def failure_reason(exc: BaseException) -> str:
    """The ``reason`` label of a failed handshake."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return "certificate"
    if isinstance(exc, ssl.SSLError):
        text = f"{exc.reason or ''} {exc}".upper()
        return "certificate" if "CERTIFICATE" in text or "UNKNOWN_CA" in text else "protocol"
    if isinstance(exc, TimeoutError) or "taking longer" in str(exc):
        return "timeout"
    return "closed"


@dataclass
class _Opening:
    """A client connection being opened: the bytes waiting for it, who waits for it."""

    done: asyncio.Future[None]
    queue: list[bytes] = field(default_factory=list)
    size: int = 0


class TlsPort(TcpPort):
    """The SIP/TLS listener and client connections (see the module docstring)."""

    def __init__(self, settings: SipSettings,
                 on_data: Callable[[bytes, Address, str | None], tuple[bool, bool]],
                 on_lost: Callable[[Address], None], busy: Callable[[Address], bool],
                 local: Callable[[asyncio.BaseTransport, Address], str | None]) -> None:
        """Loads the certificate, key and CA now: a :class:`ConfigError` names the file."""
        super().__init__(settings, on_data, on_lost, busy, local)
        if settings.tls_handshake_timeout_s <= 0:
            raise ConfigError("[sip] tls_handshake_timeout_s: must be above 0 (got "
                              f"{settings.tls_handshake_timeout_s})")
        self.server = server_context(settings)
        self.client = client_context(settings)
        self.handshake_timeout = float(settings.tls_handshake_timeout_s)
        self.stats.update({"handshake_failed": 0, "client_failed": 0})
        self._accepted: OrderedDict[Address, None] = OrderedDict()
        self._opening: dict[Address, _Opening] = {}
        self._connecting: set[asyncio.Task[None]] = set()

    async def close(self) -> None:
        for task in list(self._connecting):
            task.cancel()
        await super().close()

    # -- server side ------------------------------------------------------------------------

    async def _start(self, conn: socket.socket, addr: Address) -> None:
        assert self._loop is not None
        self._accepted[addr] = None
        self._accepted.move_to_end(addr)
        if len(self._accepted) > ACCEPTED_MEMORY:
            self._accepted.popitem(last=False)
        try:
            await self._loop.connect_accepted_socket(
                lambda: _TcpProtocol(self, addr), conn, ssl=self.server,
                ssl_handshake_timeout=self.handshake_timeout)
        except OSError as exc:          # ssl.SSLError, resets, the handshake timeout
            self.guard.close(addr)
            conn.close()
            self._failed("server", addr, exc)

    def _failed(self, side: str, addr: Address, exc: BaseException) -> None:
        reason = failure_reason(exc)
        self.stats["handshake_failed" if side == "server" else "client_failed"] += 1
        metrics.SIP_TLS_HANDSHAKE_FAILED.labels(side=side, reason=reason).inc()
        _throttled.log(logging.INFO, f"tls-{side}-{reason}", "SIP/TLS %s %s:%d failed (%s): "
                       "%s", "handshake from" if side == "server" else "connection to",
                       addr[0], addr[1], reason, exc)

    # -- client side ------------------------------------------------------------------------

    async def connect(self, host: str, port: int = DEFAULT_TLS_PORT) -> Address:
        """Open (or reuse) a verified client connection to ``host:port``; its key."""
        key: Address = (host, port)
        if key in self.connections:
            return key
        opening = self._open(key)
        if opening is None:
            raise TlsConnectFailed(f"SIP/TLS: too many connections being opened ({key})")
        await asyncio.shield(opening.done)
        return key

    def send(self, key: Address, data: bytes) -> None:
        """Write ``data`` to connection ``key``, opening a client connection when needed."""
        if self.write(key, data):
            return
        if key in self._accepted:
            _throttled.log(logging.INFO, "tls-gone", "no SIP/TLS connection from %s:%d any "
                           "more; message dropped", key[0], key[1])
            return
        opening = self._open(key)
        if opening is None or opening.size + len(data) > MAX_UNREAD:
            count("unread")
            _throttled.log(logging.INFO, "tls-queue", "SIP/TLS message to %s:%d dropped: "
                           "too much waiting for connections", key[0], key[1])
            return
        opening.queue.append(data)
        opening.size += len(data)

    def _open(self, key: Address) -> _Opening | None:
        opening = self._opening.get(key)
        if opening is not None:
            return opening
        if len(self._opening) >= MAX_OPENING:
            return None
        loop = self._loop or asyncio.get_running_loop()
        self._loop = loop
        opening = self._opening[key] = _Opening(loop.create_future())
        opening.done.add_done_callback(_retrieve)
        task = loop.create_task(self._connect(key, opening))
        self._connecting.add(task)
        task.add_done_callback(self._connecting.discard)
        return opening

    async def _connect(self, key: Address, opening: _Opening) -> None:
        assert self._loop is not None
        try:
            refused = self.guard.open(key, self._loop.time())
            if refused is not None:
                count(refused)
                raise TlsConnectFailed(f"SIP/TLS connection to {key[0]}:{key[1]} refused: "
                                       f"{refused} connection limit")
            try:
                # The handshake has its own limit; this one also bounds the TCP connect
                # (an address that never answers would hold the attempt for minutes).
                async with asyncio.timeout(CONNECT_FACTOR * self.handshake_timeout):
                    await self._loop.create_connection(
                        lambda: _TcpProtocol(self, key), key[0], key[1], ssl=self.client,
                        server_hostname=key[0], ssl_handshake_timeout=self.handshake_timeout)
            except OSError as exc:              # TimeoutError, ssl.SSLError, refusals
                self.guard.close(key)
                self._failed("client", key, exc)
                raise TlsConnectFailed(f"SIP/TLS connection to {key[0]}:{key[1]} failed "
                                       f"({failure_reason(exc)}): {exc}") from exc
            for data in opening.queue:
                self.write(key, data)
            opening.done.set_result(None)
        except TlsConnectFailed as exc:
            opening.done.set_exception(exc)
        except asyncio.CancelledError:
            # Whoever waits in connect() is told why, not handed our cancellation.
            opening.done.set_exception(TlsConnectFailed("SIP/TLS: the service is stopping"))
            raise
        finally:
            self._opening.pop(key, None)


def _retrieve(future: asyncio.Future[None]) -> None:
    """Mark a failure as seen (a send nobody awaits must not log 'never retrieved')."""
    if not future.cancelled():
        future.exception()


__all__ = ["DEFAULT_TLS_PORT", "TlsConnectFailed", "TlsPort", "client_context",
           "failure_reason", "server_context", "target_of"]
