"""Wire dialects <-> the internal event vocabulary (sans-I/O).

Theory of operation
-------------------
:class:`EventMapper` takes one WebSocket text message at a time (``feed``) and returns the
internal events (``bridge.realtime.events``) it means. It reads no clock and owns no
socket. Dispatch is a table from wire ``type`` to a small parser; a type that is not in the
table is ignored (the service adds event types over time), and so is every field a parser
does not read (e.g. ``obfuscation``). A message that is not JSON, not an object, or lacks a
field its parser needs is logged by type and size only -- never its payload, which may carry
audio or caller speech -- and skipped.

The two dialects (docs/realtime-protocol.md §2) differ in event names and in one
behaviour: preview's ``response.function_call_arguments.done`` has no ``name``, so the
mapper remembers the name (and call id) of every ``function_call`` item from
``response.output_item.added``.
A function call is surfaced once, when its item is done with status ``completed``
(``response.output_item.done``), and never for a response that ended cancelled or that
the caller of :meth:`EventMapper.cancelled` marked as being cancelled.

The client-event builders at the bottom produce the dialect's shape of the few events
that differ (conversation items); everything else is the same in both dialects.
"""

from __future__ import annotations

import binascii
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bridge.errors import MalformedEvent
from bridge.realtime import events as ev
from bridge.realtime.outofband import OutOfBandTracker

DIALECTS = ("ga", "preview")

log = logging.getLogger("bridge.realtime.dialects")

Parser = Callable[["EventMapper", dict[str, Any]], list[ev.Event]]


class _Malformed(MalformedEvent):
    """A known event lacks a field its parser needs (or has the wrong type)."""


def _str(d: dict[str, Any], key: str) -> str:
    value = d.get(key)
    if not isinstance(value, str):
        raise _Malformed(key)
    return value


def _opt_str(d: dict[str, Any], key: str) -> str | None:
    value = d.get(key)
    return value if isinstance(value, str) else None


def _int(d: dict[str, Any], key: str) -> int:
    value = d.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _Malformed(key)
    return int(value)


def _obj(d: dict[str, Any], key: str) -> dict[str, Any]:
    value = d.get(key)
    if not isinstance(value, dict):
        raise _Malformed(key)
    return value


def _opt_obj(d: dict[str, Any], key: str) -> dict[str, Any] | None:
    value = d.get(key)
    return value if isinstance(value, dict) else None


@dataclass
class _CallItem:
    """What is known of one function_call item while it streams."""

    response_id: str
    name: str | None = None
    call_id: str | None = None
    arguments: str | None = None


@dataclass
class MapperStats:
    ignored: int = 0
    malformed: int = 0
    by_type: dict[str, int] = field(default_factory=dict)


