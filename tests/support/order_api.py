"""A small order service on loopback (aiohttp, port 0) for the webhook tools to call."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

SECRET = "tok-9f8e7d6c5b4a"   # a made-up token: must never show up in a log


@dataclass
class OrderApi:
    """A small order service; records what it was asked."""

    url: str = ""
    seen: list[dict[str, Any]] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/orders/{order_id}", self.order)
        app.router.add_post("/notes/{order_id}", self.note)
        app.router.add_get("/slow", self.slow)
        app.router.add_get("/text", self.text)
        app.router.add_get("/big", self.big)
        return app

    def record(self, request: web.Request, body: Any = None) -> None:
        self.seen.append({"method": request.method, "raw_path": request.raw_path,
                          "query": dict(request.query), "body": body,
                          "auth": request.headers.get("Authorization")})

    async def order(self, request: web.Request) -> web.Response:
        self.record(request)
        if request.headers.get("Authorization") != f"Bearer {SECRET}":
            return web.json_response({"error": "unauthorized"}, status=401)
        order_id = request.match_info["order_id"]
        if order_id == "4040":
            return web.json_response({"error": "no such order"}, status=404)
        return web.json_response({"order_id": order_id, "status": "shipped",
                                  "data": {"eta": "2025-03-05", "carrier": "Example Post"},
                                  "items": [{"sku": "A-1"}, {"sku": "B-2"}]})

    async def note(self, request: web.Request) -> web.Response:
        self.record(request, await request.json())
        return web.json_response({"saved": True})

    async def slow(self, request: web.Request) -> web.Response:
        self.record(request)
        await self.release.wait()
        return web.json_response({})

    async def text(self, request: web.Request) -> web.Response:
        return web.Response(text="open until six")

    async def big(self, request: web.Request) -> web.Response:
        return web.Response(body=b"x" * (300 * 1024))


@contextlib.asynccontextmanager
async def running_order_api() -> AsyncIterator[OrderApi]:
    """An ``OrderApi`` serving on 127.0.0.1 (its ``url`` set) until the block ends."""
    server = OrderApi()
    runner = web.AppRunner(server.app(), access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    server.url = f"http://{host}:{port}"
    try:
        yield server
    finally:
        server.release.set()
        await runner.cleanup()
