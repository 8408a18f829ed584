"""What the SIP user agent tells its adapter, and the small values both sides share.

:class:`Peer` says where a message came from, :class:`Rejection` is what the admission
callback answers, and the frozen event classes (:data:`Event`) are what
:meth:`bridge.sip.ua.UserAgent.events` hands out: a call offered, cancelled, established,
ended; media updated, hold and resume; INFO digits; transfer progress; OPTIONS answered.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import NewType, Protocol

from bridge.sip.message import Request, Response, SipUri
from bridge.sip.sdp import NegotiatedMedia, SessionDescription

Address = tuple[str, int]
CallKey = NewType("CallKey", str)


@dataclass(frozen=True)
class Peer:
    """Where a message came from: ``transport`` is ``"udp"``, ``"tcp"`` or ``"tls"``.

    ``local_host`` is our address the message arrived on, when the adapter knows it (a
    socket bound to a wildcard address serves several interfaces); None means
    the user agent's ``host``.
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


@dataclass(frozen=True)
class Challenged:
    """A 401/407 to our ``method`` in the call: ``answered`` when it was sent again with
    credentials, else it failed (no credentials, or challenged again)."""

    call: CallKey
    method: str
    status: int
    answered: bool


@dataclass(frozen=True)
class RequestAnswered:
    """A final response to a request sent with ``send_request`` for ``owner``."""

    owner: str
    response: Response


@dataclass(frozen=True)
class RequestTimedOut:
    """A request sent with ``send_request`` for ``owner`` got no final response (Timer F)."""

    owner: str
    cseq: int


Event = (IncomingCall | CallCancelled | CallEstablished | ByeReceived | CallEnded
         | MediaUpdated | Hold | Resume | DtmfInfo | ReferProgress | ReferDone
         | OptionsAnswered | Challenged | RequestAnswered | RequestTimedOut)

__all__ = [
    "Address", "Admission", "ByeReceived", "CallCancelled", "CallEnded", "CallEstablished",
    "Challenged",
    "CallKey", "DtmfInfo", "Event", "Hold", "IdSource", "IncomingCall", "MediaUpdated",
    "OptionsAnswered", "Peer", "RandomIds", "ReferDone", "ReferProgress", "Rejection",
    "RequestAnswered", "RequestTimedOut", "Resume",
]
