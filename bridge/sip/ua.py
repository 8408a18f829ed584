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

A call is a dialog plus its INVITE transaction and a small state machine
(:data:`CALL_TRANSITIONS`): OFFERED -> ANSWERING (our 2xx is out, waiting for the ACK) ->
ESTABLISHED -> ENDED, with CANCEL, reject, BYE and the ACK timeout as the ways out.
Re-INVITEs inside an established call are answered here, from the SDP we answered with:
a direction change becomes :class:`Hold` / :class:`Resume`, and every completed offer/answer
a :class:`MediaUpdated`.
"""

from __future__ import annotations

import enum
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NewType, Protocol

from bridge import __version__
from bridge.errors import SdpError, SipError, SipParseError
from bridge.sip.dialog import Dialog, DialogInput
from bridge.sip.message import (
    MAGIC_COOKIE,
    SIP_VERSION,
    Headers,
    MalformedMessage,
    Message,
    Request,
    Response,
    SipUri,
    StreamParser,
    Tag,
    parse_message,
    reason_phrase,
    split_list,
)
from bridge.sip.sdp import (
    NegotiatedMedia,
    SessionDescription,
    accept_answer,
    answer_offer,
    parse_sdp,
)
from bridge.sip.transaction import (
    InviteServerTransaction,
    NonInviteClientTransaction,
    NonInviteServerTransaction,
    ServerTransaction,
    Timers,
    TransactionKey,
    response_client_key,
    server_key,
)

log = logging.getLogger(__name__)

Address = tuple[str, int]
CallKey = NewType("CallKey", str)

KNOWN_METHODS = frozenset({
    "INVITE", "ACK", "CANCEL", "BYE", "OPTIONS", "REGISTER", "INFO", "PRACK", "UPDATE",
    "SUBSCRIBE", "NOTIFY", "REFER", "MESSAGE", "PUBLISH",
})
ALLOWED_METHODS = ("INVITE", "ACK", "CANCEL", "BYE", "OPTIONS", "INFO", "REFER", "NOTIFY")
SUPPORTED_SCHEMES = ("sip", "sips")
#: SIP extensions (option tags) we implement: none yet (no 100rel, timer, replaces).
SUPPORTED_OPTION_TAGS: tuple[str, ...] = ()
DTMF_INFO_TYPES = ("application/dtmf-relay", "application/dtmf")
_DTMF_DIGITS = frozenset("0123456789*#ABCD")
_DTMF_ALIASES = {"10": "*", "11": "#", "12": "A", "13": "B", "14": "C", "15": "D"}


@dataclass(frozen=True)
class Peer:
    """Where a message came from: ``transport`` is ``"udp"`` or ``"tcp"``.

    ``local_host`` is our address the message arrived on, when the adapter knows it (a
    socket bound to a wildcard address serves several interfaces); None means
    :attr:`UaConfig.host`.
    """

    transport: str
    addr: Address
    local_host: str | None = None

    @property
    def reliable(self) -> bool:
        return self.transport != "udp"


@dataclass(frozen=True)
class Rejection:
    """What the admission callback answers instead of letting a request in."""

    status: int
    reason: str | None = None
    headers: tuple[tuple[str, str], ...] = ()


#: Called for every request outside a dialog before it is handled; None admits it.
Admission = Callable[[Request, Peer], "Rejection | None"]


class IdSource(Protocol):
    def token(self) -> str:
        """A fresh random token (tags, branch suffixes)."""


class RandomIds:
    def token(self) -> str:
        return secrets.token_hex(8)


@dataclass(frozen=True)
class UaConfig:
    """``host``/``port`` are what we write in Via, Contact and SDP (the public address).

    ``host`` is the default: a call whose INVITE came with a ``local_host`` (see
    :meth:`UserAgent.receive`) uses that one for its Contact and in-dialog Via instead.
    """

    host: str
    port: int
    user_agent: str = f"voicebridge/{__version__}"
    timers: Timers = Timers()
    codecs: tuple[str, ...] = ("pcmu", "pcma")
    #: Send requests inside a dialog without a route set back to the address the INVITE
    #: came from rather than to its Contact (which is often a private address behind NAT).
    symmetric_requests: bool = True


# ------------------------------------------------------------------------------- events

@dataclass(frozen=True)
class IncomingCall:
    call: CallKey
    invite: Request
    peer: Peer
    offer: SessionDescription | None
    #: The address this call advertises (its Contact, and what the SDP should carry).
    local_host: str

    @property
    def caller(self) -> str:
        uri = self.invite.from_.uri
        return uri.user_unescaped if isinstance(uri, SipUri) else str(uri)

    @property
    def called(self) -> str:
        uri = self.invite.uri
        return uri.user_unescaped if isinstance(uri, SipUri) else str(uri)


@dataclass(frozen=True)
class CallCancelled:
    call: CallKey


@dataclass(frozen=True)
class CallEstablished:
    """The ACK for our 2xx came; ``answer``/``media`` are set when our 2xx held the offer."""

    call: CallKey
    answer: SessionDescription | None = None
    media: NegotiatedMedia | None = None


@dataclass(frozen=True)
class ByeReceived:
    call: CallKey


@dataclass(frozen=True)
class CallEnded:
    """The call is over for a reason other than a BYE from the far end or a CANCEL."""

    call: CallKey
    reason: str


@dataclass(frozen=True)
class MediaUpdated:
    call: CallKey
    media: NegotiatedMedia


@dataclass(frozen=True)
class Hold:
    call: CallKey


@dataclass(frozen=True)
class Resume:
    call: CallKey


@dataclass(frozen=True)
class DtmfInfo:
    call: CallKey
    digit: str
    duration_ms: int | None


@dataclass(frozen=True)
class ReferProgress:
    call: CallKey
    status: int
    reason: str


@dataclass(frozen=True)
class ReferDone:
    call: CallKey
    ok: bool
    status: int
    reason: str


@dataclass(frozen=True)
class OptionsAnswered:
    peer: Peer


Event = (IncomingCall | CallCancelled | CallEstablished | ByeReceived | CallEnded
         | MediaUpdated | Hold | Resume | DtmfInfo | ReferProgress | ReferDone
         | OptionsAnswered)


_NO_HEADERS = Headers()


class UaError(SipError):
    """A command that does not fit the call's state (a bug in the caller)."""


