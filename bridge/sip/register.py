"""Registering with a registrar as a user agent client (RFC 3261 §10), sans-I/O.

Theory of operation
-------------------
One :class:`Registration` per ``[[sip.accounts]]`` table keeps a binding of the account's
address of record (``sip:user@domain``) to our Contact at the registrar. It is fed final
responses, transaction timeouts and ``now``; it hands out REGISTER requests
(:meth:`Registration.take_requests`), the next deadline (:meth:`Registration.get_timer`)
and what happened (:meth:`Registration.take_results`, for logs and metrics). The adapter
(:mod:`bridge.sip.registrations`) sends each request in a client transaction of the user
agent, which retransmits it on UDP and times it out (Timer F).

The states are a table (:data:`TRANSITIONS`); a move it does not list is a bug and raises
:class:`RegistrationError`::

    idle --start--> registering --2xx--> registered --refresh due--> registering
                         |  ^                                            |
                    fail |  | retry due                                   | fail
                         v  |                                             v
                      waiting (back-off) <-------------------------------+
    any but stopped --stop--> unregistering --final or timeout--> stopped

* One Call-ID and From tag for the account's life, the CSeq one higher per request
  (§10.2.4 refreshes use the same Call-ID); the Contact carries a user part unique to the
  account (:attr:`Registration.contact_user`), so that a call the registrar forwards to
  this binding says by its Request-URI which account it came through.
* 2xx: the granted lifetime is our Contact's ``expires`` in the answer, else its Expires
  header, else what we asked for. The refresh is due at half of it, never later than
  :data:`REFRESH_MARGIN_S` before it runs out.
* 401/407: answered with credentials (:mod:`bridge.sip.digest`, ``qop=auth``, the nonce
  count rising per use of a nonce, a fresh cnonce each time). A challenge after our
  credentials for a nonce just received means the user name or password is wrong (a
  failure); one marked ``stale=true``, or one with a new nonce after credentials for an
  older one (a refresh), is answered again with no failure counted.
* 423: the Min-Expires of the answer is asked for next, at once.
* Other answers and timeouts: a failure; the next try after a back-off of
  :data:`BACKOFF_FIRST_S` doubling to :data:`BACKOFF_MAX_S`, less up to
  :data:`BACKOFF_JITTER` of it at random (so many bridges do not retry in step), at least
  a 503's Retry-After. A success resets it. A binding granted earlier still counts until
  its own expiry.
* :meth:`Registration.stop`: a REGISTER with ``expires=0`` when a binding may exist; the
  adapter bounds how long it waits for the answer.

The password is given to the constructor and used only to compute digest responses; it
is never in a result, a log line or a repr.
"""

from __future__ import annotations

import enum
import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

from bridge.errors import SipError, SipParseError
from bridge.sip.digest import Challenge, authorization, parse_challenge
from bridge.sip.events import IdSource, RandomIds
from bridge.sip.lines import Account
from bridge.sip.message import MAGIC_COOKIE, Headers, Request, Response, SipUri, parse_uri

log = logging.getLogger(__name__)

#: Back-off after a failure: the first wait, doubling up to the cap (seconds).
BACKOFF_FIRST_S = 5.0
BACKOFF_MAX_S = 300.0
#: Up to this fraction of a back-off is taken off at random.
BACKOFF_JITTER = 0.2
#: A refresh is sent at least this long before the binding runs out (seconds).
REFRESH_MARGIN_S = 5.0
#: Challenges answered within one attempt before it counts as a failure (a loop guard).
MAX_CHALLENGES = 4
#: The longest lifetime a 423's Min-Expires may ask for (one day, as ``expires`` allows).
MAX_EXPIRES = 86400


class RegistrationError(SipError):
    """A move the registration's table does not allow: a bug in the caller."""


class RegState(enum.Enum):
    IDLE = "idle"
    REGISTERING = "registering"
    REGISTERED = "registered"
    WAITING = "waiting"             # failed; the next try after a back-off
    UNREGISTERING = "unregistering"
    STOPPED = "stopped"


class RegInput(enum.Enum):
    START = "start"
    GRANTED = "2xx"
    FAILED = "failure"
    RESEND = "challenge or 423"     # the same attempt goes on with a new request
    REFRESH_DUE = "refresh due"
    RETRY_DUE = "retry due"
    STOP = "stop"
    DONE = "unregister answered"