class EventMapper:
    """One session's wire -> internal mapping state. Make a new one per socket."""

    def __init__(self, dialect: str) -> None:
        if dialect not in DIALECTS:
            raise ValueError(f"unknown Realtime dialect {dialect!r}")
        self.dialect = dialect
        self._table = _TABLES[dialect]
        self.session_id: str | None = None
        self.expires_at: float | None = None
        self._calls: dict[str, _CallItem] = {}
        self._cancelled: set[str] = set()
        self.stats = MapperStats()
        #: the bridge's out-of-band responses, kept out of the ordinary stream
        self.oob = OutOfBandTracker()

    # -- input ------------------------------------------------------------------------

    def feed(self, message: str | bytes) -> list[ev.Event]:
        """Map one WebSocket message to internal events (possibly none)."""
        if isinstance(message, bytes):
            # The protocol is JSON text frames only; a binary frame is not ours to parse.
            self.stats.malformed += 1
            log.warning("ignored a binary frame from upstream (%d bytes)", len(message))
            return []
        try:
            data = json.loads(message)
        except ValueError:
            self.stats.malformed += 1
            log.warning("malformed JSON from upstream skipped (%d chars)", len(message))
            return []
        if not isinstance(data, dict) or not isinstance(data.get("type"), str):
            self.stats.malformed += 1
            log.warning("upstream message without a type skipped (%d chars)", len(message))
            return []
        return self.feed_event(data)

    def feed_event(self, data: dict[str, Any]) -> list[ev.Event]:
        """Map one already-decoded server event."""
        etype: str = data["type"]
        if self.oob.active and data.get("response_id") in self.oob.active:
            return self.oob.feed(data)
        parser = self._table.get(etype)
        if parser is None:
            self.stats.ignored += 1
            log.debug("ignored upstream event %s", etype)
            return []
        try:
            return parser(self, data)
        except _Malformed as exc:
            self.stats.malformed += 1
            log.warning("malformed %s event skipped (field %s)", etype, exc)
            return []

    def cancelled(self, response_id: str) -> None:
        """The client knows ``response_id`` is being cancelled: surface no function call
        from it (docs/realtime-protocol.md §4: never run a tool from a cancelled response)."""
        self._cancelled.add(response_id)
        for item_id in [k for k, v in self._calls.items() if v.response_id == response_id]:
            del self._calls[item_id]

    # -- parsers ----------------------------------------------------------------------

    def _session_created(self, d: dict[str, Any]) -> list[ev.Event]:
        session = _obj(d, "session")
        self.session_id = _opt_str(session, "id") or self.session_id or ""
        expires = session.get("expires_at")
        if isinstance(expires, int | float) and not isinstance(expires, bool) and expires > 0:
            self.expires_at = float(expires)
        return [ev.SessionCreated(self.session_id, self.expires_at)]

    def _session_updated(self, d: dict[str, Any]) -> list[ev.Event]:
        session = _obj(d, "session")
        sid = _opt_str(session, "id")
        if sid:
            self.session_id = sid
        expires = session.get("expires_at")
        if isinstance(expires, int | float) and not isinstance(expires, bool) and expires > 0:
            self.expires_at = float(expires)
        return [ev.SessionReady(self.session_id or "", self.expires_at)]

    def _speech_started(self, d: dict[str, Any]) -> list[ev.Event]:
        return [ev.SpeechStarted(_str(d, "item_id"), _int(d, "audio_start_ms"))]

    def _speech_stopped(self, d: dict[str, Any]) -> list[ev.Event]:
        return [ev.SpeechStopped(_str(d, "item_id"), _int(d, "audio_end_ms"))]

    def _committed(self, d: dict[str, Any]) -> list[ev.Event]:
        return [ev.InputCommitted(_str(d, "item_id"))]

    def _timeout(self, d: dict[str, Any]) -> list[ev.Event]:
        return [ev.InputTimeout(_str(d, "item_id"), _int(d, "audio_start_ms"),
                                _int(d, "audio_end_ms"))]

    def _response_created(self, d: dict[str, Any]) -> list[ev.Event]:
        response = _obj(d, "response")
        return self.oob.started(response) or [ev.ResponseCreated(_str(response, "id"))]

    def _response_done(self, d: dict[str, Any]) -> list[ev.Event]:
        response = _obj(d, "response")
        ours = self.oob.done(response)
        if ours is not None:
            return ours
        rid = _str(response, "id")
        status = _opt_str(response, "status") or "completed"
        details = _opt_obj(response, "status_details") or {}
        # Items of this response that never completed are gone for good.
        for item_id in [k for k, v in self._calls.items() if v.response_id == rid]:
            del self._calls[item_id]
        self._cancelled.discard(rid)
        return [ev.ResponseDone(rid, status, _opt_str(details, "reason"),
                                _opt_obj(response, "usage"), _opt_obj(details, "error"))]

    def _item_added(self, d: dict[str, Any]) -> list[ev.Event]:
        rid = _str(d, "response_id")
        item = _obj(d, "item")
        item_id = _str(item, "id")
        item_type = _str(item, "type")
        name = _opt_str(item, "name")
        call_id = _opt_str(item, "call_id")
        if item_type == "function_call" and rid not in self._cancelled:
            self._calls[item_id] = _CallItem(rid, name, call_id)
        return [ev.OutputItemAdded(rid, item_id, item_type, name, call_id)]

    def _item_done(self, d: dict[str, Any]) -> list[ev.Event]:
        rid = _str(d, "response_id")
        item = _obj(d, "item")
        if item.get("type") != "function_call":
            return []
        item_id = _str(item, "id")
        known = self._calls.pop(item_id, None)
        if rid in self._cancelled or item.get("status") != "completed":
            return []
        name = _opt_str(item, "name") or (known.name if known else None)
        call_id = _opt_str(item, "call_id") or (known.call_id if known else None)
        arguments = _opt_str(item, "arguments")
        if arguments is None and known is not None:
            arguments = known.arguments
        if name is None or call_id is None:
            raise _Malformed("item.name/call_id")
        return [ev.FunctionCall(rid, item_id, call_id, name, arguments or "")]

    def _arguments_done(self, d: dict[str, Any]) -> list[ev.Event]:
        item_id = _str(d, "item_id")
        known = self._calls.get(item_id)
        if known is None:
            # Arguments of an item we never saw added (or of a cancelled response).
            return []
        known.arguments = _str(d, "arguments")
        known.name = _opt_str(d, "name") or known.name
        known.call_id = _opt_str(d, "call_id") or known.call_id
        return []

    def _audio_delta(self, d: dict[str, Any]) -> list[ev.Event]:
        try:
            # strict_mode validates in C; b64decode(validate=True) runs a regex over the
            # whole payload first and costs ~1.5x as much per delta.
            audio = binascii.a2b_base64(_str(d, "delta"), strict_mode=True)
        except binascii.Error:
            raise _Malformed("delta (base64)") from None
        return [ev.AudioDelta(_str(d, "response_id"), _str(d, "item_id"), audio)]

    def _audio_done(self, d: dict[str, Any]) -> list[ev.Event]:
        return [ev.AudioDone(_str(d, "response_id"), _str(d, "item_id"))]

    def _transcript_delta(self, d: dict[str, Any]) -> list[ev.Event]:
        return [ev.TranscriptDelta(_str(d, "response_id"), _str(d, "item_id"),
                                   _str(d, "delta"))]

    def _transcript_done(self, d: dict[str, Any]) -> list[ev.Event]:
        return [ev.TranscriptDone(_str(d, "response_id"), _str(d, "item_id"),
                                  _str(d, "transcript"))]

    def _text_done(self, d: dict[str, Any]) -> list[ev.Event]:
        return [ev.TranscriptDone(_str(d, "response_id"), _str(d, "item_id"), _str(d, "text"))]

    def _user_transcript(self, d: dict[str, Any]) -> list[ev.Event]:
        return [ev.UserTranscript(_str(d, "item_id"), _str(d, "transcript"))]

    def _user_transcript_delta(self, d: dict[str, Any]) -> list[ev.Event]:
        return [ev.UserTranscriptDelta(_str(d, "item_id"), _str(d, "delta"))]

    def _rate_limits(self, d: dict[str, Any]) -> list[ev.Event]:
        limits = d.get("rate_limits")
        if not isinstance(limits, list):
            raise _Malformed("rate_limits")
        out: list[ev.RateLimit] = []
        for entry in limits:
            if not isinstance(entry, dict):
                raise _Malformed("rate_limits[]")
            reset = entry.get("reset_seconds", 0.0)
            if not isinstance(reset, int | float) or isinstance(reset, bool):
                raise _Malformed("rate_limits[].reset_seconds")
            out.append(ev.RateLimit(_str(entry, "name"), _int(entry, "limit"),
                                    _int(entry, "remaining"), float(reset)))
        return [ev.RateLimits(tuple(out))]

    def _user_transcript_failed(self, d: dict[str, Any]) -> list[ev.Event]:
        error = _opt_obj(d, "error") or {}
        text = _opt_str(error, "code") or _opt_str(error, "message") or "transcription failed"
        return [ev.UserTranscriptFailed(_str(d, "item_id"), text)]

    def _error(self, d: dict[str, Any]) -> list[ev.Event]:
        error = _obj(d, "error")
        return [ev.ServerError(_opt_str(error, "code"), _opt_str(error, "message") or "",
                               _opt_str(error, "event_id"))]


