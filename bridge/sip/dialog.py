"""SIP dialogs on the UAS side (RFC 3261 §12), sans-I/O.

Theory of operation
-------------------
A dialog is born when we answer an INVITE with a tag (§12.1.1): its Call-ID, our tag (the
To tag we added), the caller's tag (From), the route set (the INVITE's Record-Route, in
order), the remote target (the INVITE's Contact) and the caller's CSeq. It is EARLY until
a 2xx goes out, CONFIRMED afterwards and TERMINATED after a BYE either way; the legal moves
are the table :data:`TRANSITIONS`.

What it does: build requests inside the dialog (§12.2.1.1: Request-URI, Route from the
route set with loose or strict routing, From/To/Call-ID, our CSeq counting up), check the
caller's CSeq on requests inside it (§12.2.2), refresh the remote target on a re-INVITE,
and say where the next request goes. What it does not: transactions and timers
(transaction.py), or what a method means (ua.py).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from bridge.errors import SipError
from bridge.sip.message import (
    CallId,
    CSeq,
    Headers,
    NameAddr,
    Request,
    SipUri,
    Tag,
    Uri,
)

_NO_HEADERS = Headers()


class DialogState(enum.Enum):
    EARLY = "early"
    CONFIRMED = "confirmed"
    TERMINATED = "terminated"


class DialogInput(enum.Enum):
    SEND_2XX = "2xx sent"
    TERMINATE = "terminate"


TRANSITIONS: dict[DialogState, dict[DialogInput, DialogState]] = {
    DialogState.EARLY: {DialogInput.SEND_2XX: DialogState.CONFIRMED,
                        DialogInput.TERMINATE: DialogState.TERMINATED},
    DialogState.CONFIRMED: {DialogInput.SEND_2XX: DialogState.CONFIRMED,
                            DialogInput.TERMINATE: DialogState.TERMINATED},
    DialogState.TERMINATED: {DialogInput.TERMINATE: DialogState.TERMINATED},
}


class DialogError(SipError):
    """A move the dialog's table does not allow (a bug in the caller)."""


@dataclass(frozen=True)
class NextHop:
    """Where a request inside the dialog goes: a URI's host, port and transport."""

    host: str
    port: int | None
    transport: str | None
    scheme: str = "sip"


class Dialog:
    """One UAS dialog. Mutable: its CSeq counters and target change over its life."""

    def __init__(self, *, call_id: CallId, local_tag: Tag, remote_tag: Tag | None,
                 local_uri: NameAddr, remote_uri: NameAddr, remote_target: Uri,
                 route_set: tuple[NameAddr, ...], remote_seq: int,
                 local_contact: str) -> None:
        self.call_id = call_id
        self.local_tag = local_tag
        self.remote_tag = remote_tag
        self.local_uri = local_uri
        self.remote_uri = remote_uri
        self.remote_target = remote_target
        self.route_set = route_set
        self.remote_seq = remote_seq
        # §12.1.1: the local sequence number MUST be empty; the first request picks one.
        self.local_seq = 0
        self.local_contact = local_contact
        self.state = DialogState.EARLY

    @classmethod
    def from_invite(cls, invite: Request, *, local_tag: Tag, local_contact: str) -> Dialog:
        """§12.1.1: the UAS side of a dialog created by ``invite``."""
        contacts = invite.contact
        # §12.1.1: "The remote target MUST be set to the URI from the Contact header
        # field of the request"; an RFC 2543 peer without Contact falls back to From.
        target = contacts[0].uri if contacts else invite.from_.uri
        return cls(
            call_id=invite.call_id,
            local_tag=local_tag,
            remote_tag=invite.from_.tag,
            local_uri=NameAddr(invite.to.uri, invite.to.display,
                               tuple(p for p in invite.to.params if p[0].lower() != "tag")),
            remote_uri=invite.from_,
            remote_target=target,
            # §12.1.1: "The route set MUST be set to the list of URIs in the Record-Route
            # header field from the request, taken in order".
            route_set=invite.record_route,
            remote_seq=invite.cseq.seq,
            local_contact=local_contact,
        )

    def move(self, event: DialogInput) -> DialogState:
        try:
            self.state = TRANSITIONS[self.state][event]
        except KeyError:
            raise DialogError(f"dialog: {event.value} not allowed in {self.state.value}"
                              ) from None
        return self.state

    @property
    def terminated(self) -> bool:
        return self.state is DialogState.TERMINATED

    def matches(self, request: Request) -> bool:
        return (request.call_id == self.call_id and request.to.tag == self.local_tag
                and request.from_.tag == self.remote_tag)

    def accept_remote_cseq(self, request: Request) -> bool:
        """§12.2.2: a CSeq lower than the last one is out of order (answered 500)."""
        seq = request.cseq.seq
        if request.method in ("ACK", "CANCEL"):
            return True
        if seq < self.remote_seq:
            return False
        self.remote_seq = seq
        return True

    def refresh_target(self, request: Request) -> None:
        """§12.2.2: a target refresh request (re-INVITE) replaces the remote target."""
        if request.contact:
            self.remote_target = request.contact[0].uri

    def next_hop(self) -> NextHop:
        """§12.2.1.1 / §8.1.2: the first route if there is a route set, else the target."""
        uri = self.route_set[0].uri if self.route_set else self.remote_target
        if isinstance(uri, SipUri):
            return NextHop(uri.param("maddr") or uri.host, uri.port, uri.transport, uri.scheme)
        return NextHop("", None, None)

    def new_request(self, method: str, *, via: str, extra: Headers = _NO_HEADERS,
                    body: bytes = b"", content_type: str | None = None,
                    user_agent: str = "") -> Request:
        """Build a request inside the dialog (§12.2.1.1). ``via`` is the full Via value."""
        if self.local_seq == 0:
            self.local_seq = 1
        else:
            self.local_seq += 1
        uri: Uri = self.remote_target
        routes = [str(r) for r in self.route_set]
        if self.route_set and self.route_set[0].uri.param("lr") is None:
            # Strict routing: the first route becomes the Request-URI and the remote
            # target goes last in Route (§12.2.1.1).
            first = self.route_set[0].uri
            uri = first.with_params(()) if isinstance(first, SipUri) else first
            routes = routes[1:] + [f"<{self.remote_target}>"]
        remote = self.remote_uri
        items: list[tuple[str, str]] = [
            ("Via", via),
            ("Max-Forwards", "70"),
            ("From", str(self.local_uri.with_tag(self.local_tag))),
            ("To", str(remote if remote.tag is not None or self.remote_tag is None
                       else remote.with_tag(self.remote_tag))),
            ("Call-ID", self.call_id),
            ("CSeq", str(CSeq(self.local_seq, method))),
        ]
        items.extend(("Route", r) for r in routes)
        items.append(("Contact", self.local_contact))
        if user_agent:
            items.append(("User-Agent", user_agent))
        items.extend(extra.items)
        if content_type is not None:
            items.append(("Content-Type", content_type))
        return Request(method, uri, Headers(tuple(items)), body)
