"""Answering one INVITE: its RTP port, our SDP, ringing while its upstream opens, the 200.

A part of :class:`bridge.sip.service.SipService` (which inherits it), kept apart because it
is the call-policy side of the adapter: which SRTP and codec rules a call gets (its
account, trunk or the ``[sip]`` defaults), which dialplan it is routed to (its account or
trunk), how long it rings before the 200 so the greeting starts as the call is answered
(``[sip] ring_ms``, ``answer_wait_ms``), and the 488/503 answers when the offer cannot be
taken or no RTP port is free. The sockets, the timer and the events stay in the service.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from bridge import metrics
from bridge.call.leg import LegInfo, Source
from bridge.errors import BridgeError, SdpError
from bridge.rtp.endpoint import PortAllocator, RtpEndpoint
from bridge.sip import srtp_policy
from bridge.sip.admission import RETRY_AFTER_S
from bridge.sip.leg import SipLeg
from bridge.sip.sdp import G711_LAWS, NegotiatedMedia, SessionDescription, make_offer
from bridge.sip.settings import SipSettings
from bridge.sip.trunkcalls import trunk_extra
from bridge.sip.ua import CallEstablished, IncomingCall, UserAgent

if TYPE_CHECKING:
    from bridge.sip.registrations import Registrations

log = logging.getLogger("bridge.sip.service")


@dataclass
class _Pending:
    """A call between IncomingCall and the ACK."""

    event: IncomingCall
    established: asyncio.Future[CallEstablished]
    leg: SipLeg | None = None


class EarlyUpstreams(Protocol):
    """Who opens a call's upstream while its INVITE is answered (the call manager)."""
    def open_early(self, info: LegInfo, g711: str | None) -> asyncio.Future[None] | None: ...

    def drop_early(self, leg_call_id: str) -> None: ...


class Answering:
    """The INVITE-answering half of :class:`bridge.sip.service.SipService`."""

    settings: SipSettings
    address: str
    registrations: Registrations | None
    _early: EarlyUpstreams | None
    _ports: PortAllocator

    def _command(self, command: Callable[[UserAgent, float], None]) -> None:
        raise NotImplementedError   # the service's

    async def _answer(self, pending: _Pending) -> SipLeg | None:
        """Open RTP, answer (after ringing), wait for the ACK: the live leg, or None when
        the call was refused or ended before it was established."""
        event = pending.event
        key = event.call
        rtp = await self._open_rtp(event)
        if rtp is None:
            return None
        offer = self._local_sdp(event, rtp)
        if offer is None:
            rtp.close()
            return None
        sdp, media = offer
        info = LegInfo(call_id=event.invite.call_id, source=Source.SIP, caller=event.caller,
                       called=event.called,
                       remote=f"{event.peer.addr[0]}:{event.peer.addr[1]}",
                       extra={"transport": event.peer.transport,
                              **trunk_extra(self.settings.trunks, event.peer.addr[0])})
        if self.registrations is not None:          # a call through a registration
            info = self.registrations.route(info, event.invite.uri)
        law = None if media is None else (media.codec if media.codec in G711_LAWS else "")
        ready = (None if self._early is None else      # the upstream opens as we answer
                 self._early.open_early(info, law))
        await self._ring(pending, ready)
        if pending.established.done():
            # CANCELled (or otherwise ended) before we answered: the core has already
            # sent the 487; answering now would be an error.
            rtp.close()
            return None
        leg = SipLeg(self._command, key, info, rtp, media)
        pending.leg = leg
        if media is not None:
            leg._media_updated(media)
        self._command(lambda ua, now: ua.answer(key, sdp, now, media))
        established = await pending.established
        if established.media is not None:
            leg._media_updated(established.media)
        return None if leg.ended else leg

    async def _ring(self, pending: _Pending, ready: asyncio.Future[None] | None) -> None:
        """``180 Ringing`` for ``ring_ms``, then on until the call's upstream is ready (up to
        ``answer_wait_ms`` in all), so the greeting starts as the call is answered."""
        ring_s, wait_s = self.settings.ring_ms / 1000, self.settings.answer_wait_ms / 1000
        waiting = ready is not None and not ready.done() and wait_s > ring_s
        if ring_s <= 0 and not waiting:
            return
        key = pending.event.call
        self._command(lambda ua, now: ua.ringing(key, now))
        await asyncio.wait((pending.established,), timeout=ring_s)
        if waiting and ready is not None and not pending.established.done():
            await asyncio.wait((pending.established, ready), timeout=wait_s - ring_s,
                               return_when=asyncio.FIRST_COMPLETED)

    async def _open_rtp(self, event: IncomingCall) -> RtpEndpoint | None:
        """The call's RTP endpoint; None (and a 503 sent) when no port is free."""
        host = self.address if self.address not in ("0.0.0.0", "::") else self.settings.host
        try:
            return await RtpEndpoint.open(host, self._ports, latch_any=self.settings.latch_any,
                                          peer_host=event.peer.addr[0])
        except (OSError, BridgeError) as exc:
            log.warning("call %s: no RTP port (%s); refusing", event.invite.call_id, exc)
            metrics.CALLS_REJECTED.labels(reason="sip_no_rtp_port").inc()
            key = event.call
            self._command(lambda ua, now: ua.reject(
                key, 503, now, headers=(("Retry-After", str(RETRY_AFTER_S)),)))
            return None

    def _local_sdp(self, event: IncomingCall, rtp: RtpEndpoint
                   ) -> tuple[SessionDescription, NegotiatedMedia | None] | None:
        """Our answer to the INVITE's offer (or our offer when it had none), with the
        media it settles; None (and a 488 sent) when the offer cannot be answered."""
        # The address the call's Contact carries: the public one, or the one of ours this
        # caller reached (see the module docstring).
        account = (None if self.registrations is None
                   else self.registrations.line_for(event.invite.uri))
        policy = srtp_policy.policy_for(self.settings, event.peer.addr[0], account)
        try:
            if event.offer is not None:
                return srtp_policy.answer(
                    event.offer, policy, event.peer.transport, source=event.peer.addr[0],
                    address=event.local_host, port=rtp.local_port,
                    codecs=self.settings.codecs, session_id=str(rtp.local_port),
                    session_version=1)
            srtp_policy.offer_allowed(policy)
            return make_offer(address=event.local_host, port=rtp.local_port,
                              codecs=self.settings.codecs, session_id=str(rtp.local_port),
                              session_version=1), None
        except SdpError as exc:
            key = event.call
            why = f"Not Acceptable Here ({exc})"
            reason = (exc.reason if isinstance(exc, srtp_policy.SrtpRefused)
                      else "sip_unusable_sdp")
            metrics.CALLS_REJECTED.labels(reason=reason).inc()
            self._command(lambda ua, now: ua.reject(key, 488, now, reason=why))
            return None


__all__ = ["Answering", "EarlyUpstreams"]
