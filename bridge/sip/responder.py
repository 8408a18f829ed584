"""The transaction side of the SIP user agent: its tables, the responses it builds, and
what it queues for the sockets.

:class:`Responder` is the base of :class:`bridge.sip.ua.UserAgent`. It keeps the server and
client transactions with the peer each one talks to, builds responses the way RFC 3261
§8.2.6 says (Via, From, Call-ID and CSeq copied, our tag on To), answers what could not be
parsed (:meth:`Responder._stateless_error`), sends requests inside a dialog, and queues
every outgoing message for the adapter: datagrams, stream bytes by connection, connections
to close. It owns no call logic.
"""

from __future__ import annotations

from bridge.sip.calls import Call, CallState
from bridge.sip.events import Address, CallKey, Event, IdSource, Peer, RandomIds
from bridge.sip.message import MAGIC_COOKIE, Headers, Request, Response, Tag, reason_phrase
from bridge.sip.settings import SipSettings
from bridge.sip.transaction import (
    InviteServerTransaction,
    NonInviteClientTransaction,
    NonInviteServerTransaction,
    ServerTransaction,
    TransactionKey,
    server_key,
)

KNOWN_METHODS = frozenset({
    "INVITE", "ACK", "CANCEL", "BYE", "OPTIONS", "REGISTER", "INFO", "PRACK", "UPDATE",
    "SUBSCRIBE", "NOTIFY", "REFER", "MESSAGE", "PUBLISH",
})
ALLOWED_METHODS = ("INVITE", "ACK", "CANCEL", "BYE", "OPTIONS", "INFO", "REFER", "NOTIFY",
                   "UPDATE", "PRACK")
SUPPORTED_SCHEMES = ("sip", "sips")
#: SIP extensions (option tags) we implement: session timers (RFC 4028) and reliable
#: provisional responses (RFC 3262); see bridge.sip.session_timer.
SUPPORTED_OPTION_TAGS: tuple[str, ...] = ("timer", "100rel")

NO_HEADERS = Headers()