# -------------------------------------------------------------------------------- calls

class CallState(enum.Enum):
    OFFERED = "offered"          # INVITE in, no final response yet
    ANSWERING = "answering"      # our 2xx is out, waiting for the ACK
    ESTABLISHED = "established"
    ENDED = "ended"


class CallInput(enum.Enum):
    ANSWER = "answer"
    ACK = "ack"
    END = "end"


CALL_TRANSITIONS: dict[CallState, dict[CallInput, CallState]] = {
    CallState.OFFERED: {CallInput.ANSWER: CallState.ANSWERING, CallInput.END: CallState.ENDED},
    CallState.ANSWERING: {CallInput.ACK: CallState.ESTABLISHED, CallInput.END: CallState.ENDED},
    CallState.ESTABLISHED: {CallInput.ACK: CallState.ESTABLISHED,
                            CallInput.END: CallState.ENDED},
    CallState.ENDED: {CallInput.END: CallState.ENDED},
}


@dataclass
class _Call:
    key: CallKey
    invite: Request
    peer: Peer
    tx: InviteServerTransaction
    dialog: Dialog
    offer: SessionDescription | None
    #: Our address for this call: Contact, and sent-by of the requests we send in it.
    local_host: str
    state: CallState = CallState.OFFERED
    local_sdp: SessionDescription | None = None    # what we last sent (answer or offer)
    sdp_version: int = 0
    media: NegotiatedMedia | None = None
    reinvite: InviteServerTransaction | None = None
    reinvite_offer: SessionDescription | None = None  # our offer in a 2xx to a bare re-INVITE
    bye_pending: bool = False
    bye_tx: NonInviteClientTransaction | None = None
    refer_tx: NonInviteClientTransaction | None = None
    refer_active: bool = False
    clients: list[NonInviteClientTransaction] = field(default_factory=list)

    def move(self, event: CallInput) -> CallState:
        try:
            self.state = CALL_TRANSITIONS[self.state][event]
        except KeyError:
            raise UaError(f"call {self.key}: {event.value} not allowed in "
                          f"{self.state.value}") from None
        return self.state


