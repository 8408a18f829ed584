"""The asyncio side of registering: the accounts' :class:`~bridge.sip.register.Registration`
cores, run inside the SIP service.

Theory of operation
-------------------
:class:`Registrations` is made by :class:`bridge.sip.service.SipService` when
``[[sip.accounts]]`` are configured. It reads each account's password from the environment
variable the account names (a missing one is a start-up :class:`ConfigError` naming the
variable, never a value), resolves each registrar's address, and starts the cores. Their
REGISTERs go out through the service's user agent (``UserAgent.send_request``): the same
sockets, and a client transaction that retransmits on UDP and gives up after 64·T1; its
answer or timeout comes back as a ``RequestAnswered`` / ``RequestTimedOut`` event, which
the service hands to :meth:`Registrations.on_event`. Each core has one ``loop.call_at``
timer at its deadline (refresh, retry, end of the binding).

Transports: ``udp`` uses the service's socket; ``tcp`` opens a connection to the registrar
on demand (kept in the service's TCP table, so the answers come back through it, and
closed by the idle sweep like any other); a failed connect is a timeout of the attempt.
``tls`` (or a ``sips:`` registrar) opens a verified TLS connection through the service's
TLS port (:meth:`bridge.sip.tls.TlsPort.connect`: the registrar's certificate is checked
against ``[sip] tls_ca`` and its host name), so it needs ``tls`` in ``[sip] transports``;
a failed handshake is a timeout of the attempt, like a failed TCP connect.

Routing: the Contact we register has a user part unique to the account
(:func:`bridge.sip.register.contact_user_for`); a registrar that forwards a call to the
binding puts it in the Request-URI, and :meth:`Registrations.line_for` says which account
(and so which dialplan) the call came through.

Visibility: ``voicebridge_sip_registration_up{account}``,
``voicebridge_sip_registrations_total{account,result}``, a log line for every change (a
failure says why and when the next try is), and :meth:`Registrations.snapshot` for the
dashboard.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import logging
import os
import random
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from bridge import metrics
from bridge.aio import cancel_all
from bridge.call.leg import LegInfo
from bridge.errors import ConfigError
from bridge.sip.addresses import WILDCARDS, local_address_toward
from bridge.sip.events import Event, Peer, RequestAnswered, RequestTimedOut
from bridge.sip.lines import Account
from bridge.sip.message import Request, SipUri, Uri, parse_uri
from bridge.sip.register import Registration, RegState, Result
from bridge.sip.tcp import TcpPort
from bridge.sip.tls import TlsConnectFailed, TlsPort
from bridge.sip.ua import UserAgent

log = logging.getLogger(__name__)

#: Transports a registration may use.
TRANSPORTS = ("udp", "tcp", "tls")
#: How long a stop waits for the answers to the unregistering REGISTERs (seconds).
UNREGISTER_WAIT_S = 4.0
#: How long a TCP connect to a registrar may take (seconds).
CONNECT_TIMEOUT_S = 10.0
OWNER_PREFIX = "register:"


class Service(Protocol):
    """What the registrations need of :class:`bridge.sip.service.SipService`."""

    settings: Any
    address: str
    port: int
    public_address: str
    tcp: TcpPort
    tls: TlsPort | None
    tls_port: int

    def _command(self, command: Callable[[UserAgent, float], None]) -> None: ...


@dataclass
class _Line:
    """One account: its core, where its registrar is, its timer."""

    index: int
    account: Account
    password: str
    transport: str
    host: str
    port: int
    label: str
    reg: Registration | None = None
    addr: tuple[str, int] | None = None
    timer: asyncio.TimerHandle | None = None
    bound: bool = False                  # as last reported
    tasks: set[asyncio.Task[None]] = field(default_factory=set)


def _transport(account: Account, uri: SipUri) -> str:
    return "tls" if uri.scheme == "sips" else (uri.transport or account.transport)


def read_lines(accounts: tuple[Account, ...], environ: Mapping[str, str]
               ) -> list[_Line]:
    """Check the accounts and read their passwords: ConfigError names what is wrong."""
    lines = []
    for index, account in enumerate(accounts):
        where = f"[[sip.accounts]] {account.user}"
        uri = parse_uri(account.registrar)
        if not isinstance(uri, SipUri):
            raise ConfigError(f"{where}: registrar must be a sip: URI")
        transport = _transport(account, uri)
        if transport not in TRANSPORTS:
            raise ConfigError(f"{where}: transport {transport!r}: choose udp, tcp or tls")
        password = environ.get(account.password_env)
        if password is None:
            raise ConfigError(f"{where}: the environment variable {account.password_env} "
                              "(password_env) is not set")
        label = f"{account.user}@{account.domain or uri.host}"
        lines.append(_Line(index, account, password, transport, uri.host,
                           uri.port or (5061 if transport == "tls" else 5060), label))
    return lines


class Registrations:
    """The accounts' registrations inside one SIP service (see the module docstring)."""

    def __init__(self, service: Service, accounts: tuple[Account, ...],
                 environ: Mapping[str, str] | None = None) -> None:
        self._service = service
        self.lines = read_lines(accounts, os.environ if environ is None else environ)
        for line in self.lines:
            if line.transport not in service.settings.transports:
                raise ConfigError(f"[[sip.accounts]] {line.account.user}: transport "
                                  f"{line.transport}, which [sip] transports does not list")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._rand = random.SystemRandom().random
        #: Set once no account is waiting for the answer to its unregistering REGISTER.
        self._settled = asyncio.Event()

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        for line in self.lines:
            metrics.SIP_REGISTRATION_UP.labels(account=line.label).set(0)
            line.addr = await self._resolve(line)
            line.reg = Registration(line.account, password=line.password,
                                    local=self._local(line), transport=line.transport,
                                    user_agent=self._service.settings.user_agent,
                                    rand=self._rand)
            log.info("registering %s at %s over %s", line.reg.aor, line.account.registrar,
                     line.transport)
            line.reg.start(self._loop.time())
            self._after(line)

    def unregister(self) -> None:
        """Send every account's ``expires=0`` REGISTER now (draining: the registrar stops
        sending calls here, and to a bridge in a cluster it sends them to the others)."""
        if self._loop is None:
            return
        for line in self.lines:
            if line.reg is not None and line.reg.state not in (RegState.UNREGISTERING,
                                                               RegState.STOPPED):
                self._settled.clear()
                line.reg.stop(self._loop.time())
                self._after(line)

    async def stop(self, wait_s: float = UNREGISTER_WAIT_S) -> None:
        """Unregister every account (``expires=0``); wait up to ``wait_s`` for answers."""
        if self._loop is None:
            return
        self.unregister()
        if self._unregistering():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait_s):
                    await self._settled.wait()
        for line in self.lines:
            if line.timer is not None:
                line.timer.cancel()
                line.timer = None
            for error in await cancel_all(list(line.tasks)):
                log.warning("registration %s: task failed while stopping: %r", line.label,
                            error)
            metrics.SIP_REGISTRATION_UP.labels(account=line.label).set(0)

    def _unregistering(self) -> bool:
        return any(line.reg is not None and line.reg.state is RegState.UNREGISTERING
                   for line in self.lines)

    # -- events from the user agent -------------------------------------------------------

    def on_event(self, event: Event) -> bool:
        """A REGISTER's answer or timeout for one of ours: fed to its core (True)."""
        if not isinstance(event, RequestAnswered | RequestTimedOut):
            return False
        if not event.owner.startswith(OWNER_PREFIX) or self._loop is None:
            return False
        line = self.lines[int(event.owner.removeprefix(OWNER_PREFIX))]
        if line.reg is None:
            return True
        now = self._loop.time()
        if isinstance(event, RequestAnswered):
            line.reg.on_response(event.response, now)
        else:
            line.reg.on_timeout(event.cseq, now)
        # Not from inside the service's pump: the next request goes out on the next pass.
        self._loop.call_soon(self._after, line)
        return True

    def route(self, info: LegInfo, uri: Uri) -> LegInfo:
        """``info`` of a call whose Request-URI is ``uri``: for a call through an account's
        registration, called is the account's user and ``extra`` names the account and its
        dialplan (which the call manager then uses)."""
        account = self.line_for(uri)
        if account is None:
            return info
        extra = {**info.extra, "account": account.user}
        if account.dialplan:
            extra["dialplan"] = account.dialplan
        return dataclasses.replace(info, called=account.user, extra=extra)

    def credentials(self, uri: Uri) -> tuple[str, str] | None:
        """The digest user name and password of the account whose Contact ``uri`` is (a
        call through it answers challenges to our requests with them), or None."""
        line = self._line_of(uri)
        return None if line is None else (line.account.login, line.password)

    def line_for(self, uri: Uri) -> Account | None:
        """The account whose registered Contact ``uri`` is (a call through it), or None."""
        line = self._line_of(uri)
        return None if line is None else line.account

    def _line_of(self, uri: Uri) -> _Line | None:
        if not isinstance(uri, SipUri) or not uri.user:
            return None
        for line in self.lines:
            if line.reg is not None and uri.user == line.reg.contact_user:
                return line
        return None

    def snapshot(self) -> list[dict[str, Any]]:
        """Per account: state, registrar, seconds to expiry, failures and last error."""
        now = self._loop.time() if self._loop is not None else 0.0
        out = []
        for line in self.lines:
            reg = line.reg
            bound = reg is not None and reg.is_bound(now)
            until = reg.bound_until if reg is not None else None
            retry = reg.retry_at if reg is not None else None
            out.append({
                "account": line.label, "registrar": line.account.registrar,
                "transport": line.transport, "dialplan": line.account.dialplan,
                "state": reg.state.value if reg is not None else "idle",
                "registered": bound,
                "expires_in_s": round(until - now) if bound and until is not None else None,
                "next_try_in_s": round(retry - now) if retry is not None else None,
                "failures": reg.failures if reg is not None else 0,
                "last_error": reg.last_error if reg is not None else "",
            })
        return out

    # -- driving the cores ----------------------------------------------------------------

    def _after(self, line: _Line) -> None:
        """Send what the core wants sent, report what happened, re-arm its timer."""
        reg, loop = line.reg, self._loop
        if reg is None or loop is None:
            return
        for request in reg.take_requests():
            self._send(line, request)
        for result in reg.take_results():
            self._report(line, result)
        line.bound = reg.is_bound(loop.time())
        metrics.SIP_REGISTRATION_UP.labels(account=line.label).set(1 if line.bound else 0)
        if line.timer is not None:
            line.timer.cancel()
            line.timer = None
        deadline = reg.get_timer()
        if deadline is not None:
            line.timer = loop.call_at(deadline, self._on_timer, line)
        if not self._unregistering():
            self._settled.set()

    def _on_timer(self, line: _Line) -> None:
        line.timer = None
        if line.reg is not None and self._loop is not None:
            line.reg.local = self._local(line)
            line.reg.handle_timer(self._loop.time())
            self._after(line)

    def _report(self, line: _Line, result: Result) -> None:
        metrics.SIP_REGISTRATIONS.labels(account=line.label, result=result.kind).inc()
        reg = line.reg
        assert reg is not None and self._loop is not None
        if not result.failure:
            # A refresh of a binding held all along is routine: not worth a line each time.
            routine = result.kind == "registered" and line.bound
            log.log(logging.DEBUG if routine else logging.INFO, "registration %s: %s",
                    line.label, result.detail)
            return
        retry = reg.retry_at
        later = (f"; next try in {retry - self._loop.time():.0f} s" if retry is not None
                 else "")
        log.warning("registration %s failed (%s): %s%s", line.label, result.kind,
                    result.detail, later)
        if result.kind == "timeout":
            self._spawn(line, self._re_resolve(line))   # the network may have changed

    def _send(self, line: _Line, request: Request) -> None:
        owner = f"{OWNER_PREFIX}{line.index}"
        # TLS connections are keyed by the registrar's name, which its certificate names.
        addr = (line.host, line.port) if line.transport == "tls" else (
            line.addr or (line.host, line.port))
        stream = self._stream(line.transport)
        if stream is not None and addr not in stream.connections:
            self._spawn(line, self._connect_and_send(line, stream, addr, request, owner))
            return
        self._service._command(_sender(request, Peer(line.transport, addr), owner))

    def _stream(self, transport: str) -> TcpPort | None:
        """The service's port for a connection-oriented ``transport`` (None for UDP)."""
        if transport == "tls":
            return self._service.tls
        return self._service.tcp if transport == "tcp" else None

    async def _connect_and_send(self, line: _Line, stream: TcpPort, addr: tuple[str, int],
                                request: Request, owner: str) -> None:
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                key = await stream.connect(*addr)
        except (OSError, TimeoutError, TlsConnectFailed) as exc:
            if line.reg is not None and self._loop is not None:
                line.reg.on_timeout(request.cseq.seq, self._loop.time(),
                                    why=f"cannot connect over {line.transport.upper()} "
                                        f"({exc or 'timeout'})")
                self._after(line)
            return
        self._service._command(_sender(request, Peer(line.transport, key), owner))

    def _spawn(self, line: _Line, coro: Any) -> None:
        assert self._loop is not None
        task = self._loop.create_task(coro)
        line.tasks.add(task)
        task.add_done_callback(line.tasks.discard)

    async def _resolve(self, line: _Line) -> tuple[str, int] | None:
        assert self._loop is not None
        with contextlib.suppress(ValueError):
            ipaddress.ip_address(line.host)
            return (line.host, line.port)
        kind = socket.SOCK_STREAM if line.transport == "tcp" else socket.SOCK_DGRAM
        try:
            infos = await self._loop.getaddrinfo(line.host, line.port, type=kind)
        except OSError as exc:
            log.warning("registration %s: cannot resolve %s (%s); trying again later",
                        line.label, line.host, exc)
            return None
        return (str(infos[0][4][0]), int(infos[0][4][1])) if infos else None

    async def _re_resolve(self, line: _Line) -> None:
        addr = await self._resolve(line)
        if addr is not None:
            line.addr = addr

    def _local(self, line: _Line) -> tuple[str, int]:
        """Our address for Via and Contact toward this registrar: the configured public
        address; else the bound one; else (a wildcard bind) ours toward the registrar."""
        service = self._service
        host = service.settings.public_address or service.address
        if not service.settings.public_address and host in WILDCARDS:
            toward = local_address_toward(line.addr) if line.addr is not None else None
            host = toward or service.public_address
        return host, (service.tls_port if line.transport == "tls" else service.port)


def _sender(request: Request, peer: Peer, owner: str) -> Callable[[UserAgent, float], None]:
    def send(ua: UserAgent, now: float) -> None:
        ua.send_request(request, peer, now, owner)
    return send


__all__ = ["TRANSPORTS", "UNREGISTER_WAIT_S", "Registrations", "read_lines"]
