"""The user agent's side of session timers (RFC 4028), UPDATE (RFC 3311) and reliable
provisional responses (PRACK, RFC 3262).

:class:`ExtensionHandlers` sits between :class:`bridge.sip.refresher.RefreshSender` (our
own refreshes, on :class:`bridge.sip.handlers.CallHandlers`) and
:class:`bridge.sip.ua.UserAgent`. The decisions are in :mod:`bridge.sip.session_timer`
(sans-I/O, fuzzed); this module applies them to calls:

* an INVITE's ``Session-Expires``/``Min-SE`` are read before the call is offered
  (malformed: 400, too short: 422 with our ``Min-SE``), and the timer starts when our 2xx
  goes out carrying ``Session-Expires`` (and ``Require: timer`` when the caller supports it);
* a re-INVITE or an UPDATE answered 2xx is a refresh: the timer starts again from it;
* when we are the refresher we refresh at half the interval (UPDATE, or re-INVITE when
  the caller allows no UPDATE: :mod:`bridge.sip.refresher`); when the caller is,
  and no refresh comes, the call is ended with a BYE before the session would expire
  (reason :data:`bridge.call.leg.SESSION_EXPIRED`);
* an INVITE with ``Require: 100rel`` gets its provisional reliably (RSeq, retransmitted
  until the PRACK), its 2xx waits for the PRACK, and no PRACK within 64·T1 is a 500.

Counts: ``voicebridge_sip_session_timer_total{event}`` and the refused INVITEs in
``voicebridge_calls_rejected_total``.
"""

from __future__ import annotations

import logging

from bridge import metrics
from bridge.call.leg import SESSION_EXPIRED
from bridge.errors import SdpError, SipParseError
from bridge.logthrottle import Throttle
from bridge.sip.calls import Call, CallState
from bridge.sip.events import IncomingCall, Peer
from bridge.sip.message import Headers, Request
from bridge.sip.refresher import RefreshSender
from bridge.sip.sdp import SessionDescription
from bridge.sip.session_timer import (
    EXPIRE,
    REFRESH,
    TOO_SMALL_PHRASE,
    Decision,
    ReliableProvisional,
    SessionTimer,
    TooSmall,
    negotiate,
    parse_rack,
    read_request,
    requires_100rel,
)

log = logging.getLogger("bridge.sip.ua")
_throttled = Throttle(log)


def _join(*headers: Headers) -> Headers:
    return Headers(tuple(item for h in headers for item in h.items))


