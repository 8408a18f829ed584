"""Our own re-INVITE: the INVITE client transaction (RFC 3261 §17.1.1, RFC 6026), sans-I/O.

We send an INVITE only inside a call, to refresh its session when the caller does not
allow UPDATE (RFC 4028 §7.4, see :mod:`bridge.sip.extensions`). The transaction is a
table like the others in :mod:`bridge.sip.transaction`:

* CALLING: Timer A retransmits the INVITE on UDP (T1, doubling); Timer B (64·T1) gives
  up (``timed_out``). A 1xx moves it to PROCEEDING (no more retransmissions, no timeout).
* a 2xx -> ACCEPTED (RFC 6026): the core ACKs it, and each retransmitted 2xx again;
  Timer M (64·T1) ends it.
* a 3xx-6xx -> COMPLETED: the ACK goes out here, in the INVITE's transaction (same
  branch), again for every retransmission; Timer D (32 s on UDP, 0 on TCP) ends it.

:func:`ack_for_2xx` builds the ACK of a 2xx (a new transaction: a new branch, the
INVITE's CSeq number, the To tag of the answer).
"""

from __future__ import annotations

import enum

from bridge.sip.message import Headers, Request, Response
from bridge.sip.settings import Timers
from bridge.sip.transaction import State, TransactionError, TransactionKey, client_key


class Got(enum.Enum):
    RETRANSMIT = "timer A"
    TIMEOUT = "timer B"
    PROVISIONAL = "1xx"
    SUCCESS = "2xx"
    FAILURE = "3xx-6xx"
    LINGER_END = "timer D/M"


S, G = State, Got
INVITE_CLIENT: dict[State, dict[Got, State]] = {
    S.TRYING: {G.RETRANSMIT: S.TRYING, G.TIMEOUT: S.TERMINATED, G.PROVISIONAL: S.PROCEEDING,
               G.SUCCESS: S.ACCEPTED, G.FAILURE: S.COMPLETED},     # TRYING: "Calling"
    S.PROCEEDING: {G.PROVISIONAL: S.PROCEEDING, G.SUCCESS: S.ACCEPTED,
                   G.FAILURE: S.COMPLETED},
    S.ACCEPTED: {G.PROVISIONAL: S.ACCEPTED, G.SUCCESS: S.ACCEPTED,
                 G.LINGER_END: S.TERMINATED},
    S.COMPLETED: {G.PROVISIONAL: S.COMPLETED, G.FAILURE: S.COMPLETED,
                  G.SUCCESS: S.COMPLETED, G.LINGER_END: S.TERMINATED},
    S.TERMINATED: {G.PROVISIONAL: S.TERMINATED, G.SUCCESS: S.TERMINATED,
                   G.FAILURE: S.TERMINATED},
}
del S, G


class InviteClientTransaction:
    """One INVITE we sent, until its final response is ACKed and absorbed."""

    def __init__(self, request: Request, *, reliable: bool, timers: Timers,
                 now: float) -> None:
        self.request = request
        self.key: TransactionKey = client_key(request.via[0].branch or "", "INVITE")
        self.reliable = reliable
        self.timers = timers
        self.state = State.TRYING
        self.final: Response | None = None
        #: The ACK of our 2xx, kept to answer its retransmissions (built by the core).
        self.ack: Request | None = None
        self.timed_out = False
        self._out: list[Request] = [request]
        self._interval = timers.t1
        self._deadlines: dict[str, float] = {"give_up": now + timers.b}     # Timer B
        if not reliable:
            self._deadlines["retransmit"] = now + timers.t1                # Timer A

    def _fire(self, got: Got) -> None:
        try:
            self.state = INVITE_CLIENT[self.state][got]
        except KeyError:
            raise TransactionError(f"INVITE client: {got.value} not allowed in "
                                    f"{self.state.value}") from None
        if self.state is State.TERMINATED:
            self._deadlines.clear()

    @property
    def terminated(self) -> bool:
        return self.state is State.TERMINATED

    def take_messages(self) -> list[Request]:
        out, self._out = self._out, []
        return out

    def get_timer(self) -> float | None:
        return min(self._deadlines.values()) if self._deadlines else None

    def receive_response(self, response: Response, now: float) -> bool:
        """Feed a matching response: True when the core should act on it (the first
        final one). A non-2xx is ACKed here; a 2xx the core ACKs (:func:`ack_for_2xx`)."""
        status = response.status
        first_final = self.final is None and status >= 200
        got = Got.PROVISIONAL if status < 200 else Got.SUCCESS if status < 300 else Got.FAILURE
        self._fire(got)
        if status < 200:
            self._deadlines.pop("retransmit", None)
            self._deadlines.pop("give_up", None)
            return False
        if first_final:
            self.final = response
            self._deadlines.clear()
            # Timer M (RFC 6026) absorbs 2xx retransmissions; Timer D non-2xx ones.
            linger = (self.timers.b if status < 300 else 0.0 if self.reliable else 32.0)
            self._deadlines["linger"] = now + linger
        if status >= 300 and self.state is State.COMPLETED:
            self._out.append(ack_for_failure(self.request, response))
        return first_final

    def handle_timer(self, now: float) -> None:
        while self._deadlines:
            name = min(self._deadlines, key=self._deadlines.__getitem__)
            deadline = self._deadlines[name]
            if deadline > now:
                return
            del self._deadlines[name]
            if name == "retransmit":
                self._fire(Got.RETRANSMIT)
                self._out.append(self.request)
                self._interval *= 2                        # Timer A doubles, no cap
                self._deadlines["retransmit"] = deadline + self._interval
            elif name == "give_up":
                self._fire(Got.TIMEOUT)
                self.timed_out = True
            else:
                self._fire(Got.LINGER_END)


def ack_for_failure(invite: Request, response: Response) -> Request:
    """§17.1.1.3: the ACK of a non-2xx: the INVITE's Request-URI, top Via, From, Call-ID,
    CSeq number and Route; To from the response."""
    headers = invite.headers
    items = [("Via", headers.get_lines("Via")[0])]
    items += [(k, v) for k, v in headers.items if k in ("From", "Call-ID", "Route",
                                                          "Max-Forwards")]
    items += [("To", response.headers.get("To") or ""), ("CSeq", f"{invite.cseq.seq} ACK")]
    return Request("ACK", invite.uri, Headers(tuple(items)))


def ack_for_2xx(invite: Request, response: Response, via: str) -> Request:
    """§13.2.2.4: the ACK of a 2xx is a request of its own in the dialog (a new branch in
    ``via``), with the INVITE's CSeq number and no body (our offer was in the INVITE)."""
    headers = invite.headers.replace("Via", via).replace("CSeq", f"{invite.cseq.seq} ACK")
    headers = headers.remove("Content-Type").remove("Content-Length")
    to = response.headers.get("To")
    if to is not None:
        headers = headers.replace("To", to)
    return Request("ACK", invite.uri, headers)


__all__ = ["INVITE_CLIENT", "InviteClientTransaction", "ack_for_2xx",
           "ack_for_failure"]
