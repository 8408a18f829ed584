"""SIP transactions (RFC 3261 §17), sans-I/O, with timers as deadlines.

Theory of operation
-------------------
A transaction is a request plus its responses, and the timers that make them survive UDP
loss. Each one here is a small state machine whose legal moves are a table,
``TRANSITIONS[state][input] -> state`` (a missing entry is a programming error in the
caller and raises :class:`TransactionError`); the methods around the table only queue
messages and set deadlines. Nothing here reads the clock or touches a socket: ``now`` is
passed in, :meth:`get_timer` tells the earliest deadline, :meth:`handle_timer` fires what
is due, and :meth:`take_messages` hands the bytes-to-be to the UA core, which knows where
to send them.

Server INVITE (§17.2.1, with the "Accepted" state of RFC 6026):

* created -> PROCEEDING, ``100 Trying`` queued at once (§17.2.1: the server transaction
  MUST generate a 100 unless the TU answers within 200 ms; we never wait to find out);
* a 2xx -> ACCEPTED. The 2xx is retransmitted at T1, 2·T1, 4·T1 ... capped at T2 until
  the ACK comes (the UAS core's job in §13.3.1.4, done here so that one deadline serves
  both); after 64·T1 without ACK the transaction gives up (``timed_out``) and the core
  ends the session with a BYE, as §13.3.1.4 says. The ACK moves it to CONFIRMED, where it
  lingers until Timer L (64·T1 after the 2xx) to absorb INVITE retransmissions;
* a 3xx-6xx -> COMPLETED: Timer G retransmits it (UDP only) doubling up to T2, Timer H
  (64·T1) gives up; the ACK moves it to CONFIRMED for Timer I (T4 on UDP, 0 on TCP).
* a retransmitted INVITE gets the last response again.

Server non-INVITE (§17.2.2): TRYING -> PROCEEDING (1xx) -> COMPLETED (final), where it
stays for Timer J (64·T1 on UDP, 0 on TCP) answering retransmissions with the final
response.

Client non-INVITE (§17.1.2, for our BYE/REFER/NOTIFY): TRYING -> PROCEEDING -> COMPLETED.
Timer E retransmits the request on UDP (T1 doubling to T2; T2 once a 1xx came), Timer F
(64·T1) times it out, Timer K (T4 on UDP, 0 on TCP) absorbs response retransmissions.
"""

from __future__ import annotations

import enum
import logging

from bridge.errors import SipError
from bridge.sip.message import MAGIC_COOKIE, Request, Response
from bridge.sip.settings import Timers

log = logging.getLogger(__name__)


class TransactionError(SipError):
    """A move the transaction's table does not allow: a bug in the caller, not the peer."""


class State(enum.Enum):
    TRYING = "trying"
    PROCEEDING = "proceeding"
    ACCEPTED = "accepted"
    COMPLETED = "completed"
    CONFIRMED = "confirmed"
    TERMINATED = "terminated"


class Input(enum.Enum):
    SEND_1XX = "send 1xx"
    SEND_2XX = "send 2xx"
    SEND_FINAL = "send 3xx-6xx"       # for non-INVITE: any final
    RECV_REQUEST = "request retransmission"
    RECV_ACK = "ACK"
    RECV_1XX = "recv 1xx"
    RECV_FINAL = "recv final"
    RETRANSMIT = "timer G/E"          # retransmission timer
    GIVE_UP = "timer H/F"             # 64*T1: no ACK / no response
    LINGER_END = "timer I/J/K/L"


S, I = State, Input  # noqa: E741 - short names keep the tables readable

INVITE_SERVER: dict[State, dict[Input, State]] = {
    S.PROCEEDING: {I.SEND_1XX: S.PROCEEDING, I.SEND_2XX: S.ACCEPTED,
                   I.SEND_FINAL: S.COMPLETED, I.RECV_REQUEST: S.PROCEEDING},
    S.ACCEPTED: {I.RECV_REQUEST: S.ACCEPTED, I.RECV_ACK: S.CONFIRMED,
                 I.RETRANSMIT: S.ACCEPTED, I.GIVE_UP: S.TERMINATED},
    S.COMPLETED: {I.RECV_REQUEST: S.COMPLETED, I.RECV_ACK: S.CONFIRMED,
                  I.RETRANSMIT: S.COMPLETED, I.GIVE_UP: S.TERMINATED},
    S.CONFIRMED: {I.RECV_REQUEST: S.CONFIRMED, I.RECV_ACK: S.CONFIRMED,
                  I.LINGER_END: S.TERMINATED},
    S.TERMINATED: {I.RECV_REQUEST: S.TERMINATED, I.RECV_ACK: S.TERMINATED},
}

