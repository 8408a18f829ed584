"""The tool registry: schemas from type hints, validation, failures as error outputs."""

from __future__ import annotations

import asyncio
import json
import re
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo

import jsonschema
import pytest
from pydantic import Field

from bridge.dialplans import (
    ToolContext,
    ToolFailed,
    ToolRegistry,
    load_dialplans,
    tool_from_function,
)
from bridge.dialplans.builtin import hang_up_tool, send_dtmf_tool, transfer_tool
from bridge.dialplans.loader import PACKAGED_DIR
from tests.support.tool_context import RecordingContext


async def lookup(
    order_id: str,
    when: Annotated[int, Field(ge=0, description="Days ago.")],
    kind: Literal["parcel", "letter"] = "parcel",
    tags: list[str] | None = None,
    title: str = "",
) -> dict[str, Any]:
    """Look an order up.

    Second paragraph of the summary.

    Args:
        order_id: The order number
            as the caller says it.
        when: Ignored: the Field description wins.
    """
    return {"order_id": order_id, "when": when, "kind": kind, "tags": tags, "title": title}


def walk(schema: Any) -> list[dict[str, Any]]:
    """Every schema object inside ``schema`` (not the property-name maps)."""
    found = []
    if isinstance(schema, dict):
        found.append(schema)
        for key, value in schema.items():
            if key in ("properties", "$defs"):
                for sub in value.values():
                    found += walk(sub)
            else:
                found += walk(value)
    elif isinstance(schema, list):
        for item in schema:
            found += walk(item)
    return found


def test_schema_from_type_hints() -> None:
    tool = tool_from_function(lookup)
    schema = tool.parameters
    assert tool.name == "lookup"
    assert tool.description == "Look an order up.\n\nSecond paragraph of the summary."
    assert schema["type"] == "object"
    assert schema["additionalProperties"] is False
    assert schema["required"] == ["order_id", "when"]
    props = schema["properties"]
    assert list(props) == ["order_id", "when", "kind", "tags", "title"]
    assert props["order_id"]["type"] == "string"
    assert props["order_id"]["description"] == "The order number as the caller says it."
    assert props["when"] == {"type": "integer", "minimum": 0, "description": "Days ago."}
    assert props["kind"]["enum"] == ["parcel", "letter"]
    assert props["kind"]["default"] == "parcel"
    assert {"type": "array", "items": {"type": "string"}} in props["tags"]["anyOf"]
    # pydantic's "title" keywords are dropped; a property named "title" is kept.
    assert all("title" not in sub for sub in walk(schema) if sub is not props)
    assert "title" in props
    jsonschema.Draft202012Validator.check_schema(schema)


def test_context_parameter_is_hidden_and_passed() -> None:
    async def who(ctx: ToolContext, greeting: str = "hi") -> str:
        """Who is calling."""
        return f"{greeting} {ctx.caller}"

    tool = tool_from_function(who)
    assert list(tool.parameters["properties"]) == ["greeting"]

    async def run() -> str:
        result = await ToolRegistry([tool]).dispatch("who", "{}", RecordingContext())
        assert result.ok
        return result.output

    assert asyncio.run(run()) == "hi +15557654321"


def test_functions_that_cannot_be_tools() -> None:
    def sync(x: int) -> int:
        return x

    async def untyped(x):  # type: ignore[no-untyped-def]
        return x

    async def star(*args: int) -> int:
        return 0

    with pytest.raises(TypeError, match="not an async function"):
        tool_from_function(sync)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="no type hint"):
        tool_from_function(untyped)
    with pytest.raises(TypeError, match="plain keyword"):
        tool_from_function(star)
    with pytest.raises(ValueError, match="bind names no parameter"):
        tool_from_function(lookup, bind={"nope": 1})
    registry = ToolRegistry([tool_from_function(lookup)])
    with pytest.raises(ValueError, match="already registered"):
        registry.register(lookup)


@pytest.fixture
def registry() -> ToolRegistry:
    reg = ToolRegistry()
    reg.register(lookup)
    return reg


async def test_valid_call_returns_json(registry: ToolRegistry) -> None:
    result = await registry.dispatch(
        "lookup", '{"order_id": 12345, "when": 2, "tags": ["a"]}', RecordingContext())
    assert result.ok and result.error is None
    # A number where a string is declared is accepted as its digits (order numbers).
    assert json.loads(result.output) == {"order_id": "12345", "when": 2, "kind": "parcel",
                                         "tags": ["a"], "title": ""}


