"""The softphone: the page (``GET /``), its call tokens (``POST /webrtc/token``) and its
WebRTC signalling (``POST /webrtc/offer``). All answer 404 when ``[http] softphone`` is off.

Who may call. Unless ``[webrtc] public``, an offer carries ``Authorization: Bearer`` with
the operator's ``[http] token`` (an API client) or a call token: single-use, valid for
``[webrtc] call_token_ttl_s``, issued by ``POST /webrtc/token`` to the operator's session
(with its CSRF token; the page does this) or, when public, to anyone. Both routes are
rate-limited per client address (``[webrtc] rate_per_minute`` / ``rate_burst``: 429 +
``Retry-After``) and refuse a foreign ``Origin`` (403).

What may be called. The dialplan the offer's called number reaches must be one of
``[webrtc] dialplans`` (empty: the default dialplan only); anything else is 403.

An offer is then answered only when the manager admits another call and the browser calls
are under ``[webrtc] max_legs`` (otherwise 503 + ``Retry-After``); the call runs in
``WebRtcCalls``, which opens its Realtime session only once ICE and DTLS are connected.
Every refusal is counted in ``voicebridge_calls_rejected_total{reason=webrtc_*}`` and
logged, throttled.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from quart import Blueprint, render_template, request
from quart.typing import ResponseReturnValue

from bridge import metrics
from bridge.config import Settings
from bridge.logthrottle import Throttle
from bridge.web.access import action_refusal, bearer, csrf_token, operator_bearer, origin_ok
from bridge.web.ratelimit import retry_after
from bridge.web.state import WebState, web_state
from bridge.webrtc.leg import WebRtcLeg, WebRtcOfferError

log = logging.getLogger(__name__)
_throttled = Throttle(log)

softphone = Blueprint("softphone", __name__)

SWITCHED_OFF = {"error": "the softphone page is switched off"}
BAD_OFFER = {"error": "expected JSON {\"type\": \"offer\", \"sdp\": \"...\"}"}
NEEDS_TOKEN = ("calls from this page need the operator's login or a call token "
               "(Authorization: Bearer); see POST /webrtc/token")


def ice_servers(settings: Settings) -> list[dict[str, object]]:
    """``[webrtc] ice_servers`` as the page's ``RTCPeerConnection`` takes them."""
    return [{"urls": list(server.urls),
             **({"username": server.username} if server.username else {}),
             **({"credential": server.credential} if server.credential else {})}
            for server in settings.webrtc.ice_servers]


@softphone.get("/")
async def page() -> ResponseReturnValue:
    """The softphone page."""
    state = web_state()
    if not state.http.softphone:
        return SWITCHED_OFF, 404
    return await render_template("softphone.html", ice_servers=ice_servers(state.settings),
                                 public=state.settings.webrtc.public, csrf=csrf_token())


@dataclass(frozen=True)
class Offer:
    """A browser's offer: its SDP and who it says is calling whom (64 characters each)."""

    sdp: str
    caller: str
    called: str


def parse_offer(body: object) -> Offer | None:
    """The offer in a request's JSON (``type`` "offer" or absent, ``sdp`` a string)."""
    if not isinstance(body, dict) or body.get("type", "offer") != "offer":
        return None
    sdp = body.get("sdp")
    if not isinstance(sdp, str):
        return None
    return Offer(sdp=sdp, caller=str(body.get("caller") or "browser")[:64],
                 called=str(body.get("called") or "")[:64])


def busy(state: WebState) -> bool:
    return (not state.manager.can_admit()
            or len(state.webrtc.tasks) >= state.settings.webrtc.max_legs)


def _now() -> float:
    return asyncio.get_running_loop().time()


def refuse(reason: str, status: int, error: str,
           headers: dict[str, str] | None = None) -> ResponseReturnValue:
    """Count, log (throttled) and answer one refused browser call or token request."""
    metrics.CALLS_REJECTED.labels(reason=f"webrtc_{reason}").inc()
    _throttled.log(logging.WARNING, f"webrtc-{reason}", "webrtc: %s refused (%s) from %s",
                   request.path, reason, request.remote_addr or "?")
    return {"error": error}, status, headers or {}


def rate_limited(state: WebState) -> ResponseReturnValue | None:
    wait = state.limiter.take(request.remote_addr or "", _now())
    if not wait:
        return None
    return refuse("rate_limited", 429, "too many calls from this address; try again later",
                  {"Retry-After": retry_after(wait)})


def caller_refusal(state: WebState) -> ResponseReturnValue | None:
    """None when the offer may go on: same origin, and public, the operator or a token."""
    if not origin_ok():
        return refuse("unauthorized", 403, "cross-origin offer refused")
    if state.settings.webrtc.public or operator_bearer():
        return None
    if state.tokens.redeem(bearer(), _now()):
        return None
    return refuse("unauthorized", 401, NEEDS_TOKEN)


def dialplan_refusal(state: WebState, body: Offer) -> ResponseReturnValue | None:
    """None when the number reaches a dialplan browsers may call."""
    plans = state.manager.dialplans
    plan = plans.match(called=body.called, caller=body.caller, source="webrtc")
    if plan.name in (state.settings.webrtc.dialplans or (plans.default.name,)):
        return None
    return refuse("dialplan", 403, "this number cannot be called from the browser")


@softphone.post("/webrtc/token")
async def call_token() -> ResponseReturnValue:
    """A single-use call token for one offer."""
    state = web_state()
    if not state.http.softphone:
        return SWITCHED_OFF, 404
    refusal = rate_limited(state)
    if refusal is not None:
        return refusal
    denied = await action_refusal(operator_only=not state.settings.webrtc.public)
    if denied is not None:
        metrics.CALLS_REJECTED.labels(reason="webrtc_unauthorized").inc()
        return denied
    token = state.tokens.issue(_now())
    if token is None:
        return refuse("busy", 503, "too many call tokens outstanding; try again later",
                      {"Retry-After": "5"})
    return {"token": token, "expires_in": state.settings.webrtc.call_token_ttl_s}


@softphone.post("/webrtc/offer")
async def offer() -> ResponseReturnValue:
    """Browser SDP offer -> answer; the call runs until hang-up."""
    state = web_state()
    if not state.http.softphone:
        return SWITCHED_OFF, 404
    refusal = rate_limited(state) or caller_refusal(state)
    if refusal is not None:
        return refusal
    body = parse_offer(await request.get_json(force=True, silent=True))
    if body is None:
        return BAD_OFFER, 400
    refusal = dialplan_refusal(state, body)
    if refusal is not None:
        return refusal
    if busy(state):
        return refuse("busy", 503, "busy, try again later", {"Retry-After": "5"})
    try:
        leg, answer = await WebRtcLeg.answer(
            body.sdp, config=state.settings.webrtc, caller=body.caller, called=body.called,
            remote=request.remote_addr or "",
            extra={"user_agent": request.headers.get("User-Agent", "")[:200]})
    except WebRtcOfferError as exc:
        return {"error": str(exc)}, 400
    state.webrtc.start(leg)
    return {"type": "answer", "sdp": answer, "call_id": leg.info.call_id,
            "codec": leg.codec, "sample_rate": leg.sample_rate}


__all__ = ["call_token", "ice_servers", "softphone"]