NON_INVITE_SERVER: dict[State, dict[Input, State]] = {
    S.TRYING: {I.SEND_1XX: S.PROCEEDING, I.SEND_FINAL: S.COMPLETED,
               I.RECV_REQUEST: S.TRYING},
    S.PROCEEDING: {I.SEND_1XX: S.PROCEEDING, I.SEND_FINAL: S.COMPLETED,
                   I.RECV_REQUEST: S.PROCEEDING},
    S.COMPLETED: {I.RECV_REQUEST: S.COMPLETED, I.LINGER_END: S.TERMINATED},
    S.TERMINATED: {I.RECV_REQUEST: S.TERMINATED},
}

NON_INVITE_CLIENT: dict[State, dict[Input, State]] = {
    S.TRYING: {I.RETRANSMIT: S.TRYING, I.RECV_1XX: S.PROCEEDING,
               I.RECV_FINAL: S.COMPLETED, I.GIVE_UP: S.TERMINATED},
    S.PROCEEDING: {I.RETRANSMIT: S.PROCEEDING, I.RECV_1XX: S.PROCEEDING,
                   I.RECV_FINAL: S.COMPLETED, I.GIVE_UP: S.TERMINATED},
    S.COMPLETED: {I.RECV_1XX: S.COMPLETED, I.RECV_FINAL: S.COMPLETED,
                  I.LINGER_END: S.TERMINATED},
    S.TERMINATED: {I.RECV_1XX: S.TERMINATED, I.RECV_FINAL: S.TERMINATED},
}

del S, I

TransactionKey = tuple[str, ...]


def server_key(request: Request) -> TransactionKey:
    """Key matching a request to its server transaction (§17.2.3).

    ACK for a non-2xx and CANCEL carry the INVITE's branch; the method part keeps CANCEL
    apart from the INVITE it cancels while ACK maps onto the INVITE.
    """
    top = request.via[0]
    method = "INVITE" if request.method == "ACK" else request.method
    branch = top.branch
    if branch is not None and branch.startswith(MAGIC_COOKIE):
        return ("3261", branch, top.sent_by.lower(), method)
    # RFC 2543 peers (RFC 4475 inv2543): tags, Call-ID, CSeq and top Via. The To tag is
    # left out (the ACK for our non-2xx carries the tag we added), and so is the
    # Request-URI (an ACK may carry the Contact we sent instead).
    return ("2543", request.from_.tag or "", request.call_id, str(request.cseq.seq),
            str(top), method)


def client_key(branch: str, method: str) -> TransactionKey:
    return ("client", branch, method)


def response_client_key(response: Response) -> TransactionKey:
    """§17.1.3: the response's top Via branch and CSeq method."""
    return client_key(response.via[0].branch or "", response.cseq.method)


class _Transaction:
    TABLE: dict[State, dict[Input, State]] = {}

    def __init__(self, key: TransactionKey, *, reliable: bool, timers: Timers,
                 state: State) -> None:
        self.key = key
        self.reliable = reliable
        self.timers = timers
        self.state = state
        self._deadlines: dict[str, float] = {}
        self._out: list[Request | Response] = []

    def _fire(self, event: Input) -> State:
        try:
            new = self.TABLE[self.state][event]
        except KeyError:
            raise TransactionError(
                f"{type(self).__name__}: {event.value} not allowed in {self.state.value}"
            ) from None
        if new is not self.state:
            log.debug("transaction %s: %s -> %s on %s", self.key[1], self.state.value,
                      new.value, event.value)
        self.state = new
        if new is State.TERMINATED:
            self._deadlines.clear()
        return new

    @property
    def terminated(self) -> bool:
        return self.state is State.TERMINATED

    def take_messages(self) -> list[Request | Response]:
        out, self._out = self._out, []
        return out

    def get_timer(self) -> float | None:
        return min(self._deadlines.values()) if self._deadlines else None

    def handle_timer(self, now: float) -> None:
        while self._deadlines:
            name = min(self._deadlines, key=self._deadlines.__getitem__)
            if self._deadlines[name] > now:
                return
            deadline = self._deadlines.pop(name)
            self._on_timer(name, deadline)

    def _on_timer(self, name: str, deadline: float) -> None:
        raise NotImplementedError