@pytest.mark.parametrize(("arguments", "kind", "words"), [
    ('{"order_id": "1"}', "invalid_arguments", "when: Field required"),
    ('{"order_id": "1", "when": -1}', "invalid_arguments", "greater than or equal to 0"),
    ('{"order_id": "1", "when": "soon"}', "invalid_arguments", "when: Input should be"),
    ('{"order_id": "1", "when": 1, "kind": "box"}', "invalid_arguments", "kind:"),
    ('{"order_id": "1", "when": 1, "admin": true}', "invalid_arguments",
     "admin: Extra inputs are not permitted"),
    ('{"order_id": "1", "when": 1', "invalid_json", "not valid JSON"),
    ('["order_id"]', "invalid_json", "must be a JSON object"),
    ("null", "invalid_json", "must be a JSON object"),
    ("[" * 100_000, "invalid_json", "longer than"),
    ("", "invalid_arguments", "order_id: Field required"),
])
async def test_bad_arguments_become_error_outputs(
        registry: ToolRegistry, arguments: str, kind: str, words: str) -> None:
    result = await registry.dispatch("lookup", arguments, RecordingContext())
    assert not result.ok
    assert result.error == kind
    error = json.loads(result.output)["error"]
    assert error["type"] == kind
    assert words in error["message"]


async def test_unknown_tool(registry: ToolRegistry) -> None:
    result = await registry.dispatch("format_disk", "{}", RecordingContext())
    assert (result.ok, result.error) == (False, "unknown_tool")
    assert "available: lookup" in json.loads(result.output)["error"]["message"]


async def test_raising_tool_answers_the_model(registry: ToolRegistry) -> None:
    async def broken(x: int) -> int:
        raise RuntimeError("db password is hunter2")

    async def refusing(x: int) -> int:
        raise ToolFailed("no such order", kind="not_found", order=x)

    registry.register(broken)
    registry.register(refusing)
    result = await registry.dispatch("broken", '{"x": 1}', RecordingContext())
    assert (result.ok, result.error) == (False, "tool_error")
    assert "RuntimeError" in result.output
    assert "hunter2" not in result.output      # exception text stays in the log
    result = await registry.dispatch("refusing", '{"x": 7}', RecordingContext())
    assert json.loads(result.output) == {
        "error": {"type": "not_found", "message": "no such order", "order": 7}}


async def test_slow_tool_times_out(registry: ToolRegistry) -> None:
    never = asyncio.Event()

    async def slow() -> str:
        await never.wait()
        return "late"

    registry.register(slow, timeout_s=0.05)
    result = await registry.dispatch("slow", "{}", RecordingContext())
    assert (result.ok, result.error) == (False, "timeout")
    assert "0.05 s" in json.loads(result.output)["error"]["message"]
    assert result.duration_s < 5.0             # bounded by the timeout, not by the tool


async def test_inner_timeout_error_is_not_our_timeout(registry: ToolRegistry) -> None:
    async def inner() -> str:
        raise TimeoutError

    registry.register(inner, timeout_s=30)
    result = await registry.dispatch("inner", "{}", RecordingContext())
    assert result.error == "tool_error"


async def test_cancellation_propagates(registry: ToolRegistry) -> None:
    started = asyncio.Event()

    async def hang() -> str:
        started.set()
        await asyncio.Event().wait()
        return ""

    registry.register(hang, timeout_s=60)
    task = asyncio.create_task(registry.dispatch("hang", "{}", RecordingContext()))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_long_output_is_truncated(registry: ToolRegistry) -> None:
    async def chatty() -> str:
        return "x" * 100_000

    registry.register(chatty)
    result = await registry.dispatch("chatty", "{}", RecordingContext())
    assert result.ok and len(result.output) < 9000 and result.output.endswith("[truncated]")


# -- built-in telephony tools ---------------------------------------------------------------

TARGETS = {"sales": "sip:sales@pbx.example.com", "operator": "sip:op@pbx.example.com"}


@pytest.fixture
def phone() -> ToolRegistry:
    return ToolRegistry([transfer_tool(TARGETS, {"sales": "new orders"}), hang_up_tool(),
                         send_dtmf_tool()])


def test_transfer_schema_is_an_enum_of_names(phone: ToolRegistry) -> None:
    spec = {s.name: s for s in phone.specs()}["transfer_call"]
    target = spec.parameters["properties"]["target"]
    assert target["enum"] == ["sales", "operator"]
    assert "sales: new orders" in target["description"]
    assert "sip:" not in json.dumps(spec.parameters)
    assert spec.parameters["required"] == ["target"]


@pytest.mark.parametrize("arguments", [
    '{"target": "premium"}',                          # a name the dialplan does not have
    '{"target": "+15551234567"}',                     # a number the caller dictated
    '{"target": "sip:attacker@evil.example"}',
    '{"target": "sales", "number": "+15551234567"}',  # smuggled in a second argument
    '{"target": ["sales"]}',
    '{}',
])
async def test_transfer_injection_is_refused(phone: ToolRegistry, arguments: str) -> None:
    ctx = RecordingContext()
    result = await phone.dispatch("transfer_call", arguments, ctx)
    assert not result.ok
    assert result.error == "invalid_arguments"
    assert json.loads(result.output)["error"]["type"] == "invalid_arguments"
    assert ctx.transfers == []