class Responder:
    """Transactions, responses and the outgoing queues of one SIP endpoint."""

    def __init__(self, settings: SipSettings, *, host: str, port: int,
                 ids: IdSource | None = None) -> None:
        """``host``/``port`` are what we write in Via, Contact and SDP (the public address
        and the bound port). ``host`` is the default: a call whose INVITE came with a
        ``local_host`` uses that one for its Contact and in-dialog Via instead."""
        self.settings = settings
        self.host = host
        self.port = port
        #: The port of our SIP/TLS listener (Via and Contact of what goes over TLS).
        self.tls_port = settings.tls_port
        self._ids = ids or RandomIds()
        self._server_tx: dict[TransactionKey, ServerTransaction] = {}
        self._tx_peer: dict[TransactionKey, tuple[Peer, Request]] = {}
        self._client_tx: dict[TransactionKey, tuple[NonInviteClientTransaction, CallKey]] = {}
        #: Client transactions sent by ``send_request`` (not a call's), by their owner.
        self._owned: dict[TransactionKey, str] = {}
        self._calls: dict[CallKey, Call] = {}
        self._by_dialog: dict[tuple[str, str], CallKey] = {}
        self._datagrams: list[tuple[bytes, Address]] = []
        self._stream_out: list[tuple[bytes, Address]] = []
        self._tls_out: list[tuple[bytes, Address]] = []
        self._to_close: list[Address] = []
        #: Connections that calls were set up over and that are closed now.
        self._gone: set[Address] = set()
        self._events: list[Event] = []

    # ------------------------------------------------------------------------ outputs

    def datagrams_to_send(self) -> list[tuple[bytes, Address]]:
        out, self._datagrams = self._datagrams, []
        return out

    def data_to_send(self) -> list[tuple[bytes, Address]]:
        """Bytes for TCP connections, by the connection's peer address."""
        out, self._stream_out = self._stream_out, []
        return out

    def tls_data_to_send(self) -> list[tuple[bytes, Address]]:
        """Bytes for TLS connections, by the connection's key (``bridge.sip.tls``)."""
        out, self._tls_out = self._tls_out, []
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

    # -------------------------------------------------------------------- responses

    def _stateless_error(self, headers: Headers, peer: Peer, status: int, why: str) -> None:
        """Answer a request we could not parse (§8.2.6, copied fields as they came)."""
        items: list[tuple[str, str]] = [("Via", v) for v in headers.get_lines("Via")]
        for name in ("From", "To", "Call-ID", "CSeq"):
            value = headers.get(name)
            if value is not None:
                if name == "To" and ";tag=" not in value.replace(" ", "").lower():
                    value += f";tag={self._ids.token()}"
                items.append((name, value))
        items.append(("Server", self.settings.user_agent))
        phrase = f"{reason_phrase(status)} ({_printable(why)})"
        response = Response(status, phrase, Headers(tuple(items)))
        self._send(response.serialize(), peer)

    def _new_invite_tx(self, request: Request, peer: Peer, now: float
                       ) -> InviteServerTransaction:
        key = server_key(request)
        trying = self._make_response(request, 100, peer)
        tx = InviteServerTransaction(request, key, reliable=peer.reliable,
                                     timers=self.settings.timers, now=now, trying=trying)
        self._server_tx[key] = tx
        self._tx_peer[key] = (peer, request)
        self._flush_server(key, tx)
        return tx

    def _respond_new(self, request: Request, peer: Peer, status: int, now: float, *,
                     reason: str | None = None, extra: Headers = NO_HEADERS,
                     contact: str | None = None, body: bytes = b"",
                     content_type: str | None = None) -> None:
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
                                        timers=self.settings.timers)
        self._server_tx[key] = tx
        self._tx_peer[key] = (peer, request)
        response = self._make_response(request, status, peer, reason=reason, to_tag=to_tag,
                                       extra=extra, contact=contact, body=body,
                                       content_type=content_type)
        tx.send(response, now)
        self._flush_server(key, tx)

    def _respond_tx(self, tx: InviteServerTransaction, request: Request, status: int, *,
                    now: float, reason: str | None = None, to_tag: str | None = None,
                    contact: str | None = None, body: bytes = b"",
                    content_type: str | None = None, extra: Headers = NO_HEADERS) -> None:
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
                       extra: Headers = NO_HEADERS) -> Response:
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
        items.append(("Server", self.settings.user_agent))
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

    def _sent_by(self, host: str, transport: str = "udp") -> str:
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return f"{host}:{self.tls_port if transport == 'tls' else self.port}"

    def _contact(self, peer: Peer, host: str, dialog_request: Request | None = None) -> str:
        if ("tls" in self.settings.transports and dialog_request is not None
                and wants_sips(dialog_request)):
            return f"<sips:{self._sent_by(host, 'tls')}>"   # §12.1.1: SIPS asked for
        if peer.transport == "tls":
            # sip: over TLS: transport=tls (RFC 5630 §3.1.3: deprecated, but the usage).
            return f"<sip:{self._sent_by(host, 'tls')};transport=tls>"
        suffix = ";transport=tcp" if peer.transport == "tcp" else ""
        return f"<sip:{self._sent_by(host)}{suffix}>"

    # ----------------------------------------------------------- requests and sending

    def _send_in_dialog(self, call: Call, method: str, now: float, *,
                        extra: Headers = NO_HEADERS, body: bytes = b"",
                        content_type: str | None = None) -> NonInviteClientTransaction:
        peer = self._request_peer(call)
        via = (f"SIP/2.0/{peer.transport.upper()} "
               f"{self._sent_by(call.local_host, peer.transport)}"
               f";branch={MAGIC_COOKIE}{self._ids.token()};rport")
        request = self._sign(call, call.dialog.new_request(
            method, via=via, extra=extra, body=body, content_type=content_type,
            user_agent=self.settings.user_agent))
        ctx = NonInviteClientTransaction(request, reliable=peer.reliable,
                                         timers=self.settings.timers, now=now)
        self._client_tx[ctx.key] = (ctx, call.key)
        self._tx_peer[ctx.key] = (peer, request)
        self._flush_client(ctx, call.key)
        return ctx

    def _sign(self, call: Call, request: Request) -> Request:
        """``request`` with the call's credentials, if any (see the user agent)."""
        return request
    def send_request(self, request: Request, peer: Peer, now: float, owner: str
                     ) -> NonInviteClientTransaction:
        """Send a request outside any call (a REGISTER) in a client transaction; its final
        response or timeout comes back as ``RequestAnswered``/``RequestTimedOut``."""
        ctx = NonInviteClientTransaction(request, reliable=peer.reliable,
                                         timers=self.settings.timers, now=now)
        self._client_tx[ctx.key] = (ctx, CallKey(""))
        self._tx_peer[ctx.key] = (peer, request)
        self._owned[ctx.key] = owner
        self._flush_client(ctx, CallKey(""))
        return ctx

    def _request_peer(self, call: Call) -> Peer:
        # A stream the call came on that is closed now: to the next hop on a new one.
        gone = call.peer.reliable and call.peer.addr in self._gone
        if not gone and (call.peer.reliable or (self.settings.symmetric_requests
                                                and not call.dialog.route_set)):
            # TCP: reuse the connection the INVITE came on. UDP behind NAT: the source.
            return call.peer
        hop = call.dialog.next_hop()
        # RFC 5630 §3.1.1: a sips: next hop is reached over TLS.
        transport = "tls" if hop.scheme == "sips" else hop.transport or call.peer.transport
        default = 5061 if transport == "tls" else 5060
        return Peer(transport if transport in ("udp", "tcp", "tls") else call.peer.transport,
                    (hop.host, hop.port or default))

    def _flush_server(self, key: TransactionKey, tx: ServerTransaction) -> None:
        messages = tx.take_messages()
        if not messages:
            return
        peer, request = self._tx_peer[key]
        dest = response_destination(request, peer)
        for message in messages:
            self._send(message.serialize(), dest)

    def _flush_client(self, ctx: NonInviteClientTransaction, call_key: CallKey) -> None:
        peer, _ = self._tx_peer[ctx.key]
        for message in ctx.take_messages():
            self._send(message.serialize(), peer)

    def _send(self, data: bytes, peer: Peer) -> None:
        if peer.transport == "udp":
            self._datagrams.append((data, peer.addr))
        elif peer.transport == "tls":
            self._tls_out.append((data, peer.addr))
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
            self._owned.pop(key, None)
        live_tx = set(self._server_tx.values())
        live_clients = {tx for tx, _ in self._client_tx.values()}
        for call_key, call in list(self._calls.items()):
            if (call.state is CallState.ENDED and call.tx not in live_tx
                    and (call.bye_tx is None or call.bye_tx not in live_clients)):
                del self._calls[call_key]
                self._by_dialog.pop((call.invite.call_id, call.dialog.local_tag), None)
        if self._gone:
            self._gone &= {call.peer.addr for call in self._calls.values()}


def wants_sips(request: Request) -> bool:
    """§12.1.1: the dialog ``request`` creates must use SIPS (its Request-URI, else its top
    Record-Route, else its Contact, is a ``sips:`` URI)."""
    if request.uri.scheme == "sips":
        return True
    routes = request.record_route
    if routes:
        return routes[0].uri.scheme == "sips"
    contacts = request.contact
    return bool(contacts) and contacts[0].uri.scheme == "sips"


def response_destination(request: Request, peer: Peer) -> Peer:
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


def _printable(text: str) -> str:
    return "".join(ch if ch.isprintable() else "?" for ch in text)[:100]



__all__ = ["ALLOWED_METHODS", "KNOWN_METHODS", "NO_HEADERS", "Responder", "SUPPORTED_OPTION_TAGS",
           "SUPPORTED_SCHEMES", "response_destination", "wants_sips"]
