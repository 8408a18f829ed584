"""One call as the SIP user agent keeps it: dialog, INVITE transaction, state machine.

A call is a dialog plus its INVITE transaction and a small state machine
(:data:`CALL_TRANSITIONS`): OFFERED -> ANSWERING (our 2xx is out, waiting for the ACK) ->
ESTABLISHED -> ENDED, with CANCEL, reject, BYE and the ACK timeout as the ways out. A move
the table does not allow is a bug in the caller and raises :class:`UaError`.

Also here: the bodies a call receives that are not SDP, INFO digits
(``application/dtmf-relay``, ``application/dtmf``) and the ``message/sipfrag`` of a
transfer's NOTIFY.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from bridge.errors import SipError
from bridge.sip.authclient import ChallengeMemory
from bridge.sip.dialog import Dialog
from bridge.sip.events import CallKey, Peer
from bridge.sip.message import SIP_VERSION, Request
from bridge.sip.sdp import NegotiatedMedia, SessionDescription
from bridge.sip.session_timer import CallExtensions
from bridge.sip.transaction import InviteServerTransaction, NonInviteClientTransaction

DTMF_INFO_TYPES = ("application/dtmf-relay", "application/dtmf")
_DTMF_DIGITS = frozenset("0123456789*#ABCD")
_DTMF_ALIASES = {"10": "*", "11": "#", "12": "A", "13": "B", "14": "C", "15": "D"}


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
class Call:
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
    #: Challenges our requests in this call met (bridge.sip.authclient).
    auth: ChallengeMemory = field(default_factory=ChallengeMemory)
    #: Session timer and reliable provisionals (RFC 4028, RFC 3262).
    ext: CallExtensions = field(default_factory=CallExtensions)

    def move(self, event: CallInput) -> CallState:
        try:
            self.state = CALL_TRANSITIONS[self.state][event]
        except KeyError:
            raise UaError(f"call {self.key}: {event.value} not allowed in "
                          f"{self.state.value}") from None
        return self.state



def parse_dtmf_info(body: bytes, ctype: str | None) -> tuple[str | None, int | None]:
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


def parse_sipfrag(body: bytes) -> tuple[int | None, str]:
    """RFC 3420 message/sipfrag: the status line of the transfer's progress."""
    first = body.decode("utf-8", "replace").lstrip().split("\n", 1)[0].strip()
    parts = first.split(" ", 2)
    if len(parts) >= 2 and parts[0].upper() == SIP_VERSION and parts[1].isdigit() \
            and len(parts[1]) == 3:
        return int(parts[1]), parts[2] if len(parts) == 3 else ""
    return None, ""



__all__ = ["CALL_TRANSITIONS", "Call", "CallInput", "CallState", "DTMF_INFO_TYPES", "UaError",
           "parse_dtmf_info", "parse_sipfrag"]