class UserAgent:
    """Sans-I/O SIP user agent server (with the client transactions its calls need)."""

    def __init__(self, config: UaConfig, *, admission: Admission | None = None,
                 ids: IdSource | None = None) -> None:
        self.config = config
        self._admission = admission
        self._ids = ids or RandomIds()
        self._server_tx: dict[TransactionKey, ServerTransaction] = {}
        self._tx_peer: dict[TransactionKey, tuple[Peer, Request]] = {}
        self._client_tx: dict[TransactionKey, tuple[NonInviteClientTransaction, CallKey]] = {}
        self._calls: dict[CallKey, _Call] = {}
        self._by_dialog: dict[tuple[str, str], CallKey] = {}
        self._streams: dict[Address, StreamParser] = {}
        self._datagrams: list[tuple[bytes, Address]] = []
        self._stream_out: list[tuple[bytes, Address]] = []
        self._to_close: list[Address] = []
        self._events: list[Event] = []
        self.stats: dict[str, int] = {"received": 0, "malformed": 0, "dropped": 0}

    # ------------------------------------------------------------------------ interface

    def receive(self, data: bytes, addr: Address, transport: str, now: float,
                local_host: str | None = None) -> None:
        """Feed a datagram (``"udp"``) or a chunk of a stream (``"tcp"``). Never raises.

        ``local_host``: our address the bytes arrived on, if the adapter knows it and it
        may differ from :attr:`UaConfig.host` (a wildcard bind on a multi-homed host). A
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
                self._on_parse_error(exc, peer)
                return
            self._dispatch(message, peer, now)
            return
        parser = self._streams.setdefault(addr, StreamParser())
        if not data.strip(b"\r\n") and data.startswith(b"\r\n\r\n"):
            # RFC 5626 §3.5.1: a CRLF "ping" on a stream is answered with a CRLF "pong".
            self._stream_out.append((b"\r\n", addr))
        parser.feed(data)
        while True:
            try:
                framed = parser.next_message()
            except SipParseError as exc:
                self._on_parse_error(exc, peer)
                if parser.broken:
                    log.info("closing SIP/TCP connection from %s:%d: %s", addr[0], addr[1],
                             exc.reason)
                    self._to_close.append(addr)
                    self._streams.pop(addr, None)
                    return
                continue
            if framed is None:
                return
            self._dispatch(framed, peer, now)

    def connection_lost(self, addr: Address) -> None:
        self._streams.pop(addr, None)

    def datagrams_to_send(self) -> list[tuple[bytes, Address]]:
        out, self._datagrams = self._datagrams, []
        return out

    def data_to_send(self) -> list[tuple[bytes, Address]]:
        """Bytes for TCP connections, by the connection's peer address."""
        out, self._stream_out = self._stream_out, []
        return out

    def connections_to_close(self) -> list[Address]:
        out, self._to_close = self._to_close, []
        return out

    def events(self) -> list[Event]:
        out, self._events = self._events, []
        return out

    def get_timer(self) -> float | None:
        deadlines = [t for tx in self._server_tx.values() if (t := tx.get_timer()) is not None]
        deadlines += [t for tx, _ in self._client_tx.values() if (t := tx.get_timer()) is not None]
        return min(deadlines) if deadlines else None

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
            self._respond_tx(c.tx, c.invite, 180, to_tag=c.dialog.local_tag,
                             contact=c.dialog.local_contact, now=now)

    def answer(self, call: CallKey, sdp: SessionDescription, now: float,
               media: NegotiatedMedia | None = None) -> None:
        """Send the 2xx: ``sdp`` is our answer, or our offer if the INVITE had none."""
        c = self._call(call)
        c.move(CallInput.ANSWER)
        c.local_sdp = sdp
        c.sdp_version = sdp.origin.session_version
        c.media = media
        c.dialog.move(DialogInput.SEND_2XX)
        self._respond_tx(c.tx, c.invite, 200, to_tag=c.dialog.local_tag,
                         contact=c.dialog.local_contact, body=sdp.serialize(),
                         content_type="application/sdp", now=now, extra=self._capabilities())

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

    # -------------------------------------------------------------------------- receive

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

    def _on_parse_error(self, exc: SipParseError, peer: Peer) -> None:
        self.stats["malformed"] += 1
        log.info("malformed SIP message from %s:%d: %s", peer.addr[0], peer.addr[1],
                 exc.reason)
        if isinstance(exc, MalformedMessage) and exc.method not in (None, "ACK"):
            self._stateless_error(exc.headers, peer, exc.status, exc.reason)

    def _stateless_error(self, headers: Headers, peer: Peer, status: int, why: str) -> None:
        """Answer a request we could not parse (§8.2.6, copied fields as they came)."""
        items: list[tuple[str, str]] = [("Via", v) for v in headers.get_lines("Via")]
        for name in ("From", "To", "Call-ID", "CSeq"):
            value = headers.get(name)
            if value is not None:
                if name == "To" and ";tag=" not in value.replace(" ", "").lower():
                    value += f";tag={self._ids.token()}"
                items.append((name, value))
        items.append(("Server", self.config.user_agent))
        phrase = f"{reason_phrase(status)} ({_printable(why)})"
        response = Response(status, phrase, Headers(tuple(items)))
        self._send(response.serialize(), peer)

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
        unsupported = [tag for tag in request.headers.get_list("Require")]
        if unsupported:
            # §8.2.2.3: we support no extension that a peer may require of us.
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

    def _find_dialog(self, request: Request) -> _Call | None:
        key = self._by_dialog.get((request.call_id, request.to.tag or ""))
        call = self._calls.get(key) if key is not None else None
        if call is None or call.state is CallState.ENDED or not call.dialog.matches(request):
            return None
        return call

    # ---------------------------------------------------------------- method handlers

    def _on_invite(self, request: Request, peer: Peer, now: float) -> None:
        tx = self._new_invite_tx(request, peer, now)
        offer: SessionDescription | None = None
        refusal = self._check_invite_body(request)
        if refusal is None and request.body:
            try:
                offer = parse_sdp(request.body)
                # Refuse an offer we cannot answer before anyone spends resources on it.
                answer_offer(offer, address=self.config.host, port=9, codecs=self.config.codecs)
            except SdpError as exc:
                refusal = (488, f"Not Acceptable Here ({exc})", Headers())
        if refusal is not None:
            status, why, extra = refusal
            self._respond_tx(tx, request, status, reason=why, extra=extra, now=now,
                             to_tag=Tag(self._ids.token()))
            return
        local_tag = Tag(self._ids.token())
        local_host = peer.local_host or self.config.host
        dialog = Dialog.from_invite(request, local_tag=local_tag,
                                    local_contact=self._contact(peer, local_host))
        key = CallKey(local_tag)
        call = _Call(key, request, peer, tx, dialog, offer, local_host)
        self._calls[key] = call
        self._by_dialog[(request.call_id, local_tag)] = key
        log.info("call %s: INVITE from %s for %s via %s:%d", request.call_id,
                 request.from_.uri, request.uri, peer.addr[0], peer.addr[1])
        self._events.append(IncomingCall(key, request, peer, offer, local_host))

    def _check_invite_body(self, request: Request) -> tuple[int, str | None, Headers] | None:
        accept = request.headers.get_list("Accept")
        if accept and not any(a.split(";")[0].strip().lower() in (
                "application/sdp", "application/*", "*/*") for a in accept):
            # RFC 4475 sdp01: we can only answer with SDP, which the caller won't accept.
            return 406, None, Headers((("Accept", "application/sdp"),))
        if request.body and request.content_type != "application/sdp":
            # §8.2.3 (RFC 4475 invut): 415 listing what we do understand.
            return 415, None, Headers((("Accept", "application/sdp"),))
        return None

    def _on_reinvite(self, call: _Call, request: Request, peer: Peer, now: float) -> None:
        tx = self._new_invite_tx(request, peer, now)
        if call.state is not CallState.ESTABLISHED or call.reinvite is not None:
            # §14.2: an INVITE while another is pending gets 500 with a Retry-After.
            self._respond_tx(tx, request, 500, now=now, to_tag=call.dialog.local_tag,
                             extra=Headers((("Retry-After", "2"),)))
            return
        refusal = self._check_invite_body(request)
        if refusal is not None:
            status, why, extra = refusal
            self._respond_tx(tx, request, status, reason=why, extra=extra, now=now,
                             to_tag=call.dialog.local_tag)
            return
        local = call.local_sdp
        if local is None or not local.media or local.connection is None:
            self._respond_tx(tx, request, 500, now=now, to_tag=call.dialog.local_tag)
            return
        body: SessionDescription
        if request.body:
            try:
                offer = parse_sdp(request.body)
                current = (call.media.codec,) if call.media is not None else ()
                codecs = current + tuple(c for c in self.config.codecs if c not in current)
                answer, media = answer_offer(
                    offer, address=local.connection.address, port=local.media[0].port,
                    codecs=codecs, session_id=local.origin.session_id,
                    session_version=call.sdp_version + 1)
            except SdpError as exc:
                # §14.2: a refused re-INVITE leaves the session as it was.
                self._respond_tx(tx, request, 488, reason=f"Not Acceptable Here ({exc})",
                                 now=now, to_tag=call.dialog.local_tag)
                return
            call.sdp_version += 1
            call.local_sdp = answer
            body = answer
            self._apply_media(call, media)
        else:
            # No offer (a session refresh, or a hold that asks for our offer): our offer
            # goes in the 2xx, unchanged, so it keeps its version (RFC 3264 §8).
            body = local
            call.reinvite_offer = local
        call.reinvite = tx
        call.dialog.refresh_target(request)
        self._respond_tx(tx, request, 200, to_tag=call.dialog.local_tag,
                         contact=self._contact(peer, call.local_host), body=body.serialize(),
                         content_type="application/sdp", now=now, extra=self._capabilities())

    def _apply_media(self, call: _Call, media: NegotiatedMedia) -> None:
        was_held = call.media is not None and call.media.on_hold
        call.media = media
        self._events.append(MediaUpdated(call.key, media))
        if media.on_hold and not was_held:
            log.info("call %s: put on hold", call.invite.call_id)
            self._events.append(Hold(call.key))
        elif was_held and not media.on_hold:
            log.info("call %s: resumed", call.invite.call_id)
            self._events.append(Resume(call.key))

    def _on_ack(self, request: Request, key: TransactionKey, now: float) -> None:
        tx = self._server_tx.get(key)
        if (isinstance(tx, InviteServerTransaction) and tx.last_response.status >= 300):
            tx.receive_ack(now)   # ACK for a non-2xx: part of the INVITE transaction
            return
        call = self._find_dialog(request) if request.to.tag else None
        if call is None:
            return  # §17.2.3: an ACK that matches nothing is dropped
        if call.state is CallState.ANSWERING and request.cseq.seq == call.invite.cseq.seq:
            call.tx.receive_ack(now)
            call.move(CallInput.ACK)
            answer: SessionDescription | None = None
            media: NegotiatedMedia | None = None
            if call.offer is None and call.local_sdp is not None:
                answer, media = self._read_ack_answer(call, request)
                if media is None:
                    self._events.append(CallEstablished(call.key))
                    self._end_with_bye(call, now, "no acceptable answer in the ACK")
                    return
                call.media = media
            log.info("call %s: established", call.invite.call_id)
            self._events.append(CallEstablished(call.key, answer, media))
            if call.bye_pending:
                self._send_bye(call, now)
            return
        reinvite = call.reinvite
        if reinvite is not None and request.cseq.seq == reinvite.request.cseq.seq:
            reinvite.receive_ack(now)
            call.reinvite = None
            if call.reinvite_offer is not None:
                offer, call.reinvite_offer = call.reinvite_offer, None
                if request.body:
                    try:
                        self._apply_media(call, accept_answer(offer, parse_sdp(request.body)))
                    except SdpError as exc:
                        log.info("call %s: unusable answer in ACK: %s", call.invite.call_id,
                                 exc)

    def _read_ack_answer(self, call: _Call, request: Request
                         ) -> tuple[SessionDescription | None, NegotiatedMedia | None]:
        assert call.local_sdp is not None
        if not request.body or request.content_type != "application/sdp":
            return None, None
        try:
            answer = parse_sdp(request.body)
            return answer, accept_answer(call.local_sdp, answer)
        except SdpError as exc:
            log.info("call %s: unusable answer in ACK: %s", call.invite.call_id, exc)
            return None, None

    def _on_cancel(self, request: Request, peer: Peer, now: float) -> None:
        """§9.2: find the INVITE by branch; 200 the CANCEL, 487 the INVITE."""
        invite_key = server_key(request)[:-1] + ("INVITE",)
        tx = self._server_tx.get(invite_key)
        if not isinstance(tx, InviteServerTransaction):
            self._respond_new(request, peer, 481, now)
            return
        self._respond_new(request, peer, 200, now)
        if tx.final_sent:
            return
        call = next((c for c in self._calls.values() if c.tx is tx), None)
        to_tag = call.dialog.local_tag if call is not None else Tag(self._ids.token())
        self._respond_tx(tx, tx.request, 487, to_tag=to_tag, now=now)
        if call is not None:
            log.info("call %s: cancelled", call.invite.call_id)
            self._events.append(CallCancelled(call.key))
            self._end(call, "cancelled", event=False)

    def _on_bye(self, call: _Call, request: Request, peer: Peer, now: float) -> None:
        self._respond_new(request, peer, 200, now)
        if call.state is CallState.OFFERED:
            # §15.1.2: a BYE on an early dialog ends the INVITE with 487.
            self._respond_tx(call.tx, call.invite, 487, to_tag=call.dialog.local_tag, now=now)
        log.info("call %s: BYE from the far end", call.invite.call_id)
        self._events.append(ByeReceived(call.key))
        self._end(call, "bye received", event=False)

    def _on_options(self, request: Request, peer: Peer, now: float) -> None:
        self._respond_new(request, peer, 200, now, extra=self._capabilities())
        self._events.append(OptionsAnswered(peer))

    def _on_options_in_dialog(self, call: _Call, request: Request, peer: Peer,
                              now: float) -> None:
        self._on_options(request, peer, now)

    def _on_info(self, call: _Call, request: Request, peer: Peer, now: float) -> None:
        ctype = request.content_type
        if ctype in DTMF_INFO_TYPES:
            digit, duration = _parse_dtmf_info(request.body, ctype)
            self._respond_new(request, peer, 200, now)
            if digit is not None:
                self._events.append(DtmfInfo(call.key, digit, duration))
            return
        if request.body:
            self._respond_new(request, peer, 415, now,
                              extra=Headers((("Accept", ", ".join(DTMF_INFO_TYPES)),)))
            return
        self._respond_new(request, peer, 200, now)  # an empty INFO is a keep-alive

    def _on_notify(self, call: _Call, request: Request, peer: Peer, now: float) -> None:
        event = (request.headers.get("Event") or "").split(";")[0].strip().lower()
        if event != "refer" or not (call.refer_active or call.refer_tx is not None):
            self._respond_new(request, peer, 481, now)  # RFC 6665: no such subscription
            return
        self._respond_new(request, peer, 200, now)
        state = (request.headers.get("Subscription-State") or "").split(";")[0].strip()
        status, reason = _parse_sipfrag(request.body)
        if status is not None and status < 200:
            self._events.append(ReferProgress(call.key, status, reason))
        elif status is not None:
            self._refer_done(call, 200 <= status < 300, status, reason)
        if state.lower() == "terminated" and call.refer_active:
            self._refer_done(call, False, status or 0, reason or "subscription terminated")

    def _on_refer_in(self, call: _Call, request: Request, peer: Peer, now: float) -> None:
        # We transfer others; we do not accept being transferred (§RFC 3515 allows 403).
        self._respond_new(request, peer, 403, now, reason="Forbidden (transfer not accepted)")

    # -------------------------------------------------------------------- responses in

    def _on_response(self, response: Response, now: float) -> None:
        entry = self._client_tx.get(response_client_key(response))
        if entry is None:
            return  # §18.1.2: a response matching no transaction is dropped (RFC 4475 bcast)
        ctx, call_key = entry
        if not ctx.receive_response(response, now):
            return
        self._flush_client(ctx, call_key)
        call = self._calls.get(call_key)
        if call is None:
            return
        if ctx is call.refer_tx and response.status >= 200:
            call.refer_tx = None
            if 200 <= response.status < 300:
                self._events.append(ReferProgress(call.key, response.status, response.reason))
            else:
                self._refer_done(call, False, response.status, response.reason)
        elif ctx is call.bye_tx and response.status >= 200:
            self._finish_bye(call)

    def _refer_done(self, call: _Call, ok: bool, status: int, reason: str) -> None:
        if not call.refer_active:
            return
        call.refer_active = False
        log.info("call %s: transfer %s (%d %s)", call.invite.call_id,
                 "succeeded" if ok else "failed", status, reason)
        self._events.append(ReferDone(call.key, ok, status, reason))

    # ------------------------------------------------------------------------ timeouts

    def _on_invite_timeout(self, tx: InviteServerTransaction, now: float) -> None:
        call = next((c for c in self._calls.values() if c.tx is tx), None)
        if call is not None and call.state is CallState.ANSWERING:
            # §13.3.1.4: no ACK within 64*T1: "the dialog is confirmed, but the session
            # SHOULD be terminated. This is accomplished with a BYE".
            log.info("call %s: no ACK for our 2xx, hanging up", call.invite.call_id)
            call.move(CallInput.ACK)
            self._end_with_bye(call, now, "no ACK")
        elif call is not None and call.reinvite is tx:
            call.reinvite = None

    def _on_client_timeout(self, ctx: NonInviteClientTransaction, call_key: CallKey) -> None:
        call = self._calls.get(call_key)
        if call is None:
            return
        if ctx is call.refer_tx:
            call.refer_tx = None
            self._refer_done(call, False, 408, "Request Timeout")
        elif ctx is call.bye_tx:
            self._finish_bye(call)

    # ------------------------------------------------------------------------- helpers

    def _call(self, call: CallKey) -> _Call:
        try:
            return self._calls[call]
        except KeyError:
            raise UaError(f"no call {call}") from None

    def _end(self, call: _Call, reason: str, *, event: bool) -> None:
        if call.state is CallState.ENDED:
            return
        call.move(CallInput.END)
        if not call.dialog.terminated:
            call.dialog.move(DialogInput.TERMINATE)
        if call.refer_active:
            self._refer_done(call, False, 0, "call ended")
        if event:
            self._events.append(CallEnded(call.key, reason))

    def _end_with_bye(self, call: _Call, now: float, reason: str) -> None:
        self._send_bye(call, now, reason=reason)

    def _send_bye(self, call: _Call, now: float, reason: str = "hung up") -> None:
        if call.bye_tx is not None or call.state is CallState.ENDED:
            return
        call.bye_pending = False
        call.bye_tx = self._send_in_dialog(call, "BYE", now)
        log.info("call %s: BYE sent (%s)", call.invite.call_id, reason)
        self._end(call, reason, event=True)

    def _finish_bye(self, call: _Call) -> None:
        call.bye_tx = None

    def _send_in_dialog(self, call: _Call, method: str, now: float, *,
                        extra: Headers = _NO_HEADERS) -> NonInviteClientTransaction:
        peer = self._request_peer(call)
        via = (f"SIP/2.0/{peer.transport.upper()} {self._sent_by(call.local_host)}"
               f";branch={MAGIC_COOKIE}{self._ids.token()};rport")
        request = call.dialog.new_request(method, via=via, extra=extra,
                                          user_agent=self.config.user_agent)
        ctx = NonInviteClientTransaction(request, reliable=peer.reliable,
                                         timers=self.config.timers, now=now)
        self._client_tx[ctx.key] = (ctx, call.key)
        self._tx_peer[ctx.key] = (peer, request)
        self._flush_client(ctx, call.key)
        return ctx

    def _request_peer(self, call: _Call) -> Peer:
        if call.peer.reliable or (self.config.symmetric_requests
                                  and not call.dialog.route_set):
            # TCP: reuse the connection the INVITE came on. UDP behind NAT: the source.
            return call.peer
        hop = call.dialog.next_hop()
        transport = hop.transport or call.peer.transport
        default = 5061 if call.dialog.remote_target.scheme == "sips" else 5060
        return Peer(transport if transport in ("udp", "tcp") else call.peer.transport,
                    (hop.host, hop.port or default))

    def _new_invite_tx(self, request: Request, peer: Peer, now: float
                       ) -> InviteServerTransaction:
        key = server_key(request)
        trying = self._make_response(request, 100, peer)
        tx = InviteServerTransaction(request, key, reliable=peer.reliable,
                                     timers=self.config.timers, now=now, trying=trying)
        self._server_tx[key] = tx
        self._tx_peer[key] = (peer, request)
        self._flush_server(key, tx)
        return tx

    def _respond_new(self, request: Request, peer: Peer, status: int, now: float, *,
                     reason: str | None = None, extra: Headers = _NO_HEADERS) -> None:
        """Answer a non-INVITE request in a new server transaction."""
        to_tag = None if request.to.tag else Tag(self._ids.token())
        if request.method == "INVITE":
            # An INVITE refused before a transaction existed still needs its own
            # INVITE transaction (for the ACK and retransmissions).
            itx = self._new_invite_tx(request, peer, now)
            self._respond_tx(itx, request, status, reason=reason, extra=extra,
                             to_tag=to_tag, now=now)
            return
        key = server_key(request)
        tx = NonInviteServerTransaction(request, key, reliable=peer.reliable,
                                        timers=self.config.timers)
        self._server_tx[key] = tx
        self._tx_peer[key] = (peer, request)
        response = self._make_response(request, status, peer, reason=reason, to_tag=to_tag,
                                       extra=extra)
        tx.send(response, now)
        self._flush_server(key, tx)

    def _respond_tx(self, tx: InviteServerTransaction, request: Request, status: int, *,
                    now: float, reason: str | None = None, to_tag: str | None = None,
                    contact: str | None = None, body: bytes = b"",
                    content_type: str | None = None, extra: Headers = _NO_HEADERS) -> None:
        peer, _ = self._tx_peer[tx.key]
        response = self._make_response(request, status, peer, reason=reason, to_tag=to_tag,
                                       contact=contact, body=body, content_type=content_type,
                                       extra=extra)
        tx.send(response, now)
        self._flush_server(tx.key, tx)

    def _make_response(self, request: Request, status: int, peer: Peer, *,
                       reason: str | None = None, to_tag: str | None = None,
                       contact: str | None = None, body: bytes = b"",
                       content_type: str | None = None,
                       extra: Headers = _NO_HEADERS) -> Response:
        """§8.2.6.2: Via, From, Call-ID, CSeq copied; To copied plus our tag."""
        vias = list(request.via)
        vias[0] = vias[0].with_received(peer.addr[0], peer.addr[1])
        to = request.headers.get("To") or ""
        if to_tag and request.to.tag is None and status > 100:
            # §8.2.6.2: add our tag (not to a 100 Trying, §8.2.6.1), keeping the rest.
            to = f"{to};tag={to_tag}"
        items: list[tuple[str, str]] = [("Via", str(v)) for v in vias]
        items += [("From", request.headers.get("From") or ""), ("To", to),
                  ("Call-ID", request.call_id), ("CSeq", str(request.cseq))]
        if status > 100 and request.method == "INVITE":
            # §12.1.1: a UAS copies Record-Route into dialog-creating responses.
            items += [("Record-Route", rr) for rr in request.headers.get_lines("Record-Route")]
        if contact is not None:
            items.append(("Contact", contact))
        items.append(("Server", self.config.user_agent))
        items.extend(extra.items)
        if content_type is not None:
            items.append(("Content-Type", content_type))
        return Response(status, reason or reason_phrase(status), Headers(tuple(items)), body)

    def _capabilities(self) -> Headers:
        # §11.2: Allow, Accept, Accept-Encoding, Accept-Language and Supported SHOULD be
        # in a 200 to OPTIONS. §25.1 lets Supported be empty, but an empty header field
        # trips some peers' parsers, and leaving it out says the same (§20.37: no option
        # tags), so it is sent only when there is a tag to list.
        items: tuple[tuple[str, str], ...] = (
            ("Allow", ", ".join(ALLOWED_METHODS)), ("Accept", "application/sdp"),
            ("Accept-Encoding", "identity"), ("Accept-Language", "en"))
        if SUPPORTED_OPTION_TAGS:
            items += (("Supported", ", ".join(SUPPORTED_OPTION_TAGS)),)
        return Headers(items)

    def _sent_by(self, host: str) -> str:
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return f"{host}:{self.config.port}"

    def _contact(self, peer: Peer, host: str) -> str:
        suffix = ";transport=tcp" if peer.transport == "tcp" else ""
        return f"<sip:{self._sent_by(host)}{suffix}>"

    def _flush_server(self, key: TransactionKey, tx: ServerTransaction) -> None:
        messages = tx.take_messages()
        if not messages:
            return
        peer, request = self._tx_peer[key]
        dest = _response_destination(request, peer)
        for message in messages:
            self._send(message.serialize(), dest)

    def _flush_client(self, ctx: NonInviteClientTransaction, call_key: CallKey) -> None:
        peer, _ = self._tx_peer[ctx.key]
        for message in ctx.take_messages():
            self._send(message.serialize(), peer)

    def _send(self, data: bytes, peer: Peer) -> None:
        if peer.transport == "udp":
            self._datagrams.append((data, peer.addr))
        else:
            self._stream_out.append((data, peer.addr))

    def _collect(self) -> None:
        """Forget terminated transactions, and calls with nothing left running."""
        for key in [k for k, tx in self._server_tx.items() if tx.terminated]:
            del self._server_tx[key]
            self._tx_peer.pop(key, None)
        for key in [k for k, (tx, _) in self._client_tx.items() if tx.terminated]:
            del self._client_tx[key]
            self._tx_peer.pop(key, None)
        live_tx = set(self._server_tx.values())
        live_clients = {tx for tx, _ in self._client_tx.values()}
        for call_key, call in list(self._calls.items()):
            if (call.state is CallState.ENDED and call.tx not in live_tx
                    and (call.bye_tx is None or call.bye_tx not in live_clients)):
                del self._calls[call_key]
                self._by_dialog.pop((call.invite.call_id, call.dialog.local_tag), None)


