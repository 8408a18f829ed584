"""Webhook tools against a real HTTP server on loopback (aiohttp, port 0)."""

from __future__ import annotations

import asyncio
import json
import logging
import textwrap
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from bridge.dialplans import Dialplan, load_dialplan_file, load_dialplans
from bridge.dialplans.loader import PACKAGED_DIR
from tests.test_dialplans_tools import RecordingContext

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


@pytest.fixture
async def api() -> AsyncIterator[OrderApi]:
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


def plan_for(tmp_path: Path, api: OrderApi, body: str, env: dict[str, str] | None = None
             ) -> Dialplan:
    path = tmp_path / "hooks.toml"
    path.write_text(textwrap.dedent(body).lstrip(), "utf-8")
    return load_dialplan_file(path, env={"API": api.url, "ORDERS_TOKEN": SECRET, **(env or {})})


HOOKS = """
    tools = ["order", "order_all", "note", "slow", "text", "big"]
    [match]
    default = true

    [[webhook]]
    name = "order"
    description = "Order status."
    url = "${API}/orders/{order_id}?lang=en"
    headers = { Authorization = "Bearer ${ORDERS_TOKEN}" }
    response = ["status", "data.eta", "items.1.sku", "data.missing"]
    [webhook.parameters]
    type = "object"
    required = ["order_id"]
    properties.order_id = { type = "string" }
    properties.verbose = { type = "boolean" }

    [[webhook]]
    name = "order_all"
    description = "Whole order."
    url = "${API}/orders/{order_id}"
    headers = { Authorization = "Bearer ${ORDERS_TOKEN}" }
    parameters = { required = ["order_id"], properties = { order_id = { type = "string" } } }

    [[webhook]]
    name = "note"
    description = "Leave a note on an order."
    url = "${API}/notes/{order_id}"
    method = "post"
    [webhook.parameters]
    type = "object"
    required = ["order_id", "text"]
    [webhook.parameters.properties]
    order_id = { type = "integer", minimum = 1 }
    text = { type = "string", maxLength = 50 }
    tags = { type = "array", items = { type = "string", enum = ["urgent", "vip"] } }

    [[webhook]]
    name = "slow"
    description = "Never answers in time."
    url = "${API}/slow"
    timeout = 0.2

    [[webhook]]
    name = "text"
    description = "Plain text."
    url = "${API}/text"

    [[webhook]]
    name = "big"
    description = "Too big."
    url = "${API}/big"
"""


async def test_url_template_headers_and_selection(
        tmp_path: Path, api: OrderApi, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    plan = plan_for(tmp_path, api, HOOKS)
    ctx = RecordingContext()
    result = await plan.tools.dispatch("order", '{"order_id": "1234", "verbose": true}', ctx)
    assert result.ok, result.output
    assert json.loads(result.output) == {"status": "shipped", "data.eta": "2025-03-05",
                                         "items.1.sku": "B-2", "data.missing": None}
    seen = api.seen[-1]
    assert seen["raw_path"].startswith("/orders/1234?")
    assert seen["query"] == {"lang": "en", "verbose": "true"}
    assert seen["auth"] == f"Bearer {SECRET}"
    # An argument cannot climb the path or add a query: it is percent-encoded whole.
    result = await plan.tools.dispatch("order", '{"order_id": "../admin?x=1"}', ctx)
    assert api.seen[-1]["raw_path"].startswith("/orders/..%2Fadmin%3Fx%3D1?")
    # Without a selection, the whole JSON document.
    result = await plan.tools.dispatch("order_all", '{"order_id": "77"}', ctx)
    assert json.loads(result.output)["data"]["carrier"] == "Example Post"
    assert SECRET not in caplog.text
    assert "tool order ok" in caplog.text


async def test_non_2xx_is_an_error_output(
        tmp_path: Path, api: OrderApi, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    plan = plan_for(tmp_path, api, HOOKS)
    result = await plan.tools.dispatch("order", '{"order_id": "4040"}', RecordingContext())
    assert (result.ok, result.error) == (False, "http_status")
    assert json.loads(result.output)["error"] == {
        "type": "http_status", "message": "order: the service answered HTTP 404", "status": 404}
    wrong = plan_for(tmp_path, api, HOOKS, env={"ORDERS_TOKEN": "wrong-token-123"})
    result = await wrong.tools.dispatch("order", '{"order_id": "1"}', RecordingContext())
    assert json.loads(result.output)["error"]["status"] == 401
    assert SECRET not in caplog.text and "wrong-token-123" not in caplog.text


async def test_post_body_and_schema(tmp_path: Path, api: OrderApi) -> None:
    plan = plan_for(tmp_path, api, HOOKS)
    ctx = RecordingContext()
    result = await plan.tools.dispatch(
        "note", '{"order_id": 42, "text": "leave at door", "tags": ["vip"]}', ctx)
    assert result.ok, result.output
    assert api.seen[-1]["method"] == "POST"
    assert api.seen[-1]["raw_path"] == "/notes/42"
    assert api.seen[-1]["body"] == {"text": "leave at door", "tags": ["vip"]}
    count = len(api.seen)
    for bad in ('{"order_id": 0, "text": "x"}', '{"order_id": 1, "text": "' + "y" * 51 + '"}',
                '{"order_id": 1, "text": "x", "tags": ["spam"]}', '{"text": "x"}',
                '{"order_id": 1, "text": "x", "url": "http://evil"}'):
        result = await plan.tools.dispatch("note", bad, ctx)
        assert result.error == "invalid_arguments", bad
    assert len(api.seen) == count        # refused before any request
    spec = plan.tools.get("note")
    assert spec is not None
    assert spec.parameters["additionalProperties"] is False
    assert spec.parameters["properties"]["tags"]["items"]["enum"] == ["urgent", "vip"]


async def test_timeout_text_and_size(tmp_path: Path, api: OrderApi) -> None:
    plan = plan_for(tmp_path, api, HOOKS)
    ctx = RecordingContext()
    result = await plan.tools.dispatch("slow", "", ctx)
    assert (result.ok, result.error) == (False, "timeout")
    assert result.duration_s < 5.0
    result = await plan.tools.dispatch("text", "", ctx)
    assert (result.ok, result.output) == (True, "open until six")
    result = await plan.tools.dispatch("big", "", ctx)
    assert result.error == "bad_response"


async def test_unreachable_service(tmp_path: Path, api: OrderApi) -> None:
    plan = plan_for(tmp_path, api, HOOKS, env={"API": "http://127.0.0.1:9"})
    result = await plan.tools.dispatch("text", "", RecordingContext())
    assert (result.ok, result.error) == (False, "http_error")


async def test_front_desk_order_status(api: OrderApi) -> None:
    plans = load_dialplans(PACKAGED_DIR, env={"ORDER_API_URL": api.url,
                                              "ORDERS_TOKEN": SECRET})
    desk = plans["front-desk"]
    ctx = RecordingContext()
    result = await desk.tools.dispatch("order_status", '{"order_id": "20250001"}', ctx)
    assert result.ok, result.output
    assert json.loads(result.output) == {"status": "shipped", "data.eta": "2025-03-05"}
    result = await desk.tools.dispatch("order_status", '{"order_id": "../../etc"}', ctx)
    assert result.error == "invalid_arguments"
    assert [s["raw_path"] for s in api.seen] == ["/orders/20250001"]