_COMMON: dict[str, Parser] = {
    "session.created": EventMapper._session_created,
    "session.updated": EventMapper._session_updated,
    "input_audio_buffer.speech_started": EventMapper._speech_started,
    "input_audio_buffer.speech_stopped": EventMapper._speech_stopped,
    "input_audio_buffer.committed": EventMapper._committed,
    "input_audio_buffer.timeout_triggered": EventMapper._timeout,
    "response.created": EventMapper._response_created,
    "response.done": EventMapper._response_done,
    "response.output_item.added": EventMapper._item_added,
    "response.output_item.done": EventMapper._item_done,
    "response.function_call_arguments.done": EventMapper._arguments_done,
    "conversation.item.input_audio_transcription.completed": EventMapper._user_transcript,
    "conversation.item.input_audio_transcription.failed": EventMapper._user_transcript_failed,
    "conversation.item.input_audio_transcription.delta": EventMapper._user_transcript_delta,
    "rate_limits.updated": EventMapper._rate_limits,
    "error": EventMapper._error,
}

_GA_NAMES: dict[str, Parser] = {
    "response.output_audio.delta": EventMapper._audio_delta,
    "response.output_audio.done": EventMapper._audio_done,
    "response.output_audio_transcript.delta": EventMapper._transcript_delta,
    "response.output_audio_transcript.done": EventMapper._transcript_done,
    "response.output_text.delta": EventMapper._transcript_delta,
    "response.output_text.done": EventMapper._text_done,
}