def _response_destination(request: Request, peer: Peer) -> Peer:
    """§18.2.2 with RFC 3581: where responses to ``request`` go."""
    if peer.reliable:
        return peer  # the connection the request came on
    top = request.via[0]
    if top.has_rport:
        # RFC 3581 §4: "the response MUST be sent to the IP address and port the request
        # came from" when rport is present.
        return peer
    # §18.2.2: to the received address (the source IP) and the sent-by port.
    return Peer("udp", (peer.addr[0], top.port or 5060))


def _parse_dtmf_info(body: bytes, ctype: str | None) -> tuple[str | None, int | None]:
    text = body.decode("utf-8", "replace").strip()
    digit: str | None = None
    duration: int | None = None
    if ctype == "application/dtmf":
        digit = text
    else:
        for line in text.splitlines():
            name, _, value = line.partition("=")
            name, value = name.strip().lower(), value.strip()
            if name == "signal":
                digit = value
            elif name == "duration" and value.isdigit():
                duration = int(value)
    if digit is None:
        return None, None
    digit = _DTMF_ALIASES.get(digit, digit.upper())
    return (digit, duration) if digit in _DTMF_DIGITS and len(digit) == 1 else (None, None)


def _parse_sipfrag(body: bytes) -> tuple[int | None, str]:
    """RFC 3420 message/sipfrag: the status line of the transfer's progress."""
    first = body.decode("utf-8", "replace").lstrip().split("\n", 1)[0].strip()
    parts = first.split(" ", 2)
    if len(parts) >= 2 and parts[0].upper() == SIP_VERSION and parts[1].isdigit() \
            and len(parts[1]) == 3:
        return int(parts[1]), parts[2] if len(parts) == 3 else ""
    return None, ""


def _printable(text: str) -> str:
    return "".join(ch if ch.isprintable() else "?" for ch in text)[:100]


_OUT_OF_DIALOG: dict[str, Callable[[UserAgent, Request, Peer, float], None]] = {
    "INVITE": UserAgent._on_invite,
    "OPTIONS": UserAgent._on_options,
}

_IN_DIALOG: dict[str, Callable[[UserAgent, _Call, Request, Peer, float], None]] = {
    "INVITE": UserAgent._on_reinvite,
    "BYE": UserAgent._on_bye,
    "OPTIONS": UserAgent._on_options_in_dialog,
    "INFO": UserAgent._on_info,
    "NOTIFY": UserAgent._on_notify,
    "REFER": UserAgent._on_refer_in,
}

__all__ = [
    "Admission", "ByeReceived", "CallCancelled", "CallEnded", "CallEstablished", "CallKey",
    "CallState", "DtmfInfo", "Event", "Hold", "IdSource", "IncomingCall", "MediaUpdated",
    "OptionsAnswered", "Peer", "RandomIds", "ReferDone", "ReferProgress", "Rejection",
    "Resume", "UaConfig", "UaError", "UserAgent", "split_list",
]