R, In = RegState, RegInput
TRANSITIONS: dict[RegState, dict[RegInput, RegState]] = {
    R.IDLE: {In.START: R.REGISTERING, In.STOP: R.STOPPED},
    R.REGISTERING: {In.GRANTED: R.REGISTERED, In.FAILED: R.WAITING,
                    In.RESEND: R.REGISTERING, In.STOP: R.UNREGISTERING},
    R.REGISTERED: {In.REFRESH_DUE: R.REGISTERING, In.STOP: R.UNREGISTERING},
    R.WAITING: {In.RETRY_DUE: R.REGISTERING, In.STOP: R.UNREGISTERING},
    R.UNREGISTERING: {In.RESEND: R.UNREGISTERING, In.DONE: R.STOPPED,
                      In.STOP: R.UNREGISTERING},
    R.STOPPED: {In.STOP: R.STOPPED},
}
del R, In


@dataclass(frozen=True)
class Result:
    """What one final answer (or timeout) meant: ``kind`` is a metrics label
    (``registered``, ``unregistered``, ``auth_failed``, ``rejected``, ``timeout``,
    ``expired``, ``interval_too_brief``), ``detail`` a sentence for the log."""

    kind: str
    detail: str
    failure: bool = False


def contact_user_for(account: Account) -> str:
    """The Contact user part of ``account``'s binding: stable across restarts (a binding
    left at the registrar still reaches us) and unique per account."""
    digest = hashlib.sha256(f"{account.registrar}|{account.user}|{account.domain}".encode())
    return f"vb-{digest.hexdigest()[:12]}"


