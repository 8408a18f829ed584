"""The UAS core: SIP bytes and ``now`` in; SIP bytes, events and deadlines out.

Theory of operation
-------------------
:class:`UserAgent` owns every transaction, dialog and call of one SIP endpoint. The asyncio
adapter feeds it with :meth:`UserAgent.receive` (a datagram, or a chunk of a TCP stream,
with the peer address and the time), calls :meth:`UserAgent.handle_timer` at the deadline
:meth:`UserAgent.get_timer` gives, drains :meth:`datagrams_to_send` / :meth:`data_to_send`
to its sockets and :meth:`events` to the application, and drives calls with the commands
:meth:`ringing`, :meth:`answer`, :meth:`reject`, :meth:`bye` and :meth:`refer`.

Incoming requests go through, in this order (RFC 3261 §8.2):

1. the transaction layer: a retransmission gets the last response again, an ACK or a
   CANCEL finds its INVITE (§17.2.3, §9.2);
2. parse errors become ``400`` (or 505/513) with the reason in the reason phrase, and a
   message that cannot be answered is dropped; nothing escapes :meth:`receive`;
3. method inspection (``501`` unknown, ``405`` known but not ours), CSeq method check
   (``400``), Request-URI scheme (``416``), Require (``420``), dialog lookup (``481``);
4. the method's handler, from the tables :data:`_OUT_OF_DIALOG` and :data:`_IN_DIALOG`.

The user agent is a stack of layers, one module each, each the base of the next:
:class:`bridge.sip.responder.Responder` (transactions, responses, the outgoing queues),
:class:`bridge.sip.handlers.CallHandlers` (what each method does to a call: INVITE,
re-INVITE and hold, ACK, CANCEL, BYE, INFO, NOTIFY, REFER),
:class:`bridge.sip.refresher.RefreshSender` (our session refreshes),
:class:`bridge.sip.extensions.ExtensionHandlers` (session timers, UPDATE, PRACK) and
:class:`UserAgent` here (the interface, the commands and the request router above). A
call's state machine is in :mod:`bridge.sip.calls`, the events in :mod:`bridge.sip.events`;
this module re-exports the names its importers use.
docs/sip.md says what is answered to what.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from bridge import metrics
from bridge.errors import SipParseError
from bridge.logthrottle import Throttle
from bridge.sip.authclient import CredentialLookup
from bridge.sip.calls import Call, CallInput, CallState, UaError
from bridge.sip.dialog import DialogInput
from bridge.sip.events import (
    Address,
    Admission,
    ByeReceived,
    CallCancelled,
    CallEnded,
    CallEstablished,
    CallKey,
    DtmfInfo,
    Event,
    Hold,
    IdSource,
    IncomingCall,
    MediaUpdated,
    OptionsAnswered,
    Peer,
    RandomIds,
    ReferDone,
    ReferProgress,
    Rejection,
    Resume,
)
from bridge.sip.extensions import ExtensionHandlers
from bridge.sip.message import (
    Headers,
    MalformedMessage,
    Message,
    Request,
    Response,
    StreamParser,
    parse_message,
    split_list,
)
from bridge.sip.responder import (
    ALLOWED_METHODS,
    KNOWN_METHODS,
    SUPPORTED_OPTION_TAGS,
    SUPPORTED_SCHEMES,
)
from bridge.sip.sdp import NegotiatedMedia, SessionDescription
from bridge.sip.settings import SipSettings
from bridge.sip.transaction import InviteServerTransaction, State, server_key

log = logging.getLogger(__name__)
#: Lines a peer can cause, bounded (a flood of junk is a count, not a log).
_throttled = Throttle(log)


class UserAgent(ExtensionHandlers):
    """Sans-I/O SIP user agent server (with the client transactions its calls need)."""

    def __init__(self, settings: SipSettings, *, host: str, port: int,
                 admission: Admission | None = None, ids: IdSource | None = None,
                 credentials: CredentialLookup | None = None) -> None:
        """``settings`` as loaded; ``host``/``port``: the address we advertise and the
        port we are bound to (see :class:`bridge.sip.responder.Responder`);
        ``credentials``: a call's user name and password, to answer a 401/407 to our
        requests in it (:mod:`bridge.sip.authclient`)."""
        super().__init__(settings, host=host, port=port, ids=ids)
        self._credentials = credentials
        self._admission = admission
        self._streams: dict[Address, StreamParser] = {}
        #: Why each connection in the close queue is closed ("too_large", "malformed").
        self._close_why: dict[Address, str] = {}
        self.stats: dict[str, int] = {"received": 0, "malformed": 0, "dropped": 0}

    # ------------------------------------------------------------------------ interface

    def receive(self, data: bytes, addr: Address, transport: str, now: float,
                local_host: str | None = None) -> None:
        """Feed a datagram (``"udp"``) or a chunk of a stream (``"tcp"``, ``"tls"``).
        Never raises.

        ``local_host``: our address the bytes arrived on, if the adapter knows it and it
        may differ from the configured ``host`` (a wildcard bind on a multi-homed host). A
        call started by an INVITE received this way advertises it instead of the
        configured host, so a caller on the LAN is not handed a loopback Contact.
        """
        peer = Peer(transport, addr, local_host)
        if transport == "udp":
            if not data.strip(b"\r\n"):
                return  # keep-alive
            try:
                message = parse_message(data)
            except SipParseError as exc:
                self._on_parse_error(exc, peer, now)
                return
            self._dispatch(message, peer, now)
            return
        parser = self._streams.setdefault(addr, StreamParser())
        self._gone.discard(addr)
        if not data.strip(b"\r\n") and data.startswith(b"\r\n\r\n"):
            # RFC 5626 §3.5.1: a CRLF "ping" on a stream is answered with a CRLF "pong".
            self._send(b"\r\n", peer)
        parser.feed(data)
        while True:
            try:
                framed = parser.next_message()
            except SipParseError as exc:
                self._on_parse_error(exc, peer, now)
                if parser.broken:
                    log.info("closing SIP/TCP connection from %s:%d: %s", addr[0], addr[1],
                             exc.reason)
                    self._to_close.append(addr)
                    self._close_why[addr] = "too_large" if exc.status == 513 else "malformed"
                    self._streams.pop(addr, None)
                    return
                continue
            if framed is None:
                return
            self._dispatch(framed, peer, now)

    def connection_lost(self, addr: Address) -> None:
        self._streams.pop(addr, None)
        if any(c.peer.reliable and c.peer.addr == addr for c in self._calls.values()):
            self._gone.add(addr)

    def closes(self) -> list[tuple[Address, str]]:
        """:meth:`connections_to_close`, each with why ("too_large", "malformed")."""
        return [(addr, self._close_why.pop(addr, "malformed"))
                for addr in self.connections_to_close()]

    def stream_in_progress(self, addr: Address) -> bool:
        """Whether the stream from ``addr`` holds the beginning of an unfinished message."""
        parser = self._streams.get(addr)
        return parser is not None and parser.in_progress

    def hangups_in_flight(self) -> int:
        """BYEs (and other requests of calls) sent and neither answered nor given up
        (Timer F): what a stop waits for. (A BYE waiting for the ACK of our 2xx is not
        counted, nor a REGISTER: the registrations bound their own wait.)"""
        return sum(1 for key, (tx, _) in self._client_tx.items()
                   if tx.state in (State.TRYING, State.PROCEEDING) and key not in self._owned)

    def has_calls_on(self, addr: Address) -> bool:
        """Whether a call not yet ended was set up over the stream from ``addr``."""
        return any(c.peer.reliable and c.peer.addr == addr and c.state is not CallState.ENDED
                   for c in self._calls.values())

    def handle_timer(self, now: float) -> None:
        for key, tx in list(self._server_tx.items()):
            tx.handle_timer(now)
            self._flush_server(key, tx)
            if isinstance(tx, InviteServerTransaction) and tx.timed_out:
                tx.timed_out = False
                self._on_invite_timeout(tx, now)
        for _ckey, (ctx, call_key) in list(self._client_tx.items()):
            ctx.handle_timer(now)
            self._flush_client(ctx, call_key)
            if ctx.timed_out:
                ctx.timed_out = False
                self._on_client_timeout(ctx, call_key)
        self._tick_extensions(now)
        self._collect()

    @property
    def calls(self) -> dict[CallKey, CallState]:
        return {key: call.state for key, call in self._calls.items()}

    def call_info(self, call: CallKey) -> tuple[Request, Peer]:
        c = self._call(call)
        return c.invite, c.peer

    # ------------------------------------------------------------------------- commands

    def ringing(self, call: CallKey, now: float) -> None:
        c = self._call(call)
        if c.state is CallState.OFFERED:
            self._send_provisional(c, 180, now)

    def answer(self, call: CallKey, sdp: SessionDescription, now: float,
               media: NegotiatedMedia | None = None) -> None:
        """Send the 2xx: ``sdp`` is our answer, or our offer if the INVITE had none."""
        c = self._call(call)
        c.move(CallInput.ANSWER)
        c.local_sdp = sdp
        c.sdp_version = sdp.origin.session_version
        c.media = media
        c.dialog.move(DialogInput.SEND_2XX)
        self._send_answer(c, now)      # after the PRACK, if our 1xx was sent reliably

    def reject(self, call: CallKey, status: int, now: float, reason: str | None = None,
               headers: tuple[tuple[str, str], ...] = ()) -> None:
        c = self._call(call)
        if c.state is not CallState.OFFERED:
            raise UaError(f"call {call}: cannot reject in {c.state.value}")
        if not 300 <= status <= 699:
            raise UaError(f"reject needs a 3xx-6xx status, not {status}")
        self._respond_tx(c.tx, c.invite, status, reason=reason, to_tag=c.dialog.local_tag,
                         extra=Headers(headers), now=now)
        self._end(c, f"rejected {status}", event=False)

    def bye(self, call: CallKey, now: float) -> None:
        """Hang up. Before the answer this rejects (480); before the ACK it waits (§15)."""
        c = self._calls.get(call)
        if c is None or c.state is CallState.ENDED:
            return
        if c.state is CallState.OFFERED:
            self.reject(call, 480, now)
            return
        if c.ext.answer_held:                      # our 2xx waits for a PRACK: not sent
            self._drop_held_answer(c, now)
            return
        if c.state is CallState.ANSWERING:
            # §15: the callee "MUST NOT send a BYE on a confirmed dialog until it has
            # received an ACK for its 2xx response or until the server transaction times out".
            c.bye_pending = True
            return
        self._send_bye(c, now)

    def refer(self, call: CallKey, target_uri: str, now: float) -> None:
        """Blind transfer (RFC 3515): REFER the far end to ``target_uri``."""
        c = self._call(call)
        if c.state is not CallState.ESTABLISHED:
            raise UaError(f"call {call}: cannot transfer in {c.state.value}")
        if c.refer_active:
            raise UaError(f"call {call}: a transfer is already in progress")
        referred_by = str(c.dialog.local_uri)
        extra = Headers((("Refer-To", f"<{target_uri}>"), ("Referred-By", referred_by)))
        c.refer_tx = self._send_in_dialog(c, "REFER", now, extra=extra)
        c.refer_active = True

    # --------------------------------------------------------------------------- router

    def _dispatch(self, message: Message, peer: Peer, now: float) -> None:
        self.stats["received"] += 1
        try:
            if isinstance(message, Response):
                self._on_response(message, now)
            else:
                self._on_request(message, peer, now)
        except SipParseError as exc:
            # A header parsed lazily by a handler (Refer-To, sipfrag...) was malformed.
            if isinstance(message, Request) and message.method != "ACK":
                self._stateless_error(message.headers, peer, exc.status, exc.reason)
        self._collect()

    def _on_parse_error(self, exc: SipParseError, peer: Peer, now: float) -> None:
        self.stats["malformed"] += 1
        _throttled.log(logging.INFO, "malformed", "malformed SIP message from %s:%d: %s",
                       peer.addr[0], peer.addr[1], exc.reason, now=now)
        if isinstance(exc, MalformedMessage) and exc.method not in (None, "ACK"):
            self._stateless_error(exc.headers, peer, exc.status, exc.reason)

    def _on_request(self, request: Request, peer: Peer, now: float) -> None:
        key = server_key(request)
        if request.method == "ACK":
            self._on_ack(request, key, now)
            return
        tx = self._server_tx.get(key)
        if tx is not None:
            tx.receive_retransmission(now)
            self._flush_server(key, tx)
            return
        if request.method == "CANCEL":
            self._on_cancel(request, peer, now)
            return
        status = self._check(request)
        if status is not None:
            code, why, extra = status
            self._respond_new(request, peer, code, now, reason=why, extra=extra)
            return
        if request.to.tag is None:
            if self._merged(request):
                self._respond_new(request, peer, 482, now)
                return
            if self._admission is not None:
                rejection = self._admission(request, peer)
                if rejection is not None:
                    self._respond_new(request, peer, rejection.status, now,
                                      reason=rejection.reason,
                                      extra=Headers(rejection.headers))
                    return
            handler = _OUT_OF_DIALOG.get(request.method)
            if handler is None:
                self._respond_new(request, peer, 481, now)
                return
            handler(self, request, peer, now)
            return
        call = self._find_dialog(request)
        if call is None:
            self._respond_new(request, peer, 481, now)  # §12.2.2
            return
        if not call.dialog.accept_remote_cseq(request):
            self._respond_new(request, peer, 500, now, reason="CSeq out of order")
            return
        _IN_DIALOG[request.method](self, call, request, peer, now)

    def _check(self, request: Request) -> tuple[int, str | None, Headers] | None:
        """§8.2.1-§8.2.2 checks; (status, reason, headers) to refuse, or None."""
        method = request.method
        if method not in KNOWN_METHODS:
            return 501, None, Headers((("Allow", ", ".join(ALLOWED_METHODS)),))
        if method not in ALLOWED_METHODS:
            return 405, None, Headers((("Allow", ", ".join(ALLOWED_METHODS)),))
        if request.cseq.method != method:
            # RFC 4475 mismatch01: the CSeq method MUST match the request method.
            return 400, "Bad Request (CSeq method does not match)", Headers()
        if request.uri.scheme not in SUPPORTED_SCHEMES:
            return 416, None, Headers()  # §8.2.2.1 (RFC 4475 unkscm, novelsc)
        unsupported = [tag for tag in request.headers.get_list("Require")
                       if tag.lower() not in SUPPORTED_OPTION_TAGS]
        if unsupported:
            # §8.2.2.3: an extension required of us that we do not implement.
            if method == "INVITE" and request.to.tag is None:
                metrics.CALLS_REJECTED.labels(reason="sip_bad_extension").inc()
            return 420, None, Headers((("Unsupported", ", ".join(unsupported)),))
        return None

    def _merged(self, request: Request) -> bool:
        """§8.2.2.2: the same request reaching us twice by different paths -> 482."""
        for tx in self._server_tx.values():
            other = tx.request
            if (other.call_id == request.call_id and other.from_.tag == request.from_.tag
                    and other.cseq == request.cseq and other.from_.tag is not None
                    and server_key(other) != server_key(request)):
                return True
        return False


_OUT_OF_DIALOG: dict[str, Callable[[UserAgent, Request, Peer, float], None]] = {
    "INVITE": UserAgent._on_invite,
    "OPTIONS": UserAgent._on_options,
}

_IN_DIALOG: dict[str, Callable[[UserAgent, Call, Request, Peer, float], None]] = {
    "INVITE": UserAgent._on_reinvite,
    "BYE": UserAgent._on_bye,
    "OPTIONS": UserAgent._on_options_in_dialog,
    "INFO": UserAgent._on_info,
    "NOTIFY": UserAgent._on_notify,
    "REFER": UserAgent._on_refer_in,
    "UPDATE": UserAgent._on_update,
    "PRACK": UserAgent._on_prack,
}

__all__ = [
    "Admission", "ByeReceived", "CallCancelled", "CallEnded", "CallEstablished", "CallKey",
    "CallState", "DtmfInfo", "Event", "Hold", "IdSource", "IncomingCall", "MediaUpdated",
    "OptionsAnswered", "Peer", "RandomIds", "ReferDone", "ReferProgress", "Rejection",
    "Resume", "SipSettings", "UaError", "UserAgent", "split_list",
]
