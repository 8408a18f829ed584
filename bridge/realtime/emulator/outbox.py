"""What one emulated session sends: ids, server events in the client's dialect, errors.

Theory of operation
-------------------
Every part of a session (the input audio buffer, the conversation, the response
generator, the session core) writes through one :class:`Outbox`. It numbers ids and
timers from one counter (``prefix_<tag><n>``, the shape the real service's ids have),
stamps each server event with an ``event_id``, translates it to the preview dialect when
the session speaks that (``dialect.py``; an event with no preview form is dropped) and
queues it as JSON text. The session's current GA configuration lives here too, because
the translation needs it; the session core replaces it on ``session.update``.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bridge.realtime.emulator.dialect import to_preview_event, to_preview_session
from bridge.realtime.emulator.record import SessionRecord

__all__ = ["DUMPS", "Close", "Outbox", "elide"]

#: Compact JSON, as the service sends it.
DUMPS = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


@dataclass(frozen=True)
class Close:
    """Close the socket with ``code`` (1006: drop the TCP connection, no close frame)."""

    code: int
    reason: str = ""


def elide(event: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of a client event without audio payloads (kept in the record)."""
    out = dict(event)
    item = out.get("item")
    if isinstance(item, dict) and isinstance(item.get("content"), list):
        out["item"] = {**item, "content": [
            {**p, "audio": f"<{len(p['audio'])} base64 chars>"}
            if isinstance(p, dict) and isinstance(p.get("audio"), str) else p
            for p in item["content"]]}
    return out


class Outbox:
    """The frames a session has to send, and the ids it hands out (module docstring)."""

    def __init__(self, record: SessionRecord, *, preview: bool) -> None:
        self.record = record
        self.preview = preview
        #: the session configuration, GA shape (set by the session core once it has an id)
        self.session: dict[str, Any] = {}
        #: preview-only settings kept beside it (``dialect.apply_update``)
        self.extras: dict[str, Any] = {}
        self._tag = secrets.token_hex(4)
        self._n = 0
        self._out: list[str | Close] = []

    def seq(self) -> int:
        """The next number of the counter ids and timers share."""
        self._n += 1
        return self._n

    def new_id(self, prefix: str) -> str:
        return f"{prefix}_{self._tag}{self.seq():05d}"

    def emit(self, event: dict[str, Any]) -> None:
        event["event_id"] = self.new_id("event")
        if self.preview:
            converted = to_preview_event(event, self.session, self.extras)
            if converted is None:
                return
            event = converted
        self._out.append(DUMPS(event))

    def append_raw(self, event: dict[str, Any]) -> None:
        """Send ``event`` as it is, in either dialect (no translation)."""
        event["event_id"] = self.new_id("event")
        self._out.append(DUMPS(event))

    def error(self, code: str, message: str, *, param: str | None = None,
              event_id: str | None = None, kind: str = "invalid_request_error") -> None:
        """Send an ``error`` event (and note it in the record)."""
        self.record.errors.append((code, event_id))
        self.emit({"type": "error", "error": {"type": kind, "code": code, "message": message,
                                              "param": param, "event_id": event_id}})

    def close(self, code: int, reason: str) -> None:
        self._out.append(Close(code, reason))

    def session_view(self) -> dict[str, Any]:
        """The session as the client's dialect shows it."""
        if self.preview:
            return to_preview_session(self.session, self.extras)
        return self.session

    def take(self) -> list[str | Close]:
        out = self._out
        self._out = []
        return out

    @property
    def has_output(self) -> bool:
        return bool(self._out)
