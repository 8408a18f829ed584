"""The asyncio adapter of the SIP user agent: sockets, one timer, and call legs.

Theory of operation
-------------------
:class:`SipService` owns one :class:`~bridge.sip.ua.UserAgent` and the sockets that feed
it: a UDP :class:`asyncio.DatagramProtocol` and a TCP server whose connections are keyed
by the peer's address (and a TLS one, :mod:`bridge.sip.tls`, when configured). Every
callback does the same three steps: hand the bytes and ``loop.time()`` to the core, then
:meth:`SipService._pump`: write what the core wants written, act on its events, and re-arm
*the one* timer (``loop.call_at`` at the core's earliest deadline; never a task per
transaction).

Each incoming call runs in a task of its own (held in a set): it opens an RTP endpoint
from the port range, answers the offer (or makes ours when the INVITE had none), sends
the 200, waits for the ACK and then awaits ``on_call(leg)`` for the call's duration; when
``on_call`` returns and the leg is still up, it hangs up with a BYE. The core's events
drive the leg: BYE from the far end and the ACK timeout end it, re-INVITEs reconfigure
RTP and hold/resume its sending, INFO digits and NOTIFY sipfrag go to the leg.

Which address we advertise: a configured ``public_address`` (NAT) always; else a specific
bound address as is; else (bound to a wildcard) the address of ours the caller reached, per
peer: for TCP the connection's own address, for UDP (where ``recvfrom`` on a wildcard
socket does not say which address a datagram came in on) the source address the routing
table picks toward the peer, which is the one it reached except on asymmetric routes. It
goes to the core with every message (``local_host``), which puts it in the call's Contact
and in-dialog Via, and into the call's SDP. One host-wide guess (``gethostname()``) would
be 127.0.1.1 on many Linux hosts: callers on the LAN would send their RTP and BYE into
their own loopback.

There is no call logic here beyond that: what a call does belongs to ``on_call``.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
import os
import socket
from collections.abc import Awaitable, Callable, Mapping

from bridge import metrics
from bridge.aio import cancel_all
from bridge.logthrottle import Throttle
from bridge.rtp.endpoint import PortAllocator
from bridge.sip.addresses import WILDCARDS, local_address_toward, plain_host, public_guess
from bridge.sip.admission import Gate, Load
from bridge.sip.answering import Answering, EarlyUpstreams, _Pending
from bridge.sip.events import Challenged, RequestAnswered, RequestTimedOut
from bridge.sip.leg import SipLeg
from bridge.sip.message import Request
from bridge.sip.proxies import TrustedProxies
from bridge.sip.registrations import Registrations
from bridge.sip.settings import SipSettings
from bridge.sip.tcp import TcpPort
from bridge.sip.tls import TlsPort
from bridge.sip.trunkauth import TrunkAuth
from bridge.sip.trunkcalls import call_credentials
from bridge.sip.ua import (
    ByeReceived,
    CallCancelled,
    CallEnded,
    CallEstablished,
    CallKey,
    DtmfInfo,
    Event,
    Hold,
    IncomingCall,
    MediaUpdated,
    OptionsAnswered,
    Peer,
    ReferDone,
    ReferProgress,
    Rejection,
    Resume,
    UserAgent,
)

log = logging.getLogger(__name__)
_throttled = Throttle(log)

Address = tuple[str, int]
#: The ``[rtp]`` port range when none is given (one port per call).
DEFAULT_RTP_PORTS = (20000, 20999)
#: Peers whose route source address is remembered; past this the memory starts over (a
#: spray of requests from many addresses must not grow it without bound).
LOCAL_HOST_CACHE = 4096


class SipService(Answering):
    """SIP over UDP and TCP for inbound calls; see the module docstring."""

    def __init__(self, settings: SipSettings, on_call: Callable[[SipLeg], Awaitable[None]],
                 *, rtp_ports: tuple[int, int] = DEFAULT_RTP_PORTS,
                 can_admit: Callable[[], bool] | None = None,
                 early: EarlyUpstreams | None = None,
                 env: Mapping[str, str] | None = None) -> None:
        """``settings`` as loaded (``[sip]``); ``rtp_ports``: the ``[rtp]`` range, one port
        per call; ``can_admit``: asked before a new INVITE is let in (False: 503);
        ``early``: opens a call's upstream as its INVITE is answered; ``env``: where the
        trunks' passwords are read (default: this process's environment)."""
        self.settings = settings
        self.rtp_ports = rtp_ports
        self._on_call = on_call
        self._can_admit = can_admit
        self._early = early
        #: The admission decision (allowlist, draining, rates, unACKed INVITEs, capacity).
        self.gate = Gate(settings)
        #: Digest authentication of the trunks' INVITEs (None: no trunk asks for it).
        self.auth = TrunkAuth.from_env(settings.trunks, os.environ if env is None else env)
        self._proxies = TrustedProxies(settings.trusted_proxies)
        self._ports = PortAllocator(*rtp_ports)
        self.ua: UserAgent | None = None
        self.address = settings.host
        self.port = settings.port
        self.public_address = settings.public_address or settings.host
        #: Advertise, per peer, the address of ours it reached (wildcard bind, no NAT).
        self._per_peer = False
        #: Peer IP -> our address toward it (see the module docstring).
        self._local_hosts: dict[str, str] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._udp: asyncio.DatagramTransport | None = None
        self.tcp = TcpPort(settings, self._feed_stream, self._stream_lost, self._busy_stream,
                           self._connection_local)
        self._tcp = self.tcp.connections
        #: SIP over TLS (``bridge.sip.tls``; loads the certificate: ConfigError), or None.
        self.tls: TlsPort | None = None
        if "tls" in settings.transports:
            self.tls = TlsPort(settings, functools.partial(self._feed_stream, transport="tls"),
                               self._stream_lost, self._busy_stream, self._connection_local)
        self.tls_port = settings.tls_port
        #: Set to stop waiting for the answers to our BYEs when stopping (a second signal).
        self.hurry = asyncio.Event()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._pending: dict[CallKey, _Pending] = {}
        self._legs: dict[CallKey, SipLeg] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.stats = {"calls": 0, "rejected": 0, "options": 0}
        #: ``[[sip.accounts]]`` kept registered (passwords read from the environment now).
        self.registrations = (Registrations(self, settings.accounts) if settings.accounts
                              else None)

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._loop = loop
        host, port = self.settings.host, self.settings.port
        for attempt in range(5):
            try:
                await self._bind(host, port)
                break
            except OSError:
                await self._close_sockets()
                if port != 0 or attempt == 4:
                    raise
        self.public_address = self.settings.public_address or public_guess(self.address)
        self._per_peer = not self.settings.public_address and self.address in WILDCARDS
        self.ua = UserAgent(self.settings, host=self.public_address, port=self.port,
                            admission=self._admit,
                            credentials=call_credentials(
                                self.settings.trunks, self.auth,
                                None if self.registrations is None
                                else self.registrations.credentials))
        self.ua.tls_port = self.tls_port
        log.info("SIP listening on %s:%d (%s), contact address %s", self.address, self.port,
                 "/".join(self.settings.transports),
                 "per caller: the address it reached" if self._per_peer
                 else self.public_address)
        if self.registrations is not None:
            await self.registrations.start()

    async def _bind(self, host: str, port: int) -> None:
        assert self._loop is not None
        if "udp" in self.settings.transports:
            transport, _ = await self._loop.create_datagram_endpoint(
                lambda: _UdpProtocol(self), local_addr=(host, port))
            self._udp = transport
            sockname = transport.get_extra_info("sockname")
            self.address, port = sockname[0], sockname[1]
        if "tcp" in self.settings.transports:
            self.address, port = await self.tcp.listen(host, port)
        self.port = port
        if self.tls is not None:
            self.address, self.tls_port = await self.tls.listen(host, self.settings.tls_port)
            log.info("SIP over TLS listening on %s:%d", self.address, self.tls_port)
            if not {"udp", "tcp"} & set(self.settings.transports):
                self.port = self.tls_port

    async def _close_sockets(self) -> None:
        if self._udp is not None:
            self._udp.close()
            self._udp = None
        await self.tcp.close()
        if self.tls is not None:
            await self.tls.close()

    async def stop(self) -> None:
        """Hang up every call, wait for the BYEs' answers (each retransmitted until
        answered or Timer F, unless :attr:`hurry` is set), then close the sockets."""
        if self.registrations is not None:
            await self.registrations.stop()      # unregistered first: no new calls that way
        if self.ua is not None:
            for leg in list(self._legs.values()):
                await leg.hang_up("shutting down")
            for key in list(self._pending):
                self._command(functools.partial(_bye, key))
            await self._wait_for_hangups()
        for error in await cancel_all(list(self._tasks)):
            log.warning("SIP task failed while stopping: %r", error)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        await self._close_sockets()

    async def _wait_for_hangups(self) -> None:
        ua = self.ua
        assert ua is not None
        if not ua.hangups_in_flight():
            return
        log.info("waiting for the answers to %d BYE(s)", ua.hangups_in_flight())
        hurry = asyncio.ensure_future(self.hurry.wait())
        try:
            async with asyncio.timeout(self.settings.timers.b + 1):
                while ua.hangups_in_flight() and not hurry.done():
                    await asyncio.wait((hurry,), timeout=0.05)
        except TimeoutError:
            log.warning("%d BYE(s) still unanswered", ua.hangups_in_flight())
        finally:
            hurry.cancel()

    def drain(self) -> None:
        """Stop admitting: new INVITEs and OPTIONS get 503 (calls in progress go on), and
        unregister the accounts so their registrars stop sending calls here."""
        self.gate.draining = True
        if self.registrations is not None:
            self.registrations.unregister()

    @property
    def active_calls(self) -> int:
        return len(self._pending) + len(self._legs)

    @property
    def unacked_calls(self) -> int:
        """Calls between the INVITE and the ACK (see ``max_unacked``)."""
        return len(self._pending)

    # -- feeding the core ---------------------------------------------------------------

    def _feed(self, data: bytes, addr: Address, transport: str,
              local_host: str | None = None) -> None:
        assert self.ua is not None and self._loop is not None
        if local_host is None and self._per_peer:
            local_host = self._route_source(addr)
        self.ua.receive(data, (addr[0], addr[1]), transport, self._loop.time(),
                        local_host=local_host)
        self._pump()

    def _feed_stream(self, data: bytes, addr: Address, local_host: str | None,
                     transport: str = "tcp") -> tuple[bool, bool]:
        """TCP/TLS bytes to the core: whether a whole message came, whether one is unfinished."""
        assert self.ua is not None
        before = self.ua.stats["received"] + self.ua.stats["malformed"]
        self._feed(data, addr, transport, local_host)
        messages = self.ua.stats["received"] + self.ua.stats["malformed"] > before
        return messages, self.ua.stream_in_progress(addr)

    def _stream_lost(self, addr: Address) -> None:
        if self.ua is not None:
            self.ua.connection_lost(addr)

    def _busy_stream(self, addr: Address) -> bool:
        return self.ua is not None and self.ua.has_calls_on(addr)

    def _route_source(self, addr: Address) -> str:
        """Our address toward ``addr`` by the routing table (a UDP ``connect`` sends
        nothing); remembered per peer IP, the configured guess when there is no route."""
        local = self._local_hosts.get(addr[0])
        if local is None:
            local = local_address_toward(addr) or self.public_address
            self._remember_local(addr[0], local)
        return local

    def _remember_local(self, peer_ip: str, local: str) -> None:
        if self._local_hosts.get(peer_ip) == local:
            return
        if len(self._local_hosts) >= LOCAL_HOST_CACHE:
            self._local_hosts.clear()
        self._local_hosts[peer_ip] = local
        log.debug("SIP peer %s: advertising our address %s to it", peer_ip, local)

    def _connection_local(self, transport: asyncio.BaseTransport, peer: Address
                          ) -> str | None:
        """For TCP the connection's own address is the one the peer reached."""
        if not self._per_peer:
            return None
        sockname = transport.get_extra_info("sockname")
        if not sockname:
            return None
        local = plain_host(sockname[0])
        self._remember_local(peer[0], local)
        return local

    def _command(self, command: Callable[[UserAgent, float], None]) -> None:
        assert self.ua is not None and self._loop is not None
        command(self.ua, self._loop.time())
        self._pump()

    def _on_timer(self) -> None:
        assert self.ua is not None and self._loop is not None
        self._timer = None
        self._timer_at = None
        self.ua.handle_timer(self._loop.time())
        self._pump()

    def _pump(self) -> None:
        ua, loop = self.ua, self._loop
        assert ua is not None and loop is not None
        for data, addr in ua.datagrams_to_send():
            self._send_udp(data, addr)
        for data, addr in ua.data_to_send():
            if not self.tcp.write(addr, data):
                log.info("no TCP connection to %s:%d any more; message dropped", *addr)
        if self.tls is not None:
            for data, addr in ua.tls_data_to_send():
                self.tls.send(addr, data)
        for addr, why in ua.closes():
            port = self.tls if self.tls is not None and addr in self.tls.connections else self.tcp
            port.drop(addr, why)
        for event in ua.events():
            self._on_event(event)
        deadline = ua.get_timer()
        if deadline != self._timer_at:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = None if deadline is None else loop.call_at(deadline, self._on_timer)
            self._timer_at = deadline

    def _send_udp(self, data: bytes, addr: Address) -> None:
        if self._udp is None:
            return
        try:
            ipaddress.ip_address(addr[0])
        except ValueError:
            task = asyncio.ensure_future(self._resolve_and_send(data, addr))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            return
        self._udp.sendto(data, addr)

    async def _resolve_and_send(self, data: bytes, addr: Address) -> None:
        assert self._loop is not None
        try:
            infos = await self._loop.getaddrinfo(addr[0], addr[1], type=socket.SOCK_DGRAM)
        except OSError as exc:
            log.info("cannot resolve %s: %s", addr[0], exc)
            return
        if infos and self._udp is not None:
            self._udp.sendto(data, infos[0][4][:2])

    # -- admission ----------------------------------------------------------------------

    def _admit(self, request: Request, peer: Peer) -> Rejection | None:
        assert self._loop is not None
        source = peer.addr[0]
        invite = request.method == "INVITE"
        caller = self._proxies.caller_of(request, source)
        load = Load(self.active_calls, len(self._pending), sum(
            1 for p in self._pending.values()
            if self._proxies.caller_of(p.event.invite, p.event.peer.addr[0]) == caller),
            can_admit=self._can_admit is None or request.method not in ("INVITE", "OPTIONS")
            or self._can_admit())
        refusal = self.gate.check(request.method, source, self._loop.time(), load, caller)
        if refusal is None and self.auth is not None:
            refusal = self.auth.check(request, source, self._loop.time())
        if refusal is None:
            return None
        self.stats["rejected"] += 1
        if invite:
            metrics.CALLS_REJECTED.labels(reason=refusal.reason).inc()
        elif request.method == "OPTIONS":
            metrics.OPTIONS_REFUSED.labels(reason=refusal.reason).inc()
        level = logging.DEBUG if refusal.reason == "sip_auth_required" else logging.INFO
        _throttled.log(level, refusal.reason, "%s from %s refused (%d %s): %d calls, "
                       "%d unconfirmed", request.method, source, refusal.status,
                       refusal.reason, load.calls, load.unacked)
        return Rejection(refusal.status, reason=refusal.phrase, headers=refusal.headers)

    # -- events -------------------------------------------------------------------------

    def _on_incoming(self, event: IncomingCall) -> None:
        assert self._loop is not None
        pending = _Pending(event, self._loop.create_future())
        self._pending[event.call] = pending
        task = self._loop.create_task(self._run_call(pending))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run_call(self, pending: _Pending) -> None:
        """One incoming call from the INVITE to its end: RTP port, answer, ACK, on_call."""
        key = pending.event.call
        try:
            answered = await self._answer(pending)
            if answered is None:
                return
            # Established: from pending to live (in both, a call counted twice against
            # max_calls and the service refused calls at half its capacity).
            self._pending.pop(key, None)
            self._legs[key] = answered
            self.stats["calls"] += 1
            try:
                await self._on_call(answered)
            finally:
                if not answered.ended:
                    await answered.hang_up("call finished")
        except asyncio.CancelledError:
            if pending.leg is not None:
                pending.leg._finish("cancelled")
            raise
        finally:
            self._pending.pop(key, None)
            self._legs.pop(key, None)
            if pending.leg is not None:
                pending.leg.rtp.close()
            if self._early is not None:        # a no-op once the call has taken it over
                self._early.drop_early(pending.event.invite.call_id)

    def _on_event(self, event: Event) -> None:
        match event:
            case IncomingCall():
                self._on_incoming(event)
            case CallEstablished():
                self._on_established(event)
            case CallCancelled():
                self._end_pending(event.call, "cancelled")
            case ByeReceived():
                self._end_pending(event.call, "bye")
            case CallEnded():
                self._end_pending(event.call, event.reason)
            case MediaUpdated():
                self._on_media(event)
            case Hold() | Resume():
                self._on_hold(event)
            case DtmfInfo():
                self._on_dtmf(event)
            case ReferProgress():
                self._on_refer_progress(event)
            case ReferDone():
                self._on_refer_done(event)
            case OptionsAnswered():
                self.stats["options"] += 1
            case Challenged():
                metrics.SIP_CHALLENGES.labels(method=event.method, outcome="answered"
                                              if event.answered else "failed").inc()
            case RequestAnswered() | RequestTimedOut():
                if self.registrations is not None:
                    self.registrations.on_event(event)

    def _on_established(self, event: CallEstablished) -> None:
        pending = self._pending.get(event.call)
        if pending is not None and not pending.established.done():
            pending.established.set_result(event)

    def _end_pending(self, key: CallKey, reason: str) -> None:
        pending = self._pending.get(key)
        if pending is not None and not pending.established.done():
            if pending.leg is not None:
                pending.leg._finish(reason)
            pending.established.cancel()
        leg = self._legs.get(key)
        if leg is not None:
            leg._remote_hangup(reason)

    def _leg(self, key: CallKey) -> SipLeg | None:
        leg = self._legs.get(key)
        if leg is None:
            pending = self._pending.get(key)
            leg = pending.leg if pending is not None else None
        return leg

    def _on_media(self, event: MediaUpdated) -> None:
        leg = self._leg(event.call)
        if leg is not None and not leg.ended:
            leg._media_updated(event.media)

    def _on_hold(self, event: Hold | Resume) -> None:
        leg = self._leg(event.call)
        if leg is not None:
            leg.log.info("call %s: %s", leg.info.call_id,
                         "on hold" if isinstance(event, Hold) else "resumed")

    def _on_dtmf(self, event: DtmfInfo) -> None:
        leg = self._leg(event.call)
        if leg is not None:
            leg._dtmf(event.digit)

    def _on_refer_progress(self, event: ReferProgress) -> None:
        leg = self._leg(event.call)
        if leg is not None:
            leg.log.debug("call %s: transfer progress %d %s", leg.info.call_id,
                          event.status, event.reason)

    def _on_refer_done(self, event: ReferDone) -> None:
        leg = self._leg(event.call)
        if leg is not None:
            leg._transfer_done(event.ok, event.status, event.reason)


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, service: SipService) -> None:
        self._service = service

    def datagram_received(self, data: bytes, addr: Address) -> None:
        self._service._feed(data, addr, "udp")

    def error_received(self, exc: Exception) -> None:
        log.debug("SIP/UDP socket error: %s", exc)


def _bye(call: CallKey, ua: UserAgent, now: float) -> None:
    ua.bye(call, now)


__all__ = ["SipLeg", "SipService", "SipSettings"]
