"""The per-call side of the SIP user agent: what each method does to a call.

:class:`CallHandlers` sits between :class:`bridge.sip.responder.Responder` (transactions and
responses) and :class:`bridge.sip.ua.UserAgent` (the interface and the request router). The
router calls ``_on_<method>`` once a request passed the checks; these handlers move the
call's state machine and dialog, answer, and queue the events the adapter acts on.

Re-INVITEs inside an established call are answered here, from the SDP we answered with: a
direction change becomes :class:`Hold` / :class:`Resume`, and every completed offer/answer a
:class:`MediaUpdated`. A REFER we sent is followed through its NOTIFYs (RFC 3515, sipfrag
bodies) to one :class:`ReferDone`.
"""

from __future__ import annotations

import logging

from bridge.errors import SdpError
from bridge.sip.authclient import CredentialLookup, resend_headers
from bridge.sip.calls import (
    DTMF_INFO_TYPES,
    Call,
    CallInput,
    CallState,
    UaError,
    parse_dtmf_info,
    parse_sipfrag,
)
from bridge.sip.dialog import Dialog, DialogInput
from bridge.sip.events import (
    ByeReceived,
    CallCancelled,
    CallEnded,
    CallEstablished,
    CallKey,
    Challenged,
    DtmfInfo,
    Hold,
    IncomingCall,
    MediaUpdated,
    OptionsAnswered,
    Peer,
    ReferDone,
    ReferProgress,
    RequestAnswered,
    RequestTimedOut,
    Resume,
)
from bridge.sip.message import Headers, Request, Response, Tag
from bridge.sip.responder import Responder
from bridge.sip.sdp import (
    PLAIN_RTP,
    SRTP,
    NegotiatedMedia,
    SessionDescription,
    accept_answer,
    answer_offer,
    parse_sdp,
    renegotiation_codecs,
)
from bridge.sip.srtp_policy import reanswer
from bridge.sip.transaction import (
    InviteServerTransaction,
    NonInviteClientTransaction,
    TransactionKey,
    response_client_key,
    server_key,
)

log = logging.getLogger("bridge.sip.ua")


