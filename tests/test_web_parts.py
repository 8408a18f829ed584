"""The web app's parts on their own: its shape (blueprints over one typed state), the SSE
follower, the event reading, and the browser calls' runner, with a stand-in manager."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from bridge import metrics
from bridge.call.events import CallEvent, CallStarted, TranscriptAdded
from bridge.call.leg import LegInfo, Source
from bridge.config import load_settings
from bridge.errors import CallRejected
from bridge.web.app import create_app
from bridge.web.dashboard import EventFollower
from bridge.web.events import sse_message
from bridge.web.state import WebState, web_state
from bridge.web.webrtc_calls import WebRtcCalls
from bridge.webrtc.leg import WebRtcLeg
from tests.support.waiting import until


class StandInManager:
    """The part of ``CallManager`` the web app uses; ``handle`` runs until cancelled."""

    def __init__(self, *, reject: bool = False) -> None:
        self.calls: dict[str, Any] = {}
        self.listeners: list[Any] = []
        self.reject = reject
        self.store = SimpleNamespace()

    def can_admit(self) -> bool:
        return True

    async def handle(self, leg: Any) -> Any:
        if self.reject:
            raise CallRejected("busy")
        self.calls[f"c_{leg.info.call_id}"] = SimpleNamespace(leg=leg, record=None)
        await asyncio.Event().wait()

    def hang_up(self, call_id: str, reason: str = "operator") -> bool:
        return False

    def add_listener(self, listener: Any) -> None:
        self.listeners.append(listener)

    def remove_listener(self, listener: Any) -> None:
        self.listeners.remove(listener)

    def emit(self, event: CallEvent) -> None:
        for listener in list(self.listeners):
            listener(event)


class StubLeg(WebRtcLeg):
    """A ``WebRtcLeg`` without a peer connection: records what the runner does to it."""

    def __init__(self, call_id: str) -> None:     # no super().__init__: nothing to negotiate
        self.info = LegInfo(call_id=call_id, source=Source.WEBRTC)
        self.sent: list[dict[str, object]] = []
        self.closes = 0

    def send_event(self, event: Mapping[str, Any]) -> None:
        self.sent.append(dict(event))

    async def wait_media(self, timeout_s: float) -> bool:
        return True                               # its media is up at once

    async def close(self) -> None:
        self.closes += 1


def test_routes_live_in_blueprints_over_one_typed_state(tmp_path: Path) -> None:
    settings = load_settings(None, {"VOICEBRIDGE_RECORDS_PATH": str(tmp_path / "c.db")})
    manager = StandInManager()
    app = create_app(manager, settings)
    state = app.extensions["voicebridge"]
    assert isinstance(state, WebState)
    assert state.manager is manager and state.settings is settings
    assert manager.listeners == [state.webrtc._forward]
    rules = {rule.rule: rule.endpoint for rule in app.url_map.iter_rules()}
    assert set(app.blueprints) == {"health", "softphone", "dashboard", "calls", "recordings"}
    assert all("." in endpoint for rule, endpoint in rules.items()
               if not rule.startswith("/static")), rules
    assert {"/healthz", "/readyz", "/metrics", "/", "/webrtc/offer", "/webrtc/token",
            "/login", "/dashboard",
            "/calls", "/calls/events", "/calls/<call_id>", "/calls/<call_id>/timeline.svg",
            "/calls/<call_id>/hangup", "/calls/<call_id>/recording"} <= set(rules)


async def test_web_state_is_reached_from_the_app_context(tmp_path: Path) -> None:
    settings = load_settings(None, {"VOICEBRIDGE_RECORDS_PATH": str(tmp_path / "c.db")})
    app = create_app(StandInManager(), settings)
    async with app.app_context():
        assert web_state() is app.extensions["voicebridge"]
        app.extensions["voicebridge"] = {"webrtc": None}
        with pytest.raises(TypeError):
            web_state()


def test_an_sse_message_names_the_event_and_carries_its_json() -> None:
    event = CallStarted(call_id="c_1", at=1.5, source="sip", caller="+1", called="100",
                        dialplan="front")
    message = sse_message(event)
    head, data, end = message.decode().split("\n", 2)
    assert head == "event: call.started" and end == "\n"
    assert json.loads(data.removeprefix("data: ")) == {
        "type": "call.started", "call_id": "c_1", "at": 1.5, "source": "sip",
        "caller": "+1", "called": "100", "dialplan": "front"}
    assert sse_message(TranscriptAdded(call_id="c_1", role="agent", text="hi")).startswith(
        b"event: call.transcript\n")


async def test_a_slow_follower_loses_its_oldest_events_and_stops_listening() -> None:
    manager = StandInManager()
    clients = metrics.SSE_CLIENTS._value.get()
    follower = EventFollower(manager, size=2, keepalive_s=0.05)
    assert manager.listeners == [follower.offer]
    assert metrics.SSE_CLIENTS._value.get() == clients + 1
    for n in range(3):
        manager.emit(TranscriptAdded(call_id=f"c_{n}", role="caller", text=""))
    stream = follower.stream()
    assert await anext(stream) == b"retry: 2000\n\n"
    got = [json.loads((await anext(stream)).decode().split("data: ")[1]) for _ in range(2)]
    assert [e["call_id"] for e in got] == ["c_1", "c_2"]          # c_0 was dropped
    assert await asyncio.wait_for(anext(stream), 1) == b": keep-alive\n\n"
    await stream.aclose()
    assert manager.listeners == []
    assert metrics.SSE_CLIENTS._value.get() == clients


async def test_a_browser_gets_only_its_own_calls_events() -> None:
    manager = StandInManager()
    calls = WebRtcCalls(manager)
    mine, other = StubLeg("w1"), StubLeg("w2")
    calls.start(mine)
    await until(lambda: "c_w1" in manager.calls)
    manager.calls["c_w2"] = SimpleNamespace(leg=other, record=None)   # not started here
    manager.emit(TranscriptAdded(call_id="c_w1", role="agent", text="early"))
    for call_id in ("c_w1", "c_w2"):
        manager.emit(CallStarted(call_id=call_id, at=1.0, source="webrtc", caller="", called="",
                                 dialplan="d"))
        manager.emit(TranscriptAdded(call_id=call_id, at=2.0, role="agent", text="hi"))
    assert [(e["type"], e["call_id"]) for e in mine.sent] == [
        ("call.started", "c_w1"), ("call.transcript", "c_w1")]
    assert mine.sent[1]["text"] == "hi"
    assert other.sent == []
    await calls.close()
    assert mine.closes == 1 and not calls.tasks and manager.listeners == []


async def test_a_rejected_browser_call_is_told_and_its_leg_closed() -> None:
    manager = StandInManager(reject=True)
    calls = WebRtcCalls(manager)
    leg = StubLeg("w1")
    calls.start(leg)
    await until(lambda: not calls.tasks)
    assert leg.sent == [{"type": "call.ended", "reason": "rejected"}]
    assert leg.closes == 1
    await calls.close()


async def test_closing_cancels_every_running_browser_call() -> None:
    manager = StandInManager()
    calls = WebRtcCalls(manager)
    legs = [StubLeg(f"w{n}") for n in range(3)]
    for leg in legs:
        calls.start(leg)
    await until(lambda: len(manager.calls) == 3)
    tasks = list(calls.tasks)
    await asyncio.wait_for(calls.close(), 2)
    assert all(t.cancelled() for t in tasks) and not calls.tasks
    assert [leg.closes for leg in legs] == [1, 1, 1]

