"""Session timers (RFC 4028) and reliable provisional responses (RFC 3262), sans-I/O.

Theory of operation
-------------------
**Session timers.** A caller (or a proxy on its path) may ask for a session timer with
``Session-Expires: <seconds>[;refresher=uac|uas]`` and say the smallest interval it
accepts with ``Min-SE``. :func:`read_request` parses both (malformed: :class:`SipParseError`,
answered 400); :func:`negotiate` decides, as the UAS of RFC 4028 §9:

* an interval below our ``min_se_s`` is refused with ``422 Session Interval Too Small``
  carrying our ``Min-SE`` (:class:`TooSmall`);
* the interval is the caller's, lowered to our ``session_expires_s`` but never below the
  caller's ``Min-SE``; without a ``Session-Expires`` we add ours;
* the refresher is the caller's choice when it supports ``timer`` and named one; the caller
  (``uac``) when it supports ``timer`` and left the choice to us; and us (``uas``) when it
  does not support ``timer`` at all (only we can refresh then). We refresh with an
  ``UPDATE`` when the caller allows it, else with a re-INVITE carrying our SDP as it is.

:class:`SessionTimer` is the running timer of one call: the refresher refreshes at half
the interval (:data:`REFRESH`), and whoever is not gets the session ended before it
expires, at interval minus min(32 s, interval/3) (RFC 4028 §10, :data:`EXPIRE`). Every
successful refresh (a re-INVITE or UPDATE in either direction) restarts it.

**Reliable provisionals.** With ``Require: 100rel`` (RFC 3262 §3) our provisional response
carries ``Require: 100rel`` and an ``RSeq``; :class:`ReliableProvisional` retransmits it at
T1, doubling, until a ``PRACK`` with a matching ``RAck`` comes, and gives up after 64·T1
(the INVITE then gets a 5xx). The 2xx waits for the PRACK.

Nothing here reads a clock or touches a socket: ``now`` is passed in, deadlines are handed
out.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from bridge.errors import SipParseError
from bridge.sip.invite_client import InviteClientTransaction
from bridge.sip.message import Headers, Request, Response
from bridge.sip.transaction import NonInviteClientTransaction
from bridge.sip.uri import param_value, parse_params

#: The option tags (RFC 3261 §19.2) of the extensions in this module.
TIMER = "timer"
REL100 = "100rel"
#: Reason phrase of 422 (RFC 4028 §6).
TOO_SMALL_PHRASE = "Session Interval Too Small"
#: The largest delta-seconds we read (RFC 3261 §25: at most 2**32-1).
MAX_DELTA = 2 ** 32 - 1
#: What :meth:`SessionTimer.due` says.
REFRESH = "refresh"
EXPIRE = "expire"


@dataclass(frozen=True)
class SessionExpires:
    """A ``Session-Expires`` value: the interval, and who refreshes (None: not said)."""

    interval: int
    refresher: str | None = None

    def __str__(self) -> str:
        return str(self.interval) + (f";refresher={self.refresher}" if self.refresher else "")


def _delta_seconds(text: str, what: str) -> tuple[int, str]:
    """``1*DIGIT`` then the rest (parameters): RFC 4028 §4 ``delta-seconds``."""
    value, semi, rest = text.strip().partition(";")
    value = value.strip()
    if not value.isascii() or not value.isdigit() or len(value) > 10 \
            or int(value) > MAX_DELTA:
        raise SipParseError(f"bad {what}")
    return int(value), semi + rest


def parse_session_expires(text: str) -> SessionExpires:
    """``delta-seconds *(SEMI se-params)`` (RFC 4028 §4). Raises :class:`SipParseError`
    (status 400) and nothing else."""
    interval, rest = _delta_seconds(text, "Session-Expires")
    params = parse_params(rest, "Session-Expires")
    refresher = param_value(params, "refresher")
    if refresher is not None:
        refresher = refresher.lower()
        if refresher not in ("uac", "uas"):
            raise SipParseError("bad Session-Expires refresher")
    return SessionExpires(interval, refresher)


def parse_min_se(text: str) -> int:
    """``delta-seconds *(SEMI generic-param)`` (RFC 4028 §5). Raises
    :class:`SipParseError` (status 400) and nothing else."""
    value, rest = _delta_seconds(text, "Min-SE")
    parse_params(rest, "Min-SE")
    return value


def _single(request: Request, name: str) -> str | None:
    lines = request.headers.get_lines(name)
    if len(lines) > 1:
        raise SipParseError(f"more than one {name}")
    return lines[0] if lines else None


@dataclass(frozen=True)
class TimerRequest:
    """What a request says about session timers."""

    expires: SessionExpires | None
    min_se: int | None
    #: The caller understands ``timer`` (Supported or Require).
    supported: bool
    #: The caller allows UPDATE (its Allow, or it sent one), so we can refresh with one.
    allows_update: bool


def read_request(request: Request) -> TimerRequest:
    """Read the timer fields of an INVITE or UPDATE; malformed: :class:`SipParseError`."""
    se_text, min_text = _single(request, "Session-Expires"), _single(request, "Min-SE")
    tags = request.option_tags("Supported") + request.option_tags("Require")
    allow = {m.strip().upper() for m in request.headers.get_list("Allow")}
    return TimerRequest(
        parse_session_expires(se_text) if se_text is not None else None,
        parse_min_se(min_text) if min_text is not None else None,
        TIMER in tags, "UPDATE" in allow or request.method == "UPDATE")


@dataclass(frozen=True)
class TooSmall:
    """Refuse with 422 and ``Min-SE: min_se`` (RFC 4028 §9)."""

    min_se: int

    def headers(self) -> Headers:
        return Headers((("Min-SE", str(self.min_se)),))


@dataclass(frozen=True)
class Decision:
    """The session timer a 2xx sets up: what its ``Session-Expires`` says."""

    expires: SessionExpires
    #: The caller understands ``timer``: the 2xx carries ``Require: timer`` (§9).
    require: bool
    #: How we refresh when we are the refresher: UPDATE when the caller allows it, else
    #: a re-INVITE with our SDP as it is (RFC 4028 §7.4).
    method: str = "UPDATE"

    @property
    def we_refresh(self) -> bool:
        return self.expires.refresher == "uas"

    def headers(self) -> Headers:
        items: tuple[tuple[str, str], ...] = (("Session-Expires", str(self.expires)),)
        if self.require:
            items += (("Require", TIMER),)
        return Headers(items)


def negotiate(asked: TimerRequest, *, session_expires: int, min_se: int
              ) -> Decision | TooSmall:
    """RFC 4028 §9 as the UAS (see the module doc)."""
    if asked.expires is not None and asked.expires.interval < min_se:
        return TooSmall(min_se)
    floor = max(min_se, asked.min_se or 0)
    interval = max(session_expires, floor)
    if asked.expires is not None:
        interval = min(asked.expires.interval, interval)
    if asked.supported:
        refresher = (asked.expires.refresher if asked.expires is not None
                     and asked.expires.refresher else "uac")
    else:
        refresher = "uas"
    return Decision(SessionExpires(interval, refresher), asked.supported,
                    "UPDATE" if asked.allows_update else "INVITE")


def expiry_margin(interval: float) -> float:
    """RFC 4028 §10: the BYE goes this long before the session would expire."""
    return min(32.0, interval / 3)


class SessionTimer:
    """The running session timer of one call (see the module doc)."""

    def __init__(self, decision: Decision, now: float) -> None:
        self.decision = decision
        self.started = now
        #: Our refresh is out and not answered yet.
        self.refreshing = False
        self.refreshes = 0

    @property
    def interval(self) -> int:
        return self.decision.expires.interval

    def restart(self, decision: Decision, now: float) -> None:
        """A successful refresh (either side's): count the interval from ``now``."""
        self.decision = decision
        self.started = now
        self.refreshing = False
        self.refreshes += 1

    def refresh_at(self) -> float | None:
        if not self.decision.we_refresh or self.refreshing:
            return None
        return self.started + self.interval / 2

    def expire_at(self) -> float:
        return self.started + self.interval - expiry_margin(self.interval)

    def deadline(self) -> float:
        refresh = self.refresh_at()
        return min(refresh, self.expire_at()) if refresh is not None else self.expire_at()

    def due(self, now: float) -> str | None:
        if now >= self.expire_at():
            return EXPIRE
        refresh = self.refresh_at()
        if refresh is not None and now >= refresh:
            return REFRESH
        return None


@dataclass
class CallExtensions:
    """What one call keeps of these extensions (a field of :class:`bridge.sip.calls.Call`)."""

    #: Negotiated from the INVITE, started when our 2xx goes out.
    decision: Decision | None = None
    timer: SessionTimer | None = None
    #: Our refresh in flight: an UPDATE, or a re-INVITE.
    refresh_tx: NonInviteClientTransaction | None = None
    reinvite_tx: InviteClientTransaction | None = None
    #: The reliable provisional waiting for its PRACK (None: the caller did not require one).
    rel: ReliableProvisional | None = None
    #: Our 2xx is ready but waits for the PRACK of a reliable provisional.
    answer_held: bool = False


# ----------------------------------------------------------------------------- 100rel

def requires_100rel(request: Request) -> bool:
    return REL100 in request.option_tags("Require")


def parse_rack(text: str) -> tuple[int, int, str]:
    """``RAck: response-num CSeq-num Method`` (RFC 3262 §7.2); :class:`SipParseError`."""
    parts = text.split()
    if (len(parts) != 3 or not all(p.isascii() and p.isdigit() and len(p) <= 10
                                   for p in parts[:2])):
        raise SipParseError("bad RAck")
    return int(parts[0]), int(parts[1]), parts[2].upper()


class ReliableProvisional:
    """One reliable provisional response waiting for its PRACK (RFC 3262 §3)."""

    def __init__(self, t1: float, *, first_rseq: int | None = None) -> None:
        self.t1 = t1
        # §3: the first RSeq is chosen at random between 1 and 2**31 - 1.
        self.rseq = first_rseq if first_rseq is not None else random.randint(1, 2 ** 31 - 1)
        self.response: Response | None = None
        self._used = False
        self.sent_at = 0.0
        self._next = 0.0
        self._interval = t1

    def headers(self) -> Headers:
        """The fields that make the next provisional reliable (its RSeq counts up)."""
        if self._used:
            self.rseq += 1          # §3: each further reliable provisional counts up by one
        self._used = True
        return Headers((("Require", REL100), ("RSeq", str(self.rseq))))

    def sent(self, response: Response, now: float) -> None:
        self.response = response
        self.sent_at = now
        self._interval = self.t1
        self._next = now + self.t1

    @property
    def waiting(self) -> bool:
        return self.response is not None

    def deadline(self) -> float | None:
        if self.response is None:
            return None
        return min(self._next, self.give_up_at())

    def give_up_at(self) -> float:
        return self.sent_at + 64 * self.t1

    def retransmit_due(self, now: float) -> bool:
        """True when the response must go again (the interval then doubles)."""
        if self.response is None or now < self._next:
            return False
        self._interval *= 2
        self._next = now + self._interval
        return True

    def acknowledge(self, rack: tuple[int, int, str], invite_cseq: int) -> bool:
        """A PRACK's RAck: True (and no longer waiting) when it is for our response."""
        rseq, cseq, method = rack
        if self.response is None or (rseq, cseq, method) != (self.rseq, invite_cseq, "INVITE"):
            return False
        self.response = None
        return True


__all__ = ["CallExtensions", "Decision", "EXPIRE", "REFRESH", "REL100", "ReliableProvisional",
           "SessionExpires", "SessionTimer", "TIMER", "TOO_SMALL_PHRASE", "TimerRequest",
           "TooSmall", "expiry_margin", "negotiate", "parse_min_se", "parse_rack",
           "parse_session_expires", "read_request", "requires_100rel"]
