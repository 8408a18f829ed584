"""Our own session refreshes (RFC 4028 §7.4), when we are the call's refresher.

:class:`RefreshSender` sits between :class:`bridge.sip.handlers.CallHandlers` and
:class:`bridge.sip.extensions.ExtensionHandlers` (which decides when a refresh is due).
A refresh is an UPDATE without a body when the caller allows UPDATE, else a re-INVITE
carrying the SDP we last sent as it is (same session version: nothing changed), in an
INVITE client transaction of :mod:`bridge.sip.invite_client`, its 2xx ACKed here.

What the answer does: a 2xx restarts the timer (with the interval it names, if any); a
422 is retried at once with the interval of its ``Min-SE``; 408, 481 or no answer at all
ends the call with a BYE; a 401/407 is answered with the call's credentials
(:mod:`bridge.sip.authclient`: the UPDATE sent again like a REFER or BYE; the re-INVITE,
its challenge ACKed by the transaction, followed by a new one with the next CSeq), once
per challenge, and the answer to that one counts; anything else leaves the session to
expire unless the caller refreshes it meanwhile.
"""

from __future__ import annotations

import dataclasses
import logging

from bridge import metrics
from bridge.call.leg import SESSION_EXPIRED
from bridge.errors import SdpError, SipParseError
from bridge.sip.authclient import resend_headers
from bridge.sip.calls import Call, CallState
from bridge.sip.events import CallKey, IdSource, Peer
from bridge.sip.handlers import CallHandlers
from bridge.sip.invite_client import InviteClientTransaction, ack_for_2xx
from bridge.sip.message import MAGIC_COOKIE, Headers, Response
from bridge.sip.sdp import accept_answer, parse_sdp
from bridge.sip.session_timer import (
    Decision,
    SessionExpires,
    SessionTimer,
    parse_min_se,
    parse_session_expires,
)
from bridge.sip.settings import SipSettings
from bridge.sip.transaction import TransactionKey, response_client_key

log = logging.getLogger("bridge.sip.ua")


