"""The one place the web app reads call events.

The manager hands its listeners each call event as a JSON-ready dict
(``{"type": "call.started", "call_id": ..., ...}``). The web app does three things with
one: learns which call it belongs to, asks whether it starts a call (to find a browser's
leg), and writes it out, unchanged, on the dashboard's Server-Sent Events and a browser's
``events`` data channel. Those three readings are here and nowhere else, so a change of
event type touches only this module.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

#: A call event as the manager hands it to listeners (``type``, ``call_id``, fields).
WebEvent = dict[str, Any]

#: What ``CallManager.add_listener`` takes.
EventListener = Callable[[WebEvent], None]


def call_id_of(event: WebEvent) -> str:
    """The call the event belongs to ("" when it names none)."""
    return str(event.get("call_id", ""))


def starts_a_call(event: WebEvent) -> bool:
    return event.get("type") == "call.started"


def wire_form(event: WebEvent) -> Mapping[str, object]:
    """The event's JSON object, as a browser's ``events`` channel and SSE carry it."""
    return event


def sse_message(event: WebEvent) -> bytes:
    """One Server-Sent Events message: ``event: <type>`` and the JSON on one ``data:`` line."""
    data = json.dumps(wire_form(event), separators=(",", ":"), default=str)
    return f"event: {event.get('type', 'message')}\ndata: {data}\n\n".encode()


__all__ = ["EventListener", "WebEvent", "call_id_of", "sse_message", "starts_a_call",
           "wire_form"]