_PREVIEW_NAMES: dict[str, Parser] = {
    "response.audio.delta": EventMapper._audio_delta,
    "response.audio.done": EventMapper._audio_done,
    "response.audio_transcript.delta": EventMapper._transcript_delta,
    "response.audio_transcript.done": EventMapper._transcript_done,
    "response.text.delta": EventMapper._transcript_delta,
    "response.text.done": EventMapper._text_done,
}

# The preview dialect also accepts the GA names: which names an Azure preview deployment
# sends after the GA rename is unverified, and accepting both costs nothing.
_TABLES: dict[str, dict[str, Parser]] = {
    "ga": {**_COMMON, **_GA_NAMES},
    "preview": {**_COMMON, **_GA_NAMES, **_PREVIEW_NAMES},
}


# -- client events whose shape differs by dialect ---------------------------------------

_ASSISTANT_TEXT = {"ga": "output_text", "preview": "text"}


def user_text_item(text: str, dialect: str) -> dict[str, Any]:
    """``conversation.item.create`` of a user text message (same in both dialects)."""
    del dialect
    return {"type": "conversation.item.create",
            "item": {"type": "message", "role": "user",
                     "content": [{"type": "input_text", "text": text}]}}


def assistant_text_item(text: str, dialect: str) -> dict[str, Any]:
    """``conversation.item.create`` of an assistant text message (re-seeding history)."""
    return {"type": "conversation.item.create",
            "item": {"type": "message", "role": "assistant",
                     "content": [{"type": _ASSISTANT_TEXT[dialect], "text": text}]}}


def function_call_item(call_id: str, name: str, arguments: str) -> dict[str, Any]:
    """``conversation.item.create`` of a function call made on an earlier session."""
    return {"type": "conversation.item.create",
            "item": {"type": "function_call", "call_id": call_id, "name": name,
                     "arguments": arguments}}


def function_output_item(call_id: str, output: str) -> dict[str, Any]:
    return {"type": "conversation.item.create",
            "item": {"type": "function_call_output", "call_id": call_id, "output": output}}


def truncate_event(item_id: str, audio_end_ms: int) -> dict[str, Any]:
    return {"type": "conversation.item.truncate", "item_id": item_id, "content_index": 0,
            "audio_end_ms": audio_end_ms}


def response_create(instructions: str | None) -> dict[str, Any]:
    event: dict[str, Any] = {"type": "response.create"}
    if instructions is not None:
        event["response"] = {"instructions": instructions}
    return event


def response_cancel() -> dict[str, Any]:
    return {"type": "response.cancel"}


#: The fixed prefix of every ``input_audio_buffer.append`` (same in both dialects); the
#: client appends base64 and ``"}`` to it with no JSON encoder on the per-frame path.
APPEND_PREFIX = b'{"type":"input_audio_buffer.append","audio":"'
APPEND_SUFFIX = b'"}'