async def test_transfer_handler_checks_again(phone: ToolRegistry) -> None:
    tool = phone.get("transfer_call")
    assert tool is not None
    ctx = RecordingContext()
    with pytest.raises(ToolFailed) as info:
        await tool.handler({"target": "+15551234567"}, ctx)
    assert info.value.kind == "refused"
    assert ctx.transfers == []


async def test_transfer_to_a_named_target(phone: ToolRegistry) -> None:
    ctx = RecordingContext()
    result = await phone.dispatch("transfer_call", '{"target": "sales"}', ctx)
    assert result.ok and json.loads(result.output) == {"transferred": True, "target": "sales"}
    assert ctx.transfers == ["sales"]                 # the name; the call resolves the URI
    ctx = RecordingContext(transfer_ok=False)
    result = await phone.dispatch("transfer_call", '{"target": "operator"}', ctx)
    assert json.loads(result.output)["error"] == {
        "type": "transfer_failed", "message": "the transfer to operator failed", "status": 603}


async def test_hang_up_and_dtmf(phone: ToolRegistry) -> None:
    ctx = RecordingContext()
    assert (await phone.dispatch("hang_up", "", ctx)).ok
    assert (await phone.dispatch("hang_up", '{"reason": "caller done"}', ctx)).ok
    assert ctx.hangups == ["conversation finished", "caller done"]
    assert (await phone.dispatch("send_dtmf", '{"digits": "12*#A"}', ctx)).ok
    for bad in ("12x", "1" * 33, "", "1 2"):
        result = await phone.dispatch("send_dtmf", json.dumps({"digits": bad}), ctx)
        assert result.error == "invalid_arguments", bad
    assert ctx.dtmf == ["12*#A"]


# -- the front desk's Python tool ------------------------------------------------------------

def frontdesk_module() -> Any:
    import importlib.util  # noqa: PLC0415

    spec = importlib.util.spec_from_file_location(
        "frontdesk_tools_under_test", PACKAGED_DIR / "frontdesk_tools.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(("when", "expected"), [
    ("2025-03-04 08:29", False),   # Tuesday, before opening
    ("2025-03-04 08:30", True),
    ("2025-03-04 17:59", True),
    ("2025-03-04 18:00", False),
    ("2025-03-08 12:00", True),    # Saturday morning
    ("2025-03-08 13:30", False),
    ("2025-03-09 10:00", False),   # Sunday
])
def test_opening_hours_rule(when: str, expected: bool) -> None:
    module = frontdesk_module()
    now = datetime.fromisoformat(when).replace(tzinfo=ZoneInfo("America/New_York"))
    assert module.is_open(now, "Mon-Fri 08:30-18:00; Sat 09:00-13:00") is expected
    with pytest.raises(ValueError, match="opening hours rule"):
        module.parse_hours("Weekdays 9-5")


async def test_opening_hours_tool_through_the_dialplan() -> None:
    desk = load_dialplans(Path(PACKAGED_DIR), env={})["front-desk"]
    result = await desk.tools.dispatch("opening_hours", "{}", RecordingContext())
    assert result.ok, result.output
    out = json.loads(result.output)
    assert isinstance(out["open_now"], bool)
    assert out["timezone"] == "America/New_York"
    # The model cannot override the bound configuration.
    result = await desk.tools.dispatch("opening_hours", '{"timezone": "UTC"}',
                                       RecordingContext())
    assert result.error == "invalid_arguments"


# -- fuzz: whatever the model sends, dispatch answers and never transfers off-plan ----------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)
ARGUMENTS = st.one_of(
    st.text(max_size=200),
    JSON.map(json.dumps),
    st.dictionaries(st.sampled_from(["target", "digits", "reason", "number"]),
                    JSON | st.sampled_from(["sales", "+15551234567", "operator "]),
                    max_size=3).map(json.dumps),
)


FUZZ_PHONE = ToolRegistry([transfer_tool(TARGETS, {}), hang_up_tool(), send_dtmf_tool()])


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(["transfer_call", "send_dtmf", "hang_up", "nope"]),
       arguments=ARGUMENTS)
def test_dispatch_fuzz(name: str, arguments: str) -> None:
    ctx = RecordingContext()
    result = asyncio.run(FUZZ_PHONE.dispatch(name, arguments, ctx))
    out = json.loads(result.output)
    assert result.ok == ("error" not in out)
    assert set(ctx.transfers) <= set(TARGETS)
    assert all(re.fullmatch(r"[0-9*#A-D]{1,32}", d) for d in ctx.dtmf)
