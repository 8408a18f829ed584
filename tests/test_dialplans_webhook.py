"""Webhook tools against a real HTTP server on loopback (aiohttp, port 0)."""

from __future__ import annotations

import json
import logging
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bridge.dialplans import Dialplan, load_dialplan_file, load_dialplans
from bridge.dialplans.loader import PACKAGED_DIR
from tests.support.order_api import SECRET, OrderApi, running_order_api
from tests.support.tool_context import RecordingContext


@pytest.fixture
async def api() -> AsyncIterator[OrderApi]:
    async with running_order_api() as server:
        yield server


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