class CallHandlers(Responder):
    """Method handlers and the call bookkeeping of the user agent (see the module doc)."""

    #: A call's user name and password for challenged requests (set by the user agent).
    _credentials: CredentialLookup | None = None

    # ---------------------------------------------------------------- method handlers

    def _find_dialog(self, request: Request) -> Call | None:
        key = self._by_dialog.get((request.call_id, request.to.tag or ""))
        call = self._calls.get(key) if key is not None else None
        if call is None or call.state is CallState.ENDED or not call.dialog.matches(request):
            return None
        return call

    def _on_invite(self, request: Request, peer: Peer, now: float) -> None:
        tx = self._new_invite_tx(request, peer, now)
        offer: SessionDescription | None = None
        refusal = self._check_invite_body(request)
        if refusal is None and request.body:
            try:
                offer = parse_sdp(request.body)
                # Refuse an offer we cannot answer before anyone spends resources on it.
                answer_offer(offer, address=self.host, port=9, codecs=self.settings.codecs,
                             protos=PLAIN_RTP + SRTP)   # the SRTP policy is the service's
            except SdpError as exc:
                refusal = (488, f"Not Acceptable Here ({exc})", Headers())
        if refusal is not None:
            status, why, extra = refusal
            self._respond_tx(tx, request, status, reason=why, extra=extra, now=now,
                             to_tag=Tag(self._ids.token()))
            return
        local_tag = Tag(self._ids.token())
        local_host = peer.local_host or self.host
        dialog = Dialog.from_invite(request, local_tag=local_tag,
                                    local_contact=self._contact(peer, local_host, request))
        key = CallKey(local_tag)
        call = Call(key, request, peer, tx, dialog, offer, local_host)
        self._calls[key] = call
        self._by_dialog[(request.call_id, local_tag)] = key
        log.info("call %s: INVITE from %s for %s via %s:%d", request.call_id,
                 request.from_.uri, request.uri, peer.addr[0], peer.addr[1])
        self._events.append(IncomingCall(key, request, peer, offer, local_host))

    def _check_invite_body(self, request: Request) -> tuple[int, str | None, Headers] | None:
        accept = request.headers.get_list("Accept")
        if accept and not any(a.split(";")[0].strip().lower() in (
                "application/sdp", "application/*", "*/*") for a in accept):
            # RFC 4475 sdp01: we can only answer with SDP, which the caller won't accept.
            return 406, None, Headers((("Accept", "application/sdp"),))
        if request.body and request.content_type != "application/sdp":
            # §8.2.3 (RFC 4475 invut): 415 listing what we do understand.
            return 415, None, Headers((("Accept", "application/sdp"),))
        return None

    def _on_reinvite(self, call: Call, request: Request, peer: Peer, now: float) -> None:
        tx = self._new_invite_tx(request, peer, now)
        if call.state is not CallState.ESTABLISHED or call.reinvite is not None:
            # §14.2: an INVITE while another is pending gets 500 with a Retry-After.
            self._respond_tx(tx, request, 500, now=now, to_tag=call.dialog.local_tag,
                             extra=Headers((("Retry-After", "2"),)))
            return
        refusal = self._check_invite_body(request)
        if refusal is not None:
            status, why, extra = refusal
            self._respond_tx(tx, request, status, reason=why, extra=extra, now=now,
                             to_tag=call.dialog.local_tag)
            return
        local = call.local_sdp
        if local is None or not local.media or local.connection is None:
            self._respond_tx(tx, request, 500, now=now, to_tag=call.dialog.local_tag)
            return
        body: SessionDescription
        if request.body:
            try:
                body = self._answer_reoffer(call, request.body)
            except SdpError as exc:
                # §14.2: a refused re-INVITE leaves the session as it was.
                self._respond_tx(tx, request, 488, reason=f"Not Acceptable Here ({exc})",
                                 now=now, to_tag=call.dialog.local_tag)
                return
        else:
            # No offer (a session refresh, or a hold that asks for our offer): our offer
            # goes in the 2xx, unchanged, so it keeps its version (RFC 3264 §8).
            body = local
            call.reinvite_offer = local
        call.reinvite = tx
        call.dialog.refresh_target(request)
        self._respond_tx(tx, request, 200, to_tag=call.dialog.local_tag,
                         contact=self._contact(peer, call.local_host, call.invite),
                         body=body.serialize(), content_type="application/sdp", now=now,
                         extra=self._refresh_headers(call, request, now))

    def _answer_reoffer(self, call: Call, sdp: bytes) -> SessionDescription:
        """Answer an offer inside the call (re-INVITE, UPDATE) from the SDP we answered
        with: same address and port, the session version counted up, the codec in use
        preferred. Raises :class:`SdpError` (and changes nothing) when it cannot."""
        local = call.local_sdp
        assert local is not None and local.media and local.connection is not None
        offer = parse_sdp(sdp)
        codecs = renegotiation_codecs(call.media, self.settings.codecs)
        answer, media = reanswer(
            offer, call.media, address=local.connection.address, port=local.media[0].port,
            codecs=codecs, session_id=local.origin.session_id,
            session_version=call.sdp_version + 1)
        call.sdp_version += 1
        call.local_sdp = answer
        self._apply_media(call, media)
        return answer

    def _refresh_headers(self, call: Call, request: Request, now: float) -> Headers:
        """The extra fields of our 2xx to a re-INVITE (a subclass adds its session timer)."""
        return self._capabilities()

    def _apply_media(self, call: Call, media: NegotiatedMedia) -> None:
        was_held = call.media is not None and call.media.on_hold
        call.media = media
        self._events.append(MediaUpdated(call.key, media))
        if media.on_hold and not was_held:
            log.info("call %s: put on hold", call.invite.call_id)
            self._events.append(Hold(call.key))
        elif was_held and not media.on_hold:
            log.info("call %s: resumed", call.invite.call_id)
            self._events.append(Resume(call.key))

    def _on_ack(self, request: Request, key: TransactionKey, now: float) -> None:
        tx = self._server_tx.get(key)
        if (isinstance(tx, InviteServerTransaction) and tx.last_response.status >= 300):
            tx.receive_ack(now)   # ACK for a non-2xx: part of the INVITE transaction
            return
        call = self._find_dialog(request) if request.to.tag else None
        if call is None:
            return  # §17.2.3: an ACK that matches nothing is dropped
        if call.state is CallState.ANSWERING and request.cseq.seq == call.invite.cseq.seq:
            call.tx.receive_ack(now)
            call.move(CallInput.ACK)
            answer: SessionDescription | None = None
            media: NegotiatedMedia | None = None
            if call.offer is None and call.local_sdp is not None:
                answer, media = self._read_ack_answer(call, request)
                if media is None:
                    self._events.append(CallEstablished(call.key))
                    self._end_with_bye(call, now, "no acceptable answer in the ACK")
                    return
                call.media = media
            log.info("call %s: established", call.invite.call_id)
            self._events.append(CallEstablished(call.key, answer, media))
            if call.bye_pending:
                self._send_bye(call, now)
            return
        reinvite = call.reinvite
        if reinvite is not None and request.cseq.seq == reinvite.request.cseq.seq:
            reinvite.receive_ack(now)
            call.reinvite = None
            if call.reinvite_offer is not None:
                offer, call.reinvite_offer = call.reinvite_offer, None
                if request.body:
                    try:
                        self._apply_media(call, accept_answer(offer, parse_sdp(request.body)))
                    except SdpError as exc:
                        log.info("call %s: unusable answer in ACK: %s", call.invite.call_id,
                                 exc)

    def _read_ack_answer(self, call: Call, request: Request
                         ) -> tuple[SessionDescription | None, NegotiatedMedia | None]:
        assert call.local_sdp is not None
        if not request.body or request.content_type != "application/sdp":
            return None, None
        try:
            answer = parse_sdp(request.body)
            return answer, accept_answer(call.local_sdp, answer)
        except SdpError as exc:
            log.info("call %s: unusable answer in ACK: %s", call.invite.call_id, exc)
            return None, None

    def _on_cancel(self, request: Request, peer: Peer, now: float) -> None:
        """§9.2: find the INVITE by branch; 200 the CANCEL, 487 the INVITE."""
        invite_key = server_key(request)[:-1] + ("INVITE",)
        tx = self._server_tx.get(invite_key)
        if not isinstance(tx, InviteServerTransaction):
            self._respond_new(request, peer, 481, now)
            return
        self._respond_new(request, peer, 200, now)
        if tx.final_sent:
            return
        call = next((c for c in self._calls.values() if c.tx is tx), None)
        to_tag = call.dialog.local_tag if call is not None else Tag(self._ids.token())
        self._respond_tx(tx, tx.request, 487, to_tag=to_tag, now=now)
        if call is not None:
            log.info("call %s: cancelled", call.invite.call_id)
            self._events.append(CallCancelled(call.key))
            self._end(call, "cancelled", event=False)

    def _on_bye(self, call: Call, request: Request, peer: Peer, now: float) -> None:
        self._respond_new(request, peer, 200, now)
        if call.state is CallState.OFFERED:
            # §15.1.2: a BYE on an early dialog ends the INVITE with 487.
            self._respond_tx(call.tx, call.invite, 487, to_tag=call.dialog.local_tag, now=now)
        log.info("call %s: BYE from the far end", call.invite.call_id)
        self._events.append(ByeReceived(call.key))
        self._end(call, "bye received", event=False)

    def _on_options(self, request: Request, peer: Peer, now: float) -> None:
        self._respond_new(request, peer, 200, now, extra=self._capabilities())
        self._events.append(OptionsAnswered(peer))

    def _on_options_in_dialog(self, call: Call, request: Request, peer: Peer,
                              now: float) -> None:
        self._on_options(request, peer, now)

    def _on_info(self, call: Call, request: Request, peer: Peer, now: float) -> None:
        ctype = request.content_type
        if ctype in DTMF_INFO_TYPES:
            digit, duration = parse_dtmf_info(request.body, ctype)
            self._respond_new(request, peer, 200, now)
            if digit is not None:
                self._events.append(DtmfInfo(call.key, digit, duration))
            return
        if request.body:
            self._respond_new(request, peer, 415, now,
                              extra=Headers((("Accept", ", ".join(DTMF_INFO_TYPES)),)))
            return
        self._respond_new(request, peer, 200, now)  # an empty INFO is a keep-alive

    def _on_notify(self, call: Call, request: Request, peer: Peer, now: float) -> None:
        event = (request.headers.get("Event") or "").split(";")[0].strip().lower()
        if event != "refer" or not (call.refer_active or call.refer_tx is not None):
            self._respond_new(request, peer, 481, now)  # RFC 6665: no such subscription
            return
        self._respond_new(request, peer, 200, now)
        state = (request.headers.get("Subscription-State") or "").split(";")[0].strip()
        status, reason = parse_sipfrag(request.body)
        if status is not None and status < 200:
            self._events.append(ReferProgress(call.key, status, reason))
        elif status is not None:
            self._refer_done(call, 200 <= status < 300, status, reason)
        if state.lower() == "terminated" and call.refer_active:
            self._refer_done(call, False, status or 0, reason or "subscription terminated")

    def _on_refer_in(self, call: Call, request: Request, peer: Peer, now: float) -> None:
        # We transfer others; we do not accept being transferred (§RFC 3515 allows 403).
        self._respond_new(request, peer, 403, now, reason="Forbidden (transfer not accepted)")

    # -------------------------------------------------------------------- responses in

    def _on_response(self, response: Response, now: float) -> None:
        entry = self._client_tx.get(response_client_key(response))
        if entry is None:
            return  # §18.1.2: a response matching no transaction is dropped (RFC 4475 bcast)
        ctx, call_key = entry
        if not ctx.receive_response(response, now):
            return
        self._flush_client(ctx, call_key)
        owner = self._owned.get(ctx.key)
        if owner is not None and response.status >= 200:
            self._events.append(RequestAnswered(owner, response))
        call = self._calls.get(call_key)
        if call is None:
            return
        if response.status in (401, 407) and self._answer_challenge(call, ctx, response, now):
            return
        if ctx is call.refer_tx and response.status >= 200:
            call.refer_tx = None
            if 200 <= response.status < 300:
                self._events.append(ReferProgress(call.key, response.status, response.reason))
            else:
                self._refer_done(call, False, response.status, response.reason)
        elif ctx is call.bye_tx and response.status >= 200:
            self._finish_bye(call)

    def _answer_challenge(self, call: Call, ctx: NonInviteClientTransaction,
                          response: Response, now: float) -> bool:
        """A 401/407 to our request: resend it with credentials (True), or not (False:
        the request failed, as any other final response says)."""
        # Only what still matters: the BYE, or a request of a call that goes on.
        wanted = ctx is call.bye_tx or (call.state is not CallState.ENDED and (
            ctx is not call.refer_tx or call.refer_active))
        number = self._resend_number(call, ctx.request, response, wanted=wanted)
        if number is None:
            return False
        extra, content_type = resend_headers(ctx.request)
        resend = self._send_in_dialog(call, ctx.request.method, now, extra=extra,
                                      body=ctx.request.body, content_type=content_type)
        call.auth.resent(resend.request, number)
        if ctx is call.refer_tx:
            call.refer_tx = resend
        elif ctx is call.bye_tx:
            call.bye_tx = resend
        elif ctx is call.ext.refresh_tx:
            call.ext.refresh_tx = resend       # our session refresh (bridge.sip.refresher)
        return True

    def _resend_number(self, call: Call, sent: Request, response: Response, *,
                       wanted: bool) -> int | None:
        """Whether ``sent``, challenged by ``response``, is sent again with credentials:
        the number of that resend (see ``ChallengeMemory.learn``), or None; either way
        counted (a :class:`Challenged` event) and logged."""
        number = (None if not wanted or self._credentials is None
                  or self._credentials(call) is None
                  else call.auth.learn(response, sent))
        self._events.append(Challenged(call.key, sent.method, response.status,
                                       number is not None))
        if number is None:
            log.info("call %s: %s answered %d, not sent again (no credentials, or "
                     "challenged again)", call.invite.call_id, sent.method, response.status)
        else:
            log.info("call %s: %s answered %d; sent again with credentials",
                     call.invite.call_id, sent.method, response.status)
        return number

    def _sign(self, call: Call, request: Request) -> Request:
        lookup = self._credentials
        secret = lookup(call) if lookup is not None and len(call.auth) else None
        if secret is None:
            return request
        return call.auth.sign(request, secret[0], secret[1], self._ids.token)

    def _refer_done(self, call: Call, ok: bool, status: int, reason: str) -> None:
        if not call.refer_active:
            return
        call.refer_active = False
        log.info("call %s: transfer %s (%d %s)", call.invite.call_id,
                 "succeeded" if ok else "failed", status, reason)
        self._events.append(ReferDone(call.key, ok, status, reason))

    # ------------------------------------------------------------------------ timeouts

    def _on_invite_timeout(self, tx: InviteServerTransaction, now: float) -> None:
        call = next((c for c in self._calls.values() if c.tx is tx), None)
        if call is not None and call.state is CallState.ANSWERING:
            # §13.3.1.4: no ACK within 64*T1: "the dialog is confirmed, but the session
            # SHOULD be terminated. This is accomplished with a BYE".
            log.info("call %s: no ACK for our 2xx, hanging up", call.invite.call_id)
            call.move(CallInput.ACK)
            self._end_with_bye(call, now, "no ACK")
        elif call is not None and call.reinvite is tx:
            call.reinvite = None

    def _on_client_timeout(self, ctx: NonInviteClientTransaction, call_key: CallKey) -> None:
        owner = self._owned.get(ctx.key)
        if owner is not None:
            self._events.append(RequestTimedOut(owner, ctx.request.cseq.seq))
        call = self._calls.get(call_key)
        if call is None:
            return
        if ctx is call.refer_tx:
            call.refer_tx = None
            self._refer_done(call, False, 408, "Request Timeout")
        elif ctx is call.bye_tx:
            self._finish_bye(call)

    # ------------------------------------------------------------------------- helpers

    def _call(self, call: CallKey) -> Call:
        try:
            return self._calls[call]
        except KeyError:
            raise UaError(f"no call {call}") from None

    def _end(self, call: Call, reason: str, *, event: bool) -> None:
        if call.state is CallState.ENDED:
            return
        call.move(CallInput.END)
        if not call.dialog.terminated:
            call.dialog.move(DialogInput.TERMINATE)
        if call.refer_active:
            self._refer_done(call, False, 0, "call ended")
        if event:
            self._events.append(CallEnded(call.key, reason))

    def _end_with_bye(self, call: Call, now: float, reason: str) -> None:
        self._send_bye(call, now, reason=reason)

    def _send_bye(self, call: Call, now: float, reason: str = "hung up") -> None:
        if call.bye_tx is not None or call.state is CallState.ENDED:
            return
        call.bye_pending = False
        call.bye_tx = self._send_in_dialog(call, "BYE", now)
        log.info("call %s: BYE sent (%s)", call.invite.call_id, reason)
        self._end(call, reason, event=True)

    def _finish_bye(self, call: Call) -> None:
        call.bye_tx = None


__all__ = ["CallHandlers"]