class InviteServerTransaction(_Transaction):
    TABLE = INVITE_SERVER

    def __init__(self, request: Request, key: TransactionKey, *, reliable: bool,
                 timers: Timers, now: float, trying: Response) -> None:
        super().__init__(key, reliable=reliable, timers=timers, state=State.PROCEEDING)
        self.request = request
        self.last_response: Response = trying
        self.timed_out = False
        self._interval = timers.t1
        self._out.append(trying)

    @property
    def final_sent(self) -> bool:
        return self.state is not State.PROCEEDING

    def send(self, response: Response, now: float) -> None:
        status = response.status
        event = (Input.SEND_1XX if status < 200 else
                 Input.SEND_2XX if status < 300 else Input.SEND_FINAL)
        self._fire(event)
        self.last_response = response
        self._out.append(response)
        if event is Input.SEND_2XX:
            # §13.3.1.4: retransmit the 2xx at T1, doubling to T2, on every transport
            # (a UDP hop may lie beyond the proxy), until the ACK; give up at 64*T1.
            self._interval = self.timers.t1
            self._deadlines["retransmit"] = now + self._interval
            self._deadlines["give_up"] = now + self.timers.b
            self._deadlines["linger"] = now + self.timers.b      # Timer L (RFC 6026)
        elif event is Input.SEND_FINAL:
            # §17.2.1: Timer G only on unreliable transports; Timer H always.
            if not self.reliable:
                self._interval = self.timers.t1
                self._deadlines["retransmit"] = now + self._interval
            self._deadlines["give_up"] = now + self.timers.b

    def receive_retransmission(self, now: float) -> None:
        """The INVITE again: answer it with the last response (§17.2.1)."""
        state = self.state
        self._fire(Input.RECV_REQUEST)
        if state in (State.PROCEEDING, State.ACCEPTED, State.COMPLETED):
            self._out.append(self.last_response)

    def receive_ack(self, now: float) -> None:
        """ACK for our final response (same branch for non-2xx; via the dialog for 2xx)."""
        state = self.state
        self._fire(Input.RECV_ACK)
        if state in (State.ACCEPTED, State.COMPLETED):
            self._deadlines.pop("retransmit", None)
            self._deadlines.pop("give_up", None)
            if state is State.COMPLETED:
                # Timer I: T4 for unreliable transports, zero for reliable ones.
                self._deadlines["linger"] = now + (0.0 if self.reliable else self.timers.t4)

    def _on_timer(self, name: str, deadline: float) -> None:
        if name == "retransmit":
            self._fire(Input.RETRANSMIT)
            self._out.append(self.last_response)
            self._interval = min(2 * self._interval, self.timers.t2)
            self._deadlines["retransmit"] = deadline + self._interval
        elif name == "give_up":
            self._fire(Input.GIVE_UP)
            self.timed_out = True
        elif name == "linger" and self.state is State.CONFIRMED:
            self._fire(Input.LINGER_END)


class NonInviteServerTransaction(_Transaction):
    TABLE = NON_INVITE_SERVER

    def __init__(self, request: Request, key: TransactionKey, *, reliable: bool,
                 timers: Timers) -> None:
        super().__init__(key, reliable=reliable, timers=timers, state=State.TRYING)
        self.request = request
        self.last_response: Response | None = None

    def send(self, response: Response, now: float) -> None:
        self._fire(Input.SEND_1XX if response.status < 200 else Input.SEND_FINAL)
        self.last_response = response
        self._out.append(response)
        if self.state is State.COMPLETED:
            # Timer J: 64*T1 for unreliable transports, zero for reliable ones.
            if self.reliable:
                self._fire(Input.LINGER_END)
            else:
                self._deadlines["linger"] = now + self.timers.b

    def receive_retransmission(self, now: float) -> None:
        self._fire(Input.RECV_REQUEST)
        if self.last_response is not None and self.state is not State.TERMINATED:
            self._out.append(self.last_response)

    def _on_timer(self, name: str, deadline: float) -> None:
        self._fire(Input.LINGER_END)


class NonInviteClientTransaction(_Transaction):
    TABLE = NON_INVITE_CLIENT

    def __init__(self, request: Request, *, reliable: bool, timers: Timers,
                 now: float) -> None:
        branch = request.via[0].branch or ""
        super().__init__(client_key(branch, request.method), reliable=reliable,
                         timers=timers, state=State.TRYING)
        self.request = request
        self.responses: list[Response] = []
        self.timed_out = False
        self._interval = timers.t1
        self._out.append(request)
        if not reliable:
            self._deadlines["retransmit"] = now + self._interval     # Timer E
        self._deadlines["give_up"] = now + timers.b                   # Timer F

    @property
    def final_response(self) -> Response | None:
        for response in self.responses:
            if response.status >= 200:
                return response
        return None

    def receive_response(self, response: Response, now: float) -> bool:
        """Feed a matching response; True when the TU should see it (not a retransmission)."""
        final = response.status >= 200
        state = self.state
        self._fire(Input.RECV_FINAL if final else Input.RECV_1XX)
        if state in (State.COMPLETED, State.TERMINATED):
            return False
        self.responses.append(response)
        if final:
            self._deadlines.pop("retransmit", None)
            self._deadlines.pop("give_up", None)
            if self.reliable:
                self._fire(Input.LINGER_END)
            else:
                self._deadlines["linger"] = now + self.timers.t4     # Timer K
        return True

    def _on_timer(self, name: str, deadline: float) -> None:
        if name == "retransmit":
            self._fire(Input.RETRANSMIT)
            self._out.append(self.request)
            # §17.1.2.2: in PROCEEDING the request is retransmitted every T2.
            self._interval = (self.timers.t2 if self.state is State.PROCEEDING
                              else min(2 * self._interval, self.timers.t2))
            self._deadlines["retransmit"] = deadline + self._interval
        elif name == "give_up":
            self._fire(Input.GIVE_UP)
            self.timed_out = True
        elif name == "linger":
            self._fire(Input.LINGER_END)


ServerTransaction = InviteServerTransaction | NonInviteServerTransaction
