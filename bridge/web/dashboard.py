"""The dashboard (token-protected): logging in, the page of calls, and its live feed.

    GET  /login?token=...   starts the operator's signed session, redirects to /dashboard
    GET  /dashboard         live calls and recent history
    GET  /calls/events      Server-Sent Events of every call event
    GET  /sip/registrations the SIP accounts' registrations (state, registrar, expiry,
                            last error), JSON
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from quart import Blueprint, Response, redirect, render_template, request
from quart.typing import ResponseReturnValue

from bridge import metrics
from bridge.web.access import csrf_token, protected, start_session, token_matches, unauthorized
from bridge.web.calls import listing
from bridge.web.events import WebEvent, sse_message
from bridge.web.state import Manager, web_state

SSE_KEEPALIVE_S = 15.0
SSE_QUEUE = 1000

dashboard = Blueprint("dashboard", __name__)


@dashboard.get("/login")
async def login() -> ResponseReturnValue:
    token = request.args.get("token", "")
    if not token_matches(token, web_state().http.token):
        return unauthorized()
    start_session()          # the cookie holds a signed session, never the token
    return redirect("/dashboard")


@dashboard.get("/dashboard")
@protected
async def page() -> ResponseReturnValue:
    return await render_template("dashboard.html", calls=await listing(), csrf=csrf_token(),
                                 registrations=registrations(),
                                 cluster=web_state().cluster is not None)


def registrations() -> list[dict[str, Any]]:
    lines = web_state().registrations
    return lines() if lines is not None else []


@dashboard.get("/sip/registrations")
@protected
async def sip_registrations() -> ResponseReturnValue:
    return {"registrations": registrations()}


class EventFollower:
    """One SSE client's feed of call events.

    It listens from construction (before the response starts), so no event between the
    request and the first read is lost; a follower that cannot keep up loses its oldest
    events, never stalls a call. Iterating ``stream()`` to its end (the client gone)
    stops the listening.
    """

    def __init__(self, manager: Manager, size: int = SSE_QUEUE,
                 keepalive_s: float = SSE_KEEPALIVE_S) -> None:
        self.manager = manager
        self.keepalive_s = keepalive_s
        self.queue: asyncio.Queue[WebEvent] = asyncio.Queue(size)
        manager.add_listener(self.offer)
        metrics.SSE_CLIENTS.inc()

    def offer(self, event: WebEvent) -> None:
        if self.queue.full():
            self.queue.get_nowait()
        self.queue.put_nowait(event)

    async def stream(self) -> AsyncIterator[bytes]:
        try:
            yield b"retry: 2000\n\n"
            while True:
                try:
                    async with asyncio.timeout(self.keepalive_s):
                        event = await self.queue.get()
                except TimeoutError:
                    yield b": keep-alive\n\n"
                    continue
                yield sse_message(event)
        finally:
            self.manager.remove_listener(self.offer)
            metrics.SSE_CLIENTS.dec()


@dashboard.get("/calls/events")
@protected
async def call_events() -> ResponseReturnValue:
    follower = EventFollower(web_state().manager)
    response = Response(follower.stream(), content_type="text/event-stream")
    response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Accel-Buffering"] = "no"
    response.timeout = None
    return response


__all__ = ["SSE_KEEPALIVE_S", "SSE_QUEUE", "EventFollower", "dashboard"]
