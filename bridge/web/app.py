"""The HTTP side of the bridge: softphone page, WebRTC signalling, dashboard, health, metrics.

``create_app(manager, settings)`` builds a Quart app around a running ``CallManager``;
``bridge.serve`` runs it on Hypercorn in the same event loop as SIP and RTP, and the tests
drive it in-process with ``app.test_client()``.

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

import asyncio
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict
from typing import Any, Protocol

from quart import Quart, Response, redirect, render_template, request
from quart.typing import ResponseReturnValue

from bridge import metrics
from bridge.call.leg import MediaLeg
from bridge.call.records import CallRecord, RecordStore
from bridge.config import Settings
from bridge.web.timeline import render_svg, timeline_from_record
from bridge.webrtc.leg import WebRtcLeg, WebRtcOfferError

log = logging.getLogger(__name__)

COOKIE = "voicebridge_token"
MAX_OFFER_BYTES = 64 * 1024
SSE_KEEPALIVE_S = 15.0
SSE_QUEUE = 1000

#: ``readiness()`` returns check name -> (ok, detail).
Readiness = Callable[[], Awaitable[dict[str, tuple[bool, str]]]]


class LiveCall(Protocol):
    call_id: str
    leg: MediaLeg
    record: CallRecord


class Manager(Protocol):
    """What the app needs of ``bridge.call.manager.CallManager``."""

    calls: Any                      # dict[str, Call]
    store: RecordStore

    def can_admit(self) -> bool: ...

    async def handle(self, leg: MediaLeg) -> CallRecord: ...

    def hang_up(self, call_id: str, reason: str = "operator") -> bool: ...

    def add_listener(self, listener: Callable[[dict[str, Any]], None]) -> None: ...

    def remove_listener(self, listener: Callable[[dict[str, Any]], None]) -> None: ...

    def subscribe(self) -> AsyncIterator[dict[str, Any]]: ...


def _summary(record: CallRecord, live: bool) -> dict[str, Any]:
    end = record.ended_at if record.ended_at is not None else time.time()
    return {
        "call_id": record.call_id, "caller": record.caller, "called": record.called,
        "source": record.source, "dialplan": record.dialplan, "live": live,
        "started_at": record.started_at, "ended_at": record.ended_at,
        "duration_s": round(max(0.0, end - record.started_at), 1),
        "end_reason": record.end_reason, "turns": len(record.turns),
        "barge_ins": len(record.barge_ins), "tool_calls": len(record.tool_calls),
    }


class _WebRtcCalls:
    """Runs each browser call's ``manager.handle(leg)`` in a task the app holds."""

    def __init__(self, manager: Manager) -> None:
        self.manager = manager
        self.tasks: set[asyncio.Task[None]] = set()
        self._leg_of_call: dict[str, WebRtcLeg] = {}
        self._legs: set[WebRtcLeg] = set()
        manager.add_listener(self._forward)

    def start(self, leg: WebRtcLeg) -> None:
        self._legs.add(leg)
        task = asyncio.ensure_future(self._run(leg))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _run(self, leg: WebRtcLeg) -> None:
        try:
            await self.manager.handle(leg)
        except asyncio.CancelledError:
            raise
        except Exception as exc:   # CallRejected, or a call that failed to start
            log.warning("webrtc %s: call not run: %r", leg.info.call_id, exc)
            leg.send_event({"type": "call.ended", "reason": "rejected"})
        finally:
            await leg.close()
            self._legs.discard(leg)
            for call_id in [c for c, lg in self._leg_of_call.items() if lg is leg]:
                del self._leg_of_call[call_id]

    def _forward(self, event: dict[str, Any]) -> None:
        """Push the events of a browser's own call into its ``events`` data channel."""
        call_id = str(event.get("call_id", ""))
        leg = self._leg_of_call.get(call_id)
        if leg is None and event.get("type") == "call.started":
            call = self.manager.calls.get(call_id)
            candidate = getattr(call, "leg", None)
            if isinstance(candidate, WebRtcLeg) and candidate in self._legs:
                leg = self._leg_of_call[call_id] = candidate
        if leg is not None:
            leg.send_event(event)

    async def close(self) -> None:
        self.manager.remove_listener(self._forward)
        for task in list(self.tasks):
            task.cancel()
        if self.tasks:
            await asyncio.wait(list(self.tasks), timeout=5)


