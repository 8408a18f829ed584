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
    POST /webrtc/token          a single-use call token (the operator's session, or
                                anyone when ``[webrtc] public``); rate-limited
    POST /webrtc/offer          browser SDP offer -> answer (the operator's bearer token or
                                a call token, unless public; rate-limited); the call runs
                                until hang-up, its Realtime session from when media connects
Token-protected (``[http] token``; ``Authorization: Bearer`` or the session /login starts):
    GET  /login?token=...       starts the signed session, redirects to /dashboard
    GET  /dashboard             live calls and recent history
    GET  /calls                 the same as JSON (in a cluster: every node's calls)
    GET  /calls/events          server-sent events of every call event
    GET  /calls/<id>            a call's record: JSON (Accept: application/json or
                                ?format=json) or an HTML page with transcript and timeline
    GET  /calls/<id>/timeline.svg
    GET  /calls/<id>/recording  the call's recording (stereo WAV), when its dialplan records
    POST /calls/<id>/hangup     end a live call (in a cluster: on whichever node owns it)
    POST /calls/<id>/summary    summarise an ended call (``bridge.web.summaries``, added
                                by ``voicebridge serve`` with its summary queue)

State-changing routes also check the ``Origin`` and, on the session cookie, a CSRF
token (``bridge.web.access``). An app built with no token keeps the protected routes
closed (401) to everyone; ``voicebridge serve`` always has one: the configured
``[http] token``, or one made for the run and shown only in its start-up banner. CORS is
closed unless ``[http] cors_origins`` lists origins.
"""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING

from quart import Quart

from bridge.config import Settings
from bridge.errors import ConfigError
from bridge.web.access import SESSION_COOKIE, security_headers
from bridge.web.calls import calls
from bridge.web.calltokens import CallTokens
from bridge.web.dashboard import dashboard
from bridge.web.health import health
from bridge.web.ratelimit import RateLimiter
from bridge.web.recordings import recordings
from bridge.web.softphone import softphone
from bridge.web.state import EXTENSION, Lines, Manager, Readiness, WebState
from bridge.web.webrtc_calls import WebRtcCalls

if TYPE_CHECKING:
    from bridge.call.cluster import ClusterNode

#: The largest request body taken (a browser's SDP offer is a few kilobytes).
MAX_OFFER_BYTES = 64 * 1024


def create_app(manager: Manager, settings: Settings, *,
               readiness: Readiness | None = None,
               registrations: Lines | None = None, cluster: ClusterNode | None = None) -> Quart:
    """The bridge's HTTP app around ``manager`` (see the module doc for the routes);
    ``registrations``: the SIP accounts' registration states, for the dashboard;
    ``cluster``: the shared live state of a cluster (PostgreSQL records), else None."""
    webrtc = settings.webrtc
    unknown = sorted(set(webrtc.dialplans) - {plan.name for plan in manager.dialplans}
                     if webrtc.dialplans else ())
    if unknown:
        raise ConfigError(f"[webrtc] dialplans: no dialplan named {unknown[0]!r} "
                          f"(there are {', '.join(p.name for p in manager.dialplans)})")
    app = Quart(__name__, template_folder="templates", static_folder="static")
    app.config["MAX_CONTENT_LENGTH"] = MAX_OFFER_BYTES
    # The operator's session: signed with a key of this run (a restart logs everyone out).
    app.secret_key = secrets.token_bytes(32)
    app.config.update(SESSION_COOKIE_NAME=SESSION_COOKIE, SESSION_COOKIE_HTTPONLY=True,
                      SESSION_COOKIE_SAMESITE="Strict")
    state = WebState(manager=manager, settings=settings,
                     webrtc=WebRtcCalls(manager, media_timeout_s=webrtc.media_timeout_ms / 1000),
                     tokens=CallTokens(webrtc.call_token_ttl_s),
                     limiter=RateLimiter(webrtc.rate_per_minute, webrtc.rate_burst),
                     readiness=readiness, registrations=registrations, cluster=cluster)
    app.extensions[EXTENSION] = state
    app.after_serving(state.webrtc.close)
    app.after_request(security_headers)
    for blueprint in (health, softphone, dashboard, calls, recordings):
        app.register_blueprint(blueprint)
    return app


__all__ = ["MAX_OFFER_BYTES", "create_app"]