class Registration:
    """One account's registration; see the module docstring."""

    def __init__(self, account: Account, *, password: str, local: tuple[str, int],
                 transport: str, user_agent: str = "voicebridge",
                 ids: IdSource | None = None, rand: Callable[[], float] | None = None) -> None:
        """``local``: our address and port for Via and Contact; ``transport``: ``udp`` or
        ``tcp``; ``rand``: a source of numbers in [0, 1) for the back-off's jitter."""
        uri = parse_uri(account.registrar)
        if not isinstance(uri, SipUri):
            raise RegistrationError(f"registrar {account.registrar!r} is not a SIP URI")
        self.account = account
        self.registrar_uri = SipUri(uri.scheme, uri.host, port=uri.port)
        self.domain = account.domain or uri.host
        self.aor = f"sip:{account.user}@{self.domain}"
        self.contact_user = contact_user_for(account)
        self.local = local
        self.transport = transport
        self.user_agent = user_agent
        self._password = password
        self._ids = ids or RandomIds()
        self._rand = rand or (lambda: 0.5)
        self.state = RegState.IDLE
        self.call_id = f"{self._ids.token()}{self._ids.token()}@voicebridge"
        self.from_tag = self._ids.token()
        self.cseq = 0
        self.expires = account.expires            # what we ask for (423 may raise it)
        self.granted: int | None = None
        self.bound_until: float | None = None     # a binding exists until then
        self.refresh_at: float | None = None
        self.retry_at: float | None = None
        self.failures = 0
        self.last_error = ""
        self._challenge: Challenge | None = None
        self._proxy = False                       # the challenge came in a 407
        self._nc = 0
        self._used_nonce: str | None = None       # in the last request's credentials
        self._fresh = False                       # ... a nonce just received
        self._challenges = 0                      # answered in this attempt
        self._requests: list[Request] = []
        self._results: list[Result] = []

    def __repr__(self) -> str:
        return f"<Registration {self.aor} {self.state.value}>"

    # ------------------------------------------------------------------------ outputs

    def take_requests(self) -> list[Request]:
        out, self._requests = self._requests, []
        return out

    def take_results(self) -> list[Result]:
        out, self._results = self._results, []
        return out

    def get_timer(self) -> float | None:
        times = [t for t in (self.refresh_at, self.retry_at, self.bound_until) if t is not None]
        return min(times) if times else None

    def is_bound(self, now: float) -> bool:
        return self.bound_until is not None and now < self.bound_until

    # ----------------------------------------------------------------------- inputs

    def start(self, now: float) -> None:
        self._move(RegInput.START)
        self._new_attempt(now)

    def stop(self, now: float) -> None:
        """Unregister (``expires=0``) if a binding may exist; else just stop."""
        if self.state in (RegState.UNREGISTERING, RegState.STOPPED):
            return
        self._clear_timers()
        if self.state is RegState.IDLE:
            self._move(RegInput.STOP)
            return
        waiting_unbound = self.state is RegState.WAITING and not self.is_bound(now)
        self._move(RegInput.STOP)
        if waiting_unbound:
            self._move(RegInput.DONE)         # nothing at the registrar to take back
            return
        self._challenges = 0
        self._send(now)

    def handle_timer(self, now: float) -> None:
        if self.bound_until is not None and now >= self.bound_until:
            self.bound_until = None
            self._results.append(Result("expired", "the binding ran out before a refresh "
                                        "was granted", failure=True))
        if self.refresh_at is not None and now >= self.refresh_at:
            self.refresh_at = None
            self._move(RegInput.REFRESH_DUE)
            self._new_attempt(now)
        if self.retry_at is not None and now >= self.retry_at:
            self.retry_at = None
            self._move(RegInput.RETRY_DUE)
            self._new_attempt(now)

    def on_timeout(self, cseq: int, now: float, why: str = "no answer") -> None:
        """The request with ``cseq`` got no final answer (Timer F, or no connection)."""
        if cseq != self.cseq:
            return
        if self.state is RegState.UNREGISTERING:
            self._done(Result("timeout", f"unregister: {why}"))
            return
        if self.state is RegState.REGISTERING:
            self._fail(now, Result("timeout", f"{why} from {self.registrar_uri}",
                                   failure=True))

    def on_response(self, response: Response, now: float) -> None:
        """A response to one of our requests (older CSeqs and provisional ones are ignored)."""
        if (response.status < 200 or response.cseq.seq != self.cseq
                or response.cseq.method != "REGISTER"
                or self.state not in (RegState.REGISTERING, RegState.UNREGISTERING)):
            return
        status = response.status
        if status in (401, 407):
            self._on_challenge(response, now)
        elif self.state is RegState.UNREGISTERING:
            self._done(Result("unregistered" if status < 300 else "rejected",
                              f"unregister answered {status} {response.reason}"))
        elif 200 <= status < 300:
            self._on_granted(response, now)
        elif status == 423:
            self._on_too_brief(response, now)
        else:
            retry_after = _retry_after(response) if status in (500, 503) else None
            self._fail(now, Result("rejected", f"{status} {response.reason} from "
                                   f"{self.registrar_uri}", failure=True), retry_after)

    # ------------------------------------------------------------------- answers

    def _on_granted(self, response: Response, now: float) -> None:
        granted = self._granted_expiry(response)
        if granted <= 0:
            self._fail(now, Result("rejected", f"{response.status} without a binding for "
                                   "our Contact", failure=True))
            return
        self._move(RegInput.GRANTED)
        self.granted = granted
        self.bound_until = now + granted
        self.refresh_at = now + refresh_delay(granted)
        self.failures = 0
        self.last_error = ""
        self._results.append(Result("registered", f"registered for {granted} s"))

    def _granted_expiry(self, response: Response) -> int:
        try:
            contacts = response.contact
        except SipParseError:
            contacts = ()
        for contact in contacts:
            uri = contact.uri
            if isinstance(uri, SipUri) and uri.user == self.contact_user:
                value = contact.param("expires")
                if value is not None and value.isdigit():
                    return int(value)
        header = (response.headers.get("Expires") or "").strip()
        return int(header) if header.isdigit() else self.expires

    def _on_challenge(self, response: Response, now: float) -> None:
        name = "WWW-Authenticate" if response.status == 401 else "Proxy-Authenticate"
        challenge = _pick_challenge(response.headers.get_lines(name))
        if challenge is None:
            self._fail_or_done(now, Result("auth_failed", f"{response.status} with no "
                                           "usable Digest challenge (MD5 or SHA-256, "
                                           "qop=auth or none)", failure=True))
            return
        answered = self._used_nonce is not None
        if answered and not challenge.stale and (
                self._fresh or challenge.nonce == self._used_nonce):
            self._fail_or_done(now, Result(
                "auth_failed", f"{response.status} after credentials: wrong user name or "
                f"password for account {self.account.login} at {self.registrar_uri}",
                failure=True))
            return
        self._challenges += 1
        if self._challenges > MAX_CHALLENGES:
            self._fail_or_done(now, Result("auth_failed", f"{response.status} again and "
                                           "again: giving up this attempt", failure=True))
            return
        if self._challenge is None or challenge.nonce != self._challenge.nonce:
            self._nc = 0
        self._challenge = challenge
        self._proxy = response.status == 407
        self._move(RegInput.RESEND)
        self._send(now, fresh=True)

    def _on_too_brief(self, response: Response, now: float) -> None:
        value = (response.headers.get("Min-Expires") or "").strip()
        wanted = int(value) if value.isdigit() else 0
        if not self.expires < wanted <= MAX_EXPIRES:
            self._fail(now, Result("interval_too_brief", f"423 with Min-Expires {value!r} "
                                   f"(we asked for {self.expires} s)", failure=True))
            return
        self.expires = wanted
        self._results.append(Result("interval_too_brief",
                                    f"423: asking for {wanted} s (Min-Expires)"))
        self._move(RegInput.RESEND)
        self._send(now)

    # ------------------------------------------------------------------- helpers

    def _move(self, event: RegInput) -> None:
        try:
            self.state = TRANSITIONS[self.state][event]
        except KeyError:
            raise RegistrationError(f"registration {self.aor}: {event.value} not allowed "
                                    f"in {self.state.value}") from None

    def _clear_timers(self) -> None:
        self.refresh_at = self.retry_at = None

    def _new_attempt(self, now: float) -> None:
        self._challenges = 0
        self._send(now)

    def _fail_or_done(self, now: float, result: Result) -> None:
        if self.state is RegState.UNREGISTERING:
            self._done(result)
        else:
            self._fail(now, result)

    def _fail(self, now: float, result: Result, at_least: float | None = None) -> None:
        self._move(RegInput.FAILED)
        self.failures += 1
        self.last_error = result.detail
        delay = backoff_delay(self.failures, self._rand())
        if at_least is not None:
            delay = max(delay, min(at_least, BACKOFF_MAX_S))
        self.retry_at = now + delay
        self._results.append(result)

    def _done(self, result: Result) -> None:
        self._move(RegInput.DONE)
        self.bound_until = None
        self._clear_timers()
        self._results.append(result)

    def _send(self, now: float, *, fresh: bool = False) -> None:
        self.cseq += 1
        expires = 0 if self.state is RegState.UNREGISTERING else self.expires
        host, port = self.local
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        # Over TLS: a sips: registrar gets a sips: Contact (RFC 5630 §3.1.2), else the
        # transport says how calls must reach us.
        scheme = "sips" if self.account.registrar.startswith("sips:") else "sip"
        suffix = "" if self.transport == "udp" or scheme == "sips" else (
            f";transport={self.transport}")
        items = [
            ("Via", f"SIP/2.0/{self.transport.upper()} {host}:{port}"
                    f";branch={MAGIC_COOKIE}{self._ids.token()};rport"),
            ("Max-Forwards", "70"),
            ("From", f"<{self.aor}>;tag={self.from_tag}"),
            ("To", f"<{self.aor}>"),
            ("Call-ID", self.call_id),
            ("CSeq", f"{self.cseq} REGISTER"),
            ("Contact", f"<{scheme}:{self.contact_user}@{host}:{port}{suffix}>"
                        f";expires={expires}"),
            ("Expires", str(expires)),
            ("User-Agent", self.user_agent),
        ]
        self._used_nonce = None
        self._fresh = False
        if self._challenge is not None:
            self._nc += 1
            value = authorization(self._challenge, method="REGISTER",
                                  uri=str(self.registrar_uri), username=self.account.login,
                                  password=self._password, cnonce=self._ids.token(),
                                  nc=self._nc)
            items.append(("Proxy-Authorization" if self._proxy else "Authorization", value))
            self._used_nonce = self._challenge.nonce
            self._fresh = fresh
        self._requests.append(Request("REGISTER", self.registrar_uri, Headers(tuple(items))))