class RefreshSender(CallHandlers):
    """Sends our refreshes and reads their answers (see the module doc)."""

    def __init__(self, settings: SipSettings, *, host: str, port: int,
                 ids: IdSource | None = None) -> None:
        super().__init__(settings, host=host, port=port, ids=ids)
        #: Our re-INVITEs, until they terminate: each with its call and where it went.
        self._reinvites: dict[TransactionKey, tuple[InviteClientTransaction, CallKey, Peer]] = {}

    def _send_refresh(self, call: Call, timer: SessionTimer, now: float) -> None:
        timer.refreshing = True
        extra = Headers((
            # In our request we are the UAC, and stay the refresher.
            ("Session-Expires", str(SessionExpires(timer.interval, "uac"))),
            ("Min-SE", str(self.settings.min_se_s)),
            ("Supported", "timer")))
        if timer.decision.method == "UPDATE" or call.local_sdp is None:
            call.ext.refresh_tx = self._send_in_dialog(call, "UPDATE", now, extra=extra)
        else:
            self._send_reinvite(call, extra, now)
        metrics.SIP_SESSION_TIMER.labels(event="refresh_sent").inc()

    def _send_reinvite(self, call: Call, extra: Headers, now: float,
                       body: bytes | None = None) -> InviteClientTransaction:
        assert call.local_sdp is not None
        peer = self._request_peer(call)
        # Signed when a challenge of the call is remembered (RFC 3261 §22.3).
        request = self._sign(call, call.dialog.new_request(
            "INVITE", via=self._dialog_via(call, peer), extra=extra,
            body=call.local_sdp.serialize() if body is None else body,
            content_type="application/sdp", user_agent=self.settings.user_agent))
        tx = InviteClientTransaction(request, reliable=peer.reliable,
                                     timers=self.settings.timers, now=now)
        self._reinvites[tx.key] = (tx, call.key, peer)
        call.ext.reinvite_tx = tx
        self._flush_reinvite(tx, peer)
        return tx

    def _dialog_via(self, call: Call, peer: Peer) -> str:
        return (f"SIP/2.0/{peer.transport.upper()} {self._sent_by(call.local_host)}"
                f";branch={MAGIC_COOKIE}{self._ids.token()};rport")

    def _flush_reinvite(self, tx: InviteClientTransaction, peer: Peer) -> None:
        for message in tx.take_messages():
            self._send(message.serialize(), peer)

    # --------------------------------------------------------------------- answers

    def _on_response(self, response: Response, now: float) -> None:
        key = response_client_key(response)
        if key in self._reinvites:
            self._on_reinvite_response(response, now)
            return
        entry = self._client_tx.get(key)
        super()._on_response(response, now)
        if entry is None:
            return
        ctx, call_key = entry
        call = self._calls.get(call_key)
        if call is None or ctx is not call.ext.refresh_tx or ctx.final_response is None:
            return
        call.ext.refresh_tx = None
        self._refresh_answered(call, ctx.final_response, now)

    def _on_reinvite_response(self, response: Response, now: float) -> None:
        tx, call_key, peer = self._reinvites[response_client_key(response)]
        first = tx.receive_response(response, now)
        call = self._calls.get(call_key)
        if 200 <= response.status < 300 and call is not None:
            # §13.2.2.4: every 2xx (retransmissions too) is ACKed, by the core.
            if tx.ack is None:
                tx.ack = ack_for_2xx(tx.request, response, self._dialog_via(call, peer))
            self._send(tx.ack.serialize(), peer)
        self._flush_reinvite(tx, peer)
        if not first or call is None:
            return
        if response.status in (401, 407) and self._reinvite_challenged(call, tx, response, now):
            return
        call.ext.reinvite_tx = None
        if 200 <= response.status < 300 and response.body and call.local_sdp is not None:
            try:
                self._apply_media(call, accept_answer(call.local_sdp, parse_sdp(response.body)))
            except SdpError as exc:
                log.info("call %s: unusable answer to our re-INVITE: %s",
                         call.invite.call_id, exc)
        self._refresh_answered(call, response, now)

    def _reinvite_challenged(self, call: Call, tx: InviteClientTransaction,
                             response: Response, now: float) -> bool:
        """A 401/407 to our re-INVITE, already ACKed by its transaction (§17.1.1.3): a
        new re-INVITE, next CSeq, same headers and SDP, with credentials (True), or the
        refresh failed (False)."""
        wanted = call.state is CallState.ESTABLISHED and tx is call.ext.reinvite_tx
        number = self._resend_number(call, tx.request, response, wanted=wanted)
        if number is None:
            return False
        extra, _ = resend_headers(tx.request)
        again = self._send_reinvite(call, extra, now, body=tx.request.body)
        call.auth.resent(again.request, number)
        return True

    def _refresh_answered(self, call: Call, final: Response, now: float) -> None:
        timer = call.ext.timer
        if timer is None or call.state is not CallState.ESTABLISHED:
            return
        if 200 <= final.status < 300:
            timer.restart(self._refreshed(timer, final), now)
        elif final.status == 422:
            self._retry_longer(call, timer, final, now)
        elif final.status in (408, 481):
            # RFC 4028 §10 with RFC 3261 §12.2.1.2: the dialog is gone.
            self._refresh_failed(call, now, f"refresh answered {final.status}")
        # Otherwise (491, 500 ...) the session is not refreshed and expires unless the
        # far end refreshes it meanwhile.

    def _refreshed(self, timer: SessionTimer, response: Response) -> Decision:
        """The timer a 2xx to our refresh sets: its Session-Expires, else ours as sent."""
        try:
            text = response.headers.get("Session-Expires")
            answered = parse_session_expires(text) if text is not None else None
        except SipParseError:
            answered = None
        if answered is None:
            return timer.decision
        # The answer names the refresher as the UAC (us) or the UAS (the far end) of our
        # request; a Decision names it as of the INVITE, where we are the UAS.
        refresher = "uac" if answered.refresher == "uas" else "uas"
        return dataclasses.replace(
            timer.decision, expires=SessionExpires(answered.interval, refresher))

    def _retry_longer(self, call: Call, timer: SessionTimer, response: Response,
                      now: float) -> None:
        """RFC 4028 §7.4: a 422 names the far end's Min-SE: refresh again with it."""
        try:
            floor = parse_min_se(response.headers.get("Min-SE") or "")
        except SipParseError:
            return
        if floor <= timer.interval:
            return
        timer.decision = dataclasses.replace(timer.decision,
                                             expires=SessionExpires(floor, "uas"))
        self._send_refresh(call, timer, now)

    def _refresh_failed(self, call: Call, now: float, why: str) -> None:
        metrics.SIP_SESSION_TIMER.labels(event="refresh_failed").inc()
        log.info("call %s: session refresh failed (%s), hanging up", call.invite.call_id, why)
        call.ext.timer = None
        self._end_with_bye(call, now, SESSION_EXPIRED)

    # ---------------------------------------------------------------------- timers

    def _reinvite_deadline(self) -> float | None:
        deadlines = [t for tx, _, _ in self._reinvites.values()
                     if (t := tx.get_timer()) is not None]
        return min(deadlines) if deadlines else None

    def _tick_reinvites(self, now: float) -> None:
        for key, (tx, _call_key, peer) in list(self._reinvites.items()):
            tx.handle_timer(now)
            self._flush_reinvite(tx, peer)
            if tx.terminated:
                del self._reinvites[key]

    def _refresh_timed_out(self, call: Call, now: float) -> bool:
        """Our refresh got no answer at all (Timer F or B): the call is ended."""
        ext = call.ext
        update, reinvite = ext.refresh_tx, ext.reinvite_tx
        if update is not None and update.terminated and update.final_response is None:
            ext.refresh_tx = None
        elif reinvite is not None and reinvite.timed_out:
            ext.reinvite_tx = None
        else:
            return False
        self._refresh_failed(call, now, "refresh timed out")
        return True


__all__ = ["RefreshSender"]