def create_app(manager: Manager, settings: Settings, *,
               readiness: Readiness | None = None) -> Quart:
    """The bridge's HTTP app around ``manager`` (see the module doc for the routes)."""
    app = Quart(__name__, template_folder="templates", static_folder="static")
    app.config["MAX_CONTENT_LENGTH"] = MAX_OFFER_BYTES
    http = settings.http
    webrtc_calls = _WebRtcCalls(manager)
    app.extensions["voicebridge"] = {"manager": manager, "webrtc": webrtc_calls}

    @app.after_serving
    async def _stop_webrtc() -> None:
        await webrtc_calls.close()

    # ---- access ------------------------------------------------------------------------

    def authorized() -> bool:
        token = http.token
        if not token:
            return False
        given = ""
        header = request.headers.get("Authorization", "")
        if header.startswith("Bearer "):
            given = header[7:].strip()
        elif COOKIE in request.cookies:
            given = request.cookies[COOKIE]
        return bool(given) and hmac.compare_digest(given.encode(), token.encode())

    def unauthorized() -> Response:
        body = {"error": "unauthorized",
                "detail": "send Authorization: Bearer <token> or log in at /login?token=..."
                if http.token else "the dashboard is off: set [http] token "
                                   "(VOICEBRIDGE_HTTP_TOKEN) to turn it on"}
        response = Response(json.dumps(body), status=401, content_type="application/json")
        response.headers["WWW-Authenticate"] = 'Bearer realm="voicebridge"'
        return response

    def protected(view: Callable[..., Awaitable[ResponseReturnValue]]
                  ) -> Callable[..., Awaitable[ResponseReturnValue]]:
        async def guarded(*args: Any, **kwargs: Any) -> ResponseReturnValue:
            if not authorized():
                return unauthorized()
            return await view(*args, **kwargs)
        guarded.__name__ = view.__name__
        return guarded

    @app.after_request
    async def _headers(response: Response) -> Response:
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        origin = request.headers.get("Origin")
        if origin and origin in http.cors_origins:
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Access-Control-Allow-Headers"] = "Authorization, Content-Type"
            response.headers["Access-Control-Allow-Methods"] = "GET, POST"
            response.headers["Vary"] = "Origin"
        return response

    # ---- health, metrics ---------------------------------------------------------------

    @app.get("/healthz")
    async def healthz() -> ResponseReturnValue:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> ResponseReturnValue:
        checks = await readiness() if readiness is not None else {}
        ok = all(passed for passed, _ in checks.values())
        body = {"ready": ok, "checks": {name: {"ok": passed, "detail": detail}
                                        for name, (passed, detail) in checks.items()}}
        return body, 200 if ok else 503

    @app.get("/metrics")
    async def metrics_view() -> ResponseReturnValue:
        body, content_type = metrics.render()
        return Response(body, content_type=content_type)

    # ---- softphone + WebRTC ------------------------------------------------------------

    @app.get("/")
    async def softphone() -> ResponseReturnValue:
        if not http.softphone:
            return {"error": "the softphone page is switched off"}, 404
        ice = [{"urls": list(server.urls),
                **({"username": server.username} if server.username else {}),
                **({"credential": server.credential} if server.credential else {})}
               for server in settings.webrtc.ice_servers]
        return await render_template("softphone.html", ice_servers=ice)

    @app.post("/webrtc/offer")
    async def webrtc_offer() -> ResponseReturnValue:
        if not http.softphone:
            return {"error": "the softphone page is switched off"}, 404
        body = await request.get_json(force=True, silent=True)
        if not isinstance(body, dict) or body.get("type", "offer") != "offer" \
                or not isinstance(body.get("sdp"), str):
            return {"error": "expected JSON {\"type\": \"offer\", \"sdp\": \"...\"}"}, 400
        if not manager.can_admit() or \
                len(webrtc_calls.tasks) >= settings.webrtc.max_legs:
            metrics.CALLS_REJECTED.labels(reason="busy").inc()
            return {"error": "busy, try again later"}, 503, {"Retry-After": "5"}
        called = str(body.get("called") or "")[:64]
        caller = str(body.get("caller") or "browser")[:64]
        remote = request.remote_addr or ""
        try:
            leg, answer = await WebRtcLeg.answer(
                body["sdp"], config=settings.webrtc, caller=caller, called=called,
                remote=remote, extra={"user_agent": request.headers.get("User-Agent", "")[:200]})
        except WebRtcOfferError as exc:
            return {"error": str(exc)}, 400
        webrtc_calls.start(leg)
        return {"type": "answer", "sdp": answer, "call_id": leg.info.call_id,
                "codec": leg.codec, "sample_rate": leg.sample_rate}

    # ---- dashboard, call data ----------------------------------------------------------

    @app.get("/login")
    async def login() -> ResponseReturnValue:
        token = request.args.get("token", "")
        if not http.token or not hmac.compare_digest(token.encode(), http.token.encode()):
            return unauthorized()
        response = redirect("/dashboard")
        response.set_cookie(COOKIE, token, httponly=True, samesite="Strict",
                            secure=request.scheme == "https", path="/")
        return response

    def live_records() -> dict[str, CallRecord]:
        return {cid: call.record for cid, call in list(manager.calls.items())}

    async def find(call_id: str) -> tuple[CallRecord | None, bool]:
        live = live_records()
        if call_id in live:
            return live[call_id], True
        return await manager.store.get(call_id), False

    async def listing() -> dict[str, Any]:
        live = live_records()
        recent = [r for r in await manager.store.recent(http.recent_calls)
                  if r.call_id not in live]
        return {"live": [_summary(r, True) for r in live.values()],
                "recent": [_summary(r, False) for r in recent]}

    @app.get("/dashboard")
    @protected
    async def dashboard() -> ResponseReturnValue:
        return await render_template("dashboard.html", calls=await listing())

    @app.get("/calls")
    @protected
    async def calls() -> ResponseReturnValue:
        return await listing()

    @app.get("/calls/events")
    @protected
    async def call_events() -> ResponseReturnValue:
        # Subscribed before the response starts, so no event between this request and the
        # first read is lost. A follower that cannot keep up loses its oldest events.
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(SSE_QUEUE)

        def offer(event: dict[str, Any]) -> None:
            if queue.full():
                queue.get_nowait()
            queue.put_nowait(event)
        manager.add_listener(offer)
        metrics.SSE_CLIENTS.inc()

        async def stream() -> AsyncIterator[bytes]:
            try:
                yield b"retry: 2000\n\n"
                while True:
                    try:
                        async with asyncio.timeout(SSE_KEEPALIVE_S):
                            event = await queue.get()
                    except TimeoutError:
                        yield b": keep-alive\n\n"
                        continue
                    data = json.dumps(event, separators=(",", ":"), default=str)
                    yield f"event: {event.get('type', 'message')}\ndata: {data}\n\n".encode()
            finally:
                manager.remove_listener(offer)
                metrics.SSE_CLIENTS.dec()

        response = Response(stream(), content_type="text/event-stream")
        response.headers["Cache-Control"] = "no-cache"
        response.headers["X-Accel-Buffering"] = "no"
        response.timeout = None
        return response

    @app.get("/calls/<call_id>")
    @protected
    async def call_view(call_id: str) -> ResponseReturnValue:
        record, live = await find(call_id)
        if record is None:
            return {"error": "no such call"}, 404
        wants_json = request.args.get("format") == "json" or (
            request.accept_mimetypes.best_match(["application/json", "text/html"])
            == "application/json")
        if wants_json:
            return dict(record.to_dict(), live=live)
        svg = render_svg(timeline_from_record(record))
        return await render_template("call.html", record=record, live=live, svg=svg,
                                     summary=_summary(record, live),
                                     turns=[asdict(t) | {"total_ms": t.total_ms}
                                            for t in record.turns])

    @app.get("/calls/<call_id>/timeline.svg")
    @protected
    async def call_timeline(call_id: str) -> ResponseReturnValue:
        record, _live = await find(call_id)
        if record is None:
            return {"error": "no such call"}, 404
        return Response(render_svg(timeline_from_record(record)), content_type="image/svg+xml")

    @app.post("/calls/<call_id>/hangup")
    @protected
    async def call_hangup(call_id: str) -> ResponseReturnValue:
        if not manager.hang_up(call_id, "operator"):
            return {"error": "no such live call"}, 404
        log.info("call %s: hung up from the dashboard", call_id)
        return {"ok": True, "call_id": call_id}, 202

    return app
