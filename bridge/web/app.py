"""The HTTP side of the bridge: softphone page, WebRTC signalling, dashboard, health, metrics.

``create_app(manager, settings)`` builds a Quart app around a running ``CallManager``;
``bridge.serve`` runs it on Hypercorn in the same event loop as SIP and RTP, and the tests
drive it in-process with ``app.test_client()``.

The routes live in blueprints, one module each: ``bridge.web.health`` (health, metrics),
``bridge.web.softphone`` (the page and WebRTC signalling), ``bridge.web.dashboard`` (login,
the dashboard, its Server-Sent Events) and ``bridge.web.calls`` (the call API). What they
share (the manager, the settings, the browser calls' runner ``bridge.web.webrtc_calls``)
is one ``bridge.web.state.WebState`` in ``app.extensions["voicebridge"]``; the token check
and the response headers are ``bridge.web.access``, and call events are read only in
``bridge.web.events``.

Routes
------
Open to anyone who can reach the port:
    GET  /healthz               the process is alive
    GET  /readyz                listening and the upstream reachable (503 + JSON otherwise)
    GET  /metrics               Prometheus exposition (no call data in it)
Softphone (``[http] softphone``, on by default; 404 when off):
    GET  /                      the softphone page
    POST /webrtc/offer          browser SDP offer -> answer; the call runs until hang-up
Token-protected (``[http] token``; ``Authorization: Bearer`` or the cookie set by /login):
    GET  /login?token=...       sets the session cookie, redirects to /dashboard
    GET  /dashboard             live calls and recent history
    GET  /calls                 the same as JSON
    GET  /calls/events          server-sent events of every call event
    GET  /calls/<id>            a call's record: JSON (Accept: application/json or
                                ?format=json) or an HTML page with transcript and timeline
    GET  /calls/<id>/timeline.svg
    POST /calls/<id>/hangup     end a live call

An app built with no token keeps the protected routes closed (401) to everyone;
``voicebridge serve`` always has one: the configured ``[http] token``, or one made for the
run and shown only in its start-up banner. CORS is closed unless ``[http] cors_origins``
lists origins.
"""

from __future__ import annotations

from quart import Quart

from bridge.config import Settings
from bridge.web.access import security_headers
from bridge.web.calls import calls
from bridge.web.dashboard import dashboard
from bridge.web.health import health
from bridge.web.softphone import softphone
from bridge.web.state import EXTENSION, Manager, Readiness, WebState
from bridge.web.webrtc_calls import WebRtcCalls

#: The largest request body taken (a browser's SDP offer is a few kilobytes).
MAX_OFFER_BYTES = 64 * 1024


def create_app(manager: Manager, settings: Settings, *,
               readiness: Readiness | None = None) -> Quart:
    """The bridge's HTTP app around ``manager`` (see the module doc for the routes)."""
    app = Quart(__name__, template_folder="templates", static_folder="static")
    app.config["MAX_CONTENT_LENGTH"] = MAX_OFFER_BYTES
    state = WebState(manager=manager, settings=settings, webrtc=WebRtcCalls(manager),
                     readiness=readiness)
    app.extensions[EXTENSION] = state
    app.after_serving(state.webrtc.close)
    app.after_request(security_headers)
    for blueprint in (health, softphone, dashboard, calls):
        app.register_blueprint(blueprint)
    return app


__all__ = ["MAX_OFFER_BYTES", "create_app"]