def refresh_delay(granted: float) -> float:
    """When to refresh a binding granted for ``granted`` seconds: at half of it, never
    later than :data:`REFRESH_MARGIN_S` before its end (and not sooner than 1 s)."""
    return max(min(granted / 2, granted - REFRESH_MARGIN_S), min(1.0, granted / 2))


def backoff_delay(failures: int, rand: float) -> float:
    """The wait after ``failures`` failures in a row (``rand`` in [0, 1) for the jitter)."""
    base = min(BACKOFF_FIRST_S * 2.0 ** max(failures - 1, 0), BACKOFF_MAX_S)
    return base * (1 - BACKOFF_JITTER * rand)


def _pick_challenge(values: list[str]) -> Challenge | None:
    """The challenge to answer: SHA-256 before MD5 (RFC 8760 §2.4), each usable."""
    usable: list[Challenge] = []
    for value in values:
        try:
            challenge = parse_challenge(value)
        except SipParseError:
            continue
        if challenge.qop and "auth" not in challenge.qop:
            continue
        usable.append(challenge)
    usable.sort(key=lambda c: not c.algorithm.upper().startswith("SHA-256"))
    return usable[0] if usable else None


def _retry_after(response: Response) -> float | None:
    value = (response.headers.get("Retry-After") or "").split(";")[0].split("(")[0].strip()
    return float(value) if value.isdigit() else None


__all__ = ["BACKOFF_FIRST_S", "BACKOFF_MAX_S", "REFRESH_MARGIN_S", "RegInput", "RegState",
           "Registration", "RegistrationError", "Result", "TRANSITIONS", "backoff_delay",
           "contact_user_for", "refresh_delay"]
