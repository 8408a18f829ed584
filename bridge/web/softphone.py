"""The softphone: the page (``GET /``) and its WebRTC signalling (``POST /webrtc/offer``).

Both answer 404 when ``[http] softphone`` is off. An offer is answered only when the
manager admits another call and the browser calls are under ``[webrtc] max_legs``
(otherwise 503 + ``Retry-After``); the call then runs in ``WebRtcCalls`` until hang-up.
"""

from __future__ import annotations

from dataclasses import dataclass

from quart import Blueprint, render_template, request
from quart.typing import ResponseReturnValue

from bridge import metrics
from bridge.config import Settings
from bridge.web.state import WebState, web_state
from bridge.webrtc.leg import WebRtcLeg, WebRtcOfferError

softphone = Blueprint("softphone", __name__)

SWITCHED_OFF = {"error": "the softphone page is switched off"}
BAD_OFFER = {"error": "expected JSON {\"type\": \"offer\", \"sdp\": \"...\"}"}


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
    return await render_template("softphone.html", ice_servers=ice_servers(state.settings))


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


@softphone.post("/webrtc/offer")
async def offer() -> ResponseReturnValue:
    """Browser SDP offer -> answer; the call runs until hang-up."""
    state = web_state()
    if not state.http.softphone:
        return SWITCHED_OFF, 404
    body = parse_offer(await request.get_json(force=True, silent=True))
    if body is None:
        return BAD_OFFER, 400
    if busy(state):
        metrics.CALLS_REJECTED.labels(reason="busy").inc()
        return {"error": "busy, try again later"}, 503, {"Retry-After": "5"}
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


__all__ = ["ice_servers", "softphone"]