class ExtensionHandlers(RefreshSender):
    """Session timers, UPDATE and PRACK for the user agent (see the module doc)."""

    # ------------------------------------------------------------------ negotiation

    def _negotiate(self, request: Request, peer: Peer, now: float) -> Decision | None:
        """Read the request's timer fields: the decision, or None when it was refused
        (400 malformed, 422 too short) and answered here."""
        try:
            asked = read_request(request)
        except SipParseError as exc:
            self._refuse(request, peer, now, 400, reason=f"Bad Request ({exc.reason})",
                         extra=Headers(), why="sip_bad_session_timer")
            return None
        decision = negotiate(asked, session_expires=self.settings.session_expires_s,
                             min_se=self.settings.min_se_s)
        if isinstance(decision, TooSmall):
            self._refuse(request, peer, now, 422, reason=TOO_SMALL_PHRASE,
                         extra=decision.headers(), why="sip_session_interval_too_small")
            return None
        return decision

    def _refuse(self, request: Request, peer: Peer, now: float, status: int, *,
                reason: str, extra: Headers, why: str) -> None:
        if request.method == "INVITE" and request.to.tag is None:
            metrics.CALLS_REJECTED.labels(reason=why).inc()
        _throttled.log(logging.INFO, why, "%s from %s refused: %d %s", request.method,
                       peer.addr[0], status, reason, now=now)
        self._respond_new(request, peer, status, now, reason=reason, extra=extra)

    def _on_invite(self, request: Request, peer: Peer, now: float) -> None:
        decision = self._negotiate(request, peer, now)
        if decision is None:
            return
        super()._on_invite(request, peer, now)
        offered = self._events[-1] if self._events else None
        if not isinstance(offered, IncomingCall) or offered.invite is not request:
            return                                  # refused (406, 415, 488)
        call = self._calls[offered.call]
        call.ext.decision = decision
        if requires_100rel(request):
            call.ext.rel = ReliableProvisional(self.settings.timers.t1)

    def _on_reinvite(self, call: Call, request: Request, peer: Peer, now: float) -> None:
        if self._our_offer_pending(call):
            self._respond_new(request, peer, 491, now)      # §14.2: ours is pending
            return
        if self._negotiate(request, peer, now) is not None:
            super()._on_reinvite(call, request, peer, now)

    def _our_offer_pending(self, call: Call) -> bool:
        """Our re-INVITE (its offer) waits for its final response."""
        tx = call.ext.reinvite_tx
        return tx is not None and tx.final is None and not tx.terminated

    def _refresh_headers(self, call: Call, request: Request, now: float) -> Headers:
        """A re-INVITE or UPDATE answered 2xx is a refresh (its fields were checked)."""
        decision = negotiate(read_request(request),
                             session_expires=self.settings.session_expires_s,
                             min_se=self.settings.min_se_s)
        assert not isinstance(decision, TooSmall)
        if call.ext.timer is not None:
            metrics.SIP_SESSION_TIMER.labels(event="refreshed").inc()
        return _join(self._capabilities(), self._start_timer(call, decision, now))

    def _start_timer(self, call: Call, decision: Decision | None, now: float) -> Headers:
        ext = call.ext
        if decision is None:
            ext.timer = None
            return Headers()
        if ext.timer is None:
            ext.timer = SessionTimer(decision, now)
        else:
            ext.timer.restart(decision, now)
        return decision.headers()

    # ------------------------------------------------- provisional and final answers

    def _send_provisional(self, call: Call, status: int, now: float) -> None:
        """A 1xx to the INVITE: reliable (RFC 3262) when the caller required it."""
        rel = call.ext.rel
        extra = Headers()
        if rel is not None:
            if rel.waiting:
                return      # §3: no second reliable provisional before the first's PRACK
            extra = rel.headers()
        self._respond_tx(call.tx, call.invite, status, to_tag=call.dialog.local_tag,
                         contact=call.dialog.local_contact, now=now, extra=extra)
        if rel is not None:
            rel.sent(call.tx.last_response, now)

    def _send_answer(self, call: Call, now: float) -> None:
        """Our 2xx to the INVITE, once no reliable provisional waits for its PRACK."""
        rel = call.ext.rel
        if rel is not None and rel.waiting:
            call.ext.answer_held = True
            return
        call.ext.answer_held = False
        sdp = call.local_sdp
        assert sdp is not None
        extra = _join(self._capabilities(), self._start_timer(call, call.ext.decision, now))
        self._respond_tx(call.tx, call.invite, 200, to_tag=call.dialog.local_tag,
                         contact=call.dialog.local_contact, body=sdp.serialize(),
                         content_type="application/sdp", now=now, extra=extra)

    def _drop_held_answer(self, call: Call, now: float) -> None:
        """Hanging up while our 2xx waits for the PRACK: it never goes; a 480 instead."""
        call.ext.answer_held = False
        call.ext.rel = None
        self._respond_tx(call.tx, call.invite, 480, to_tag=call.dialog.local_tag, now=now)
        self._end(call, "rejected 480", event=False)

    def _on_prack(self, call: Call, request: Request, peer: Peer, now: float) -> None:
        rel = call.ext.rel
        try:
            rack = parse_rack(request.headers.get("RAck") or "")
        except SipParseError as exc:
            self._respond_new(request, peer, 400, now, reason=f"Bad Request ({exc.reason})")
            return
        if rel is None or not rel.acknowledge(rack, call.invite.cseq.seq):
            self._respond_new(request, peer, 481, now)      # §3: matches nothing of ours
            return
        self._respond_new(request, peer, 200, now)
        if call.ext.answer_held and call.state is CallState.ANSWERING:
            self._send_answer(call, now)

    # ------------------------------------------------------------------------ UPDATE

    def _on_update(self, call: Call, request: Request, peer: Peer, now: float) -> None:
        """RFC 3311: a refresh, and an offer/answer when it carries SDP."""
        if request.body and request.content_type != "application/sdp":
            self._respond_new(request, peer, 415, now,
                              extra=Headers((("Accept", "application/sdp"),)))
            return
        if request.body and (call.reinvite_offer is not None or self._our_offer_pending(call)
                             or (call.state is CallState.ANSWERING and call.offer is None)):
            # RFC 3311 §5.2: an offer while ours waits for its answer: glare.
            self._respond_new(request, peer, 491, now)
            return
        if request.body and (call.state is not CallState.ESTABLISHED
                             or call.local_sdp is None):
            self._respond_new(request, peer, 500, now,
                              extra=Headers((("Retry-After", "2"),)))
            return
        if self._negotiate(request, peer, now) is None:
            return
        answer: SessionDescription | None = None
        if request.body:
            try:
                answer = self._answer_reoffer(call, request.body)
            except SdpError as exc:
                self._respond_new(request, peer, 488, now,
                                  reason=f"Not Acceptable Here ({exc})")
                return
        call.dialog.refresh_target(request)          # UPDATE is a target refresh
        extra = (self._refresh_headers(call, request, now)
                 if call.state is CallState.ESTABLISHED else self._capabilities())
        self._respond_new(request, peer, 200, now, extra=extra,
                          contact=self._contact(peer, call.local_host),
                          body=answer.serialize() if answer is not None else b"",
                          content_type="application/sdp" if answer is not None else None)

    # ---------------------------------------------------------------------- timers

    def get_timer(self) -> float | None:
        deadlines = [t for t in (super().get_timer(), self._reinvite_deadline())
                     if t is not None]
        for call in self._calls.values():
            ext = call.ext
            if ext.rel is not None and call.state is not CallState.ENDED:
                rel_at = ext.rel.deadline()
                if rel_at is not None:
                    deadlines.append(rel_at)
            if ext.timer is not None and call.state is CallState.ESTABLISHED:
                deadlines.append(ext.timer.deadline())
        return min(deadlines) if deadlines else None

    def _tick_extensions(self, now: float) -> None:
        self._tick_reinvites(now)
        for call in list(self._calls.values()):
            if call.state is CallState.ENDED:
                continue
            rel = call.ext.rel
            if rel is not None and rel.waiting:
                if now >= rel.give_up_at():
                    self._no_prack(call, now)
                    continue
                if rel.retransmit_due(now) and rel.response is not None:
                    call.tx.send(rel.response, now)
                    self._flush_server(call.tx.key, call.tx)
            if self._refresh_timed_out(call, now):
                continue
            timer = call.ext.timer
            if timer is None or call.state is not CallState.ESTABLISHED:
                continue
            due = timer.due(now)
            if due == EXPIRE:
                log.info("call %s: no session refresh in %d s, hanging up",
                         call.invite.call_id, timer.interval)
                metrics.SIP_SESSION_TIMER.labels(event="expired").inc()
                call.ext.timer = None
                self._end_with_bye(call, now, SESSION_EXPIRED)
            elif due == REFRESH:
                self._send_refresh(call, timer, now)

    def _no_prack(self, call: Call, now: float) -> None:
        """RFC 3262 §3: no PRACK within 64·T1: the INVITE is refused with a 5xx."""
        call.ext.rel = None
        metrics.CALLS_REJECTED.labels(reason="sip_no_prack").inc()
        log.info("call %s: no PRACK for our reliable provisional", call.invite.call_id)
        self._respond_tx(call.tx, call.invite, 500, reason="Server Internal Error (no PRACK)",
                         to_tag=call.dialog.local_tag, now=now)
        self._end(call, "no PRACK", event=True)


__all__ = ["ExtensionHandlers"]
