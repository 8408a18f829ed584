"""The one place the web app reads call events.

The manager hands its listeners each call's typed event (``bridge.call.events``). The
web app does three things with one: learns which call it belongs to, asks whether it
starts a call (to find a browser's leg), and writes it out on the dashboard's Server-Sent
Events and a browser's ``events`` data channel, in the event's one wire form.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping

from bridge.call.events import CallEvent, CallStarted

#: A call event as the manager hands it to listeners.
WebEvent = CallEvent

#: What ``CallManager.add_listener`` takes.
EventListener = Callable[[CallEvent], None]


def call_id_of(event: CallEvent) -> str:
    """The call the event belongs to."""
    return event.call_id


def starts_a_call(event: CallEvent) -> bool:
    return isinstance(event, CallStarted)


def wire_form(event: CallEvent) -> Mapping[str, object]:
    """The event's JSON object, as a browser's ``events`` channel and SSE carry it."""
    return event.to_json()


def sse_message(event: CallEvent) -> bytes:
    """One Server-Sent Events message: ``event: <kind>`` and the JSON on one ``data:`` line."""
    data = json.dumps(wire_form(event), separators=(",", ":"), default=str)
    return f"event: {event.kind}\ndata: {data}\n\n".encode()


__all__ = ["EventListener", "WebEvent", "call_id_of", "sse_message", "starts_a_call",
           "wire_form"]
