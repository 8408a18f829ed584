"""One emulated Realtime session, sans-I/O.

Theory of operation
-------------------
:class:`SessionCore` is the whole server side of one WebSocket session with no socket and
no clock: client frames go in through :meth:`SessionCore.receive_text` /
:meth:`~SessionCore.receive_bytes` with ``now`` (a monotonic time in seconds), the frames to
send come out of :meth:`~SessionCore.take_output` (JSON text, or a :class:`Close` action),
and the next moment it wants to be woken is :meth:`~SessionCore.next_deadline`, answered by
:meth:`~SessionCore.handle_timer`. The asyncio adapter (``server.py``) only moves frames.

Two time lines, on purpose:

- *Audio time* (ms of caller audio appended since the session began) drives the VAD, the
  positions reported (``audio_start_ms``, ``audio_end_ms``) and the idle timeout. A client
  may push audio faster than real time and see exactly what a real-time stream would see.
- *Wall time* (``now``) paces the assistant's audio deltas (``pace`` times faster than real
  time, as the real service sends them) and the session's expiry and scripted closes.

Client events are dispatched by a table on ``type``; each handler validates its event and
either acts or answers one ``error`` event echoing the client's ``event_id``. A response is
a generator that emits its events and yields the pause before its next audio delta, so a
barge-in or ``response.cancel`` can stop it between deltas and close what it left open
(every ``*.done`` event is still sent, with an ``incomplete``/``cancelled`` status).

The session is kept in the GA shape; a preview session is translated at the edge
(``dialect.py``).
"""

from __future__ import annotations

import base64
import binascii
import heapq
import json
import math
import re
import secrets
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass, field
from typing import Any

from bridge.realtime.emulator.audio import PCM16, convert, to_pcm16, tone
from bridge.realtime.emulator.dialect import (
    EAGERNESS_SILENCE_MS,
    SessionUpdateError,
    apply_update,
    default_session,
    from_preview_item,
    input_format,
    output_format,
    to_preview_event,
    to_preview_session,
    turn_detection,
)
from bridge.realtime.emulator.record import (
    AssistantItemRecord,
    ResponseRecord,
    SessionRecord,
    Truncation,
    UserItemRecord,
)
from bridge.realtime.emulator.script import Rule, Script
from bridge.realtime.emulator.vad import EnergyVad, VadSettings, VadStart, VadStop

__all__ = ["CHUNK_MS", "Close", "SessionCore"]

# Sizes of the audio deltas the real service sends: 100 ms, 150 ms, then 250 ms each.
CHUNK_MS = (100, 150)
CHUNK_MS_STEADY = 250
MIN_COMMIT_MS = 100.0
_TOKEN_RE = re.compile(r"\S+\s*|\s+")
_DUMPS = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


@dataclass(frozen=True)
class Close:
    """Close the socket with ``code`` (1006: drop the TCP connection, no close frame)."""

    code: int
    reason: str = ""


@dataclass(frozen=True)
class _Say:
    audio: bytes  # in the session's output format (empty for a text-only response)
    transcript: str


@dataclass(frozen=True)
class _Call:
    name: str
    arguments: str


@dataclass(frozen=True)
class _Fail:
    code: str
    message: str


_Step = _Say | _Call | _Fail


@dataclass
class _Active:
    """The response in progress."""

    rid: str
    record: ResponseRecord
    modalities: list[str]
    metadata: dict[str, Any] | None
    next_at: float
    gen: Generator[float, None, None] | None = None
    output: list[dict[str, Any]] = field(default_factory=list)
    item: dict[str, Any] | None = None  # the output item still open
    output_index: int = 0
    transcript: str = ""
    audio_ms: float = 0.0
    text_tokens: int = 0


def _chunk_sizes(total: int, bytes_per_ms: int) -> list[int]:
    sizes = []
    left = total
    i = 0
    while left > 0:
        ms = CHUNK_MS[i] if i < len(CHUNK_MS) else CHUNK_MS_STEADY
        n = min(left, ms * bytes_per_ms)
        sizes.append(n)
        left -= n
        i += 1
    return sizes


def _spread(text: str, parts: int) -> list[str]:
    """Cut ``text`` into ``parts`` pieces on word boundaries ("" where none is left)."""
    tokens = _TOKEN_RE.findall(text)
    if parts <= 1:
        return [text]
    per = max(1, math.ceil(len(tokens) / parts))
    out = ["".join(tokens[i * per:(i + 1) * per]) for i in range(parts)]
    out[-1] += "".join(tokens[parts * per:])
    return out


def _elide(event: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of a client event without audio payloads (kept in the record)."""
    out = dict(event)
    item = out.get("item")
    if isinstance(item, dict) and isinstance(item.get("content"), list):
        out["item"] = {**item, "content": [
            {**p, "audio": f"<{len(p['audio'])} base64 chars>"}
            if isinstance(p, dict) and isinstance(p.get("audio"), str) else p
            for p in item["content"]]}
    return out


class SessionCore:
    """The server side of one Realtime session (see the module docstring)."""

    def __init__(self, record: SessionRecord, *, dialect: str, model: str, now: float,
                 wall_time: float, session_max_s: float = 1800.0, greeting_ms: int = 1200,
                 script: Script | None = None, speech: Mapping[str, bytes] | None = None,
                 session_index: int = 1, pace: float = 4.0) -> None:
        self.record = record
        self._preview = dialect == "preview"
        self._tag = secrets.token_hex(4)
        self._n = 0
        self._session_max_s = session_max_s
        self._greeting_ms = greeting_ms
        self._script = script
        self._speech = speech or {}
        self._session_index = session_index
        self._pace = pace
        self._session = default_session(self._id("sess"), model,
                                        int(wall_time + session_max_s))
        self._extras: dict[str, Any] = {}
        self._conv_id = self._id("conv")
        self.closed = False
        self._out: list[str | Close] = []
        self._timers: list[tuple[float, int, str, int]] = []
        # input audio: the uncommitted buffer covers input bytes [_buf_start, _in_bytes)
        self._in_fmt = input_format(self._session)
        self._out_fmt = output_format(self._session)
        self._ms_base = 0.0  # audio time where the current input format began
        self._in_bytes = 0
        self._buf = bytearray()
        self._buf_start = 0
        self._td: dict[str, Any] | None = None
        self._vad: EnergyVad | None = None
        self._speech_item: str | None = None
        self._onset_ms = 0
        self._idle_from_ms: float | None = None
        # conversation
        self._items: dict[str, dict[str, Any]] = {}
        self._last_item: str | None = None
        self._item_audio_ms: dict[str, float] = {}
        self._calls: dict[str, str] = {}  # call_id -> function name
        self._turns = 0
        self._user_audio_ms = 0.0
        self._pending_echo: bytes | None = None  # the last unanswered turn, input format
        self._pending_texts: list[str] = []
        self._pending_tools: list[str] = []
        self._planned: Rule | None = None
        self._fired: set[int] = set()
        self._active: _Active | None = None
        self._voice_locked = False
        self._responses = 0
        self._handlers: dict[str, Callable[[dict[str, Any], str | None, float], None]] = {
            "session.update": self._on_session_update,
            "input_audio_buffer.append": self._on_append,
            "input_audio_buffer.commit": self._on_commit,
            "input_audio_buffer.clear": self._on_clear,
            "conversation.item.create": self._on_item_create,
            "conversation.item.truncate": self._on_truncate,
            "conversation.item.delete": self._on_item_delete,
            "conversation.item.retrieve": self._on_item_retrieve,
            "response.create": self._on_response_create,
            "response.cancel": self._on_response_cancel,
        }
        self._configure_audio()
        record.session_id = self._session["id"]

    # --- public surface -----------------------------------------------------------------

    @property
    def session_id(self) -> str:
        return str(self._session["id"])

    @property
    def response_active(self) -> bool:
        return self._active is not None

    def start(self, now: float) -> None:
        """Send ``session.created`` and arm the expiry."""
        view = self._session_view()
        self.record.config = json.loads(_DUMPS(view))
        self._emit({"type": "session.created", "session": view})
        self._schedule(now + self._session_max_s, "expire", 0)
        self._trigger("on_session", self._session_index, now)

    def receive_text(self, data: str, now: float) -> None:
        if self.closed:
            return
        try:
            event = json.loads(data)
        except ValueError:
            self._error("invalid_json", "The server could not parse the event: expected a JSON "
                        "object.")
            return
        if not isinstance(event, dict):
            self._error("invalid_json", "The server could not parse the event: expected a JSON "
                        "object.")
            return
        kind = event.get("type")
        event_id = event.get("event_id")
        if not isinstance(event_id, str):
            event_id = None
        self.record.received_types.append(kind if isinstance(kind, str) else "<missing>")
        handler = self._handlers.get(kind) if isinstance(kind, str) else None
        if kind != "input_audio_buffer.append":
            self.record.received.append(_elide(event))
        if handler is None:
            if kind is None:
                self._error("missing_required_parameter", "Missing required parameter: 'type'.",
                            param="type", event_id=event_id)
            else:
                self._error("invalid_value", f"Invalid value: '{str(kind)[:80]}'. Supported "
                            "values are: " + ", ".join(f"'{k}'" for k in self._handlers) + ".",
                            param="type", event_id=event_id)
            return
        handler(event, event_id, now)
        self._pump(now)

    def receive_bytes(self, data: bytes, now: float) -> None:
        if self.closed:
            return
        self.record.received_types.append("<binary>")
        self._error("invalid_event", "Binary frames are not supported: send JSON events as "
                    "text frames.")

    def next_deadline(self) -> float | None:
        deadline = self._timers[0][0] if self._timers else None
        if self._active is not None and self._active.gen is not None:
            at = self._active.next_at
            deadline = at if deadline is None else min(deadline, at)
        return deadline

    def handle_timer(self, now: float) -> None:
        while self._timers and self._timers[0][0] <= now and not self.closed:
            _, _, kind, arg = heapq.heappop(self._timers)
            if kind == "expire":
                self._expire()
            else:
                self._close(arg, "scripted close")
        if not self.closed:
            self._pump(now)

    def take_output(self) -> list[str | Close]:
        out = self._out
        self._out = []
        return out

    @property
    def has_output(self) -> bool:
        return bool(self._out)

    def abandon(self, code: int | None) -> None:
        """The socket is gone: stop everything, write the record's last words."""
        self.closed = True
        self._timers.clear()
        if self._active is not None:
            self._active.record.status = "cancelled"
            self._active = None
        self.record.open = False
        self.record.close_code = code

    # --- plumbing -----------------------------------------------------------------------

    def _id(self, prefix: str) -> str:
        self._n += 1
        return f"{prefix}_{self._tag}{self._n:05d}"

    def _emit(self, event: dict[str, Any]) -> None:
        event["event_id"] = self._id("event")
        if self._preview:
            converted = to_preview_event(event, self._session, self._extras)
            if converted is None:
                return
            event = converted
        self._out.append(_DUMPS(event))

    def _error(self, code: str, message: str, *, param: str | None = None,
               event_id: str | None = None, kind: str = "invalid_request_error") -> None:
        self.record.errors.append((code, event_id))
        self._emit({"type": "error", "error": {"type": kind, "code": code, "message": message,
                                               "param": param, "event_id": event_id}})

    def _schedule(self, at: float, kind: str, arg: int) -> None:
        self._n += 1
        heapq.heappush(self._timers, (at, self._n, kind, arg))

    def _close(self, code: int, reason: str) -> None:
        self.closed = True
        self._timers.clear()
        self._active = None
        self._out.append(Close(code, reason))

    def _expire(self) -> None:
        minutes = self._session_max_s / 60.0
        self._error("session_expired", f"Your session hit the maximum duration of {minutes:g} "
                    "minutes.")
        self._close(1001, "session expired")

    def _session_view(self) -> dict[str, Any]:
        if self._preview:
            return to_preview_session(self._session, self._extras)
        return self._session

    def _audio_ms(self) -> float:
        return self._ms_base + self._in_bytes / self._in_fmt.bytes_per_ms

    # --- session ------------------------------------------------------------------------

    def _configure_audio(self) -> None:
        """Apply the session's formats and turn detection to the input pipeline."""
        fmt = input_format(self._session)
        if fmt is not self._in_fmt:
            # A new input format starts a new byte count; audio time carries on.
            self._ms_base = self._audio_ms()
            self._in_bytes = 0
            self._buf.clear()
            self._buf_start = 0
            self._in_fmt = fmt
            self._td = None
            self._vad = None
        self._out_fmt = output_format(self._session)
        td = turn_detection(self._session)
        if td == self._td and (td is None) == (self._vad is None):
            return
        self._td = dict(td) if td is not None else None
        self._speech_item = None
        if td is None:
            self._vad = None
            return
        if td["type"] == "server_vad":
            settings = VadSettings(threshold=float(td["threshold"]),
                                   silence_duration_ms=int(td["silence_duration_ms"]))
        else:
            settings = VadSettings(silence_duration_ms=EAGERNESS_SILENCE_MS[td["eagerness"]])
        self._vad = EnergyVad(settings, fmt.rate, start_ms=round(self._audio_ms()))

    def _on_session_update(self, event: dict[str, Any], event_id: str | None,
                           now: float) -> None:
        try:
            session, extras = apply_update(self._session, event.get("session"),
                                           "preview" if self._preview else "ga", self._extras)
        except SessionUpdateError as exc:
            self._error(exc.code, exc.message, param=exc.param, event_id=event_id)
            return
        old_voice = self._session["audio"]["output"]["voice"]
        if self._voice_locked and session["audio"]["output"]["voice"] != old_voice:
            self._error("invalid_value", "Cannot update a conversation's voice if assistant "
                        "audio is present.", param="session.audio.output.voice",
                        event_id=event_id)
            return
        self._session = session
        self._extras = extras
        self._configure_audio()
        view = self._session_view()
        self.record.config = json.loads(_DUMPS(view))
        self.record.session_updates += 1
        self._emit({"type": "session.updated", "session": view})

    # --- input audio --------------------------------------------------------------------

    def _on_append(self, event: dict[str, Any], event_id: str | None, now: float) -> None:
        audio = event.get("audio")
        if not isinstance(audio, str):
            self._error("missing_required_parameter", "Missing required parameter: 'audio'.",
                        param="audio", event_id=event_id)
            return
        try:
            data = base64.b64decode(audio, validate=True)
        except binascii.Error:
            self._error("invalid_value", "Invalid 'audio'. Expected base64-encoded audio bytes.",
                        param="audio", event_id=event_id)
            return
        fmt = self._in_fmt
        self._buf += data
        self._in_bytes += len(data)
        self.record.appended_audio_ms += len(data) / fmt.bytes_per_ms
        vad = self._vad
        if vad is None:
            return
        for ev in vad.feed(to_pcm16(fmt, data) if fmt.sample_width == 1 else data):
            if isinstance(ev, VadStart):
                self._speech_started(ev, now)
            else:
                self._speech_stopped(ev, now)
        if not vad.in_speech:
            self._trim_buffer()
            if self._idle_from_ms is not None and self._td is not None:
                self._check_idle(now)

    def _offset(self, ms: float) -> int:
        """Index into the buffer of audio time ``ms`` (clamped, sample-aligned)."""
        fmt = self._in_fmt
        pos = round((ms - self._ms_base) * fmt.bytes_per_ms) - self._buf_start
        pos = min(max(pos, 0), len(self._buf))
        return pos - pos % fmt.sample_width

    def _drop_before(self, ms: float) -> None:
        cut = self._offset(ms)
        if cut:
            del self._buf[:cut]
            self._buf_start += cut

    def _trim_buffer(self) -> None:
        # Outside speech only the prefix padding can still matter; trim in 1 s steps so
        # a 20 ms append does not move the whole buffer every time.
        pad = int(self._td["prefix_padding_ms"]) if self._td and "prefix_padding_ms" in self._td \
            else 300
        keep = (pad + 20) * self._in_fmt.bytes_per_ms
        if len(self._buf) > keep + 1000 * self._in_fmt.bytes_per_ms:
            cut = len(self._buf) - keep
            cut -= cut % self._in_fmt.sample_width
            del self._buf[:cut]
            self._buf_start += cut

    def _speech_started(self, ev: VadStart, now: float) -> None:
        assert self._td is not None  # only the VAD calls this
        pad = int(self._td.get("prefix_padding_ms") or 0)
        buf_start_ms = self._ms_base + self._buf_start / self._in_fmt.bytes_per_ms
        start = max(ev.onset_ms - pad, math.ceil(buf_start_ms))
        self._drop_before(start)
        self._onset_ms = ev.onset_ms
        self._speech_item = self._id("item")
        self._idle_from_ms = None
        self._emit({"type": "input_audio_buffer.speech_started", "audio_start_ms": start,
                    "item_id": self._speech_item})
        if self._active is not None and self._td["interrupt_response"]:
            self._cancel("turn_detected")

    def _speech_stopped(self, ev: VadStop, now: float) -> None:
        assert self._td is not None
        item_id = self._speech_item or self._id("item")
        self._speech_item = None
        self._emit({"type": "input_audio_buffer.speech_stopped", "audio_end_ms": ev.audio_end_ms,
                    "item_id": item_id})
        self._commit(item_id, ev.audio_end_ms, (self._onset_ms, ev.speech_end_ms), now)
        if self._td["create_response"] and self._active is None:
            self._start_response("vad", None, now)

    def _check_idle(self, now: float) -> None:
        assert self._td is not None and self._idle_from_ms is not None
        idle = self._td.get("idle_timeout_ms")
        if not idle:
            return
        position = self._audio_ms()
        if position - self._idle_from_ms < idle:
            return
        start = int(self._idle_from_ms)
        self._idle_from_ms = None
        item_id = self._id("item")
        self._emit({"type": "input_audio_buffer.timeout_triggered", "audio_start_ms": start,
                    "audio_end_ms": int(position), "item_id": item_id})
        self._drop_before(start)
        self._commit(item_id, position, (position, position), now)
        if self._td["create_response"] and self._active is None:
            self._start_response("idle", None, now)

    def _commit(self, item_id: str, upto_ms: float, echo: tuple[float, float],
                now: float) -> None:
        cut = self._offset(upto_ms)
        lo, hi = self._offset(echo[0]), self._offset(echo[1])
        fmt = self._in_fmt
        committed_ms = cut / fmt.bytes_per_ms
        self._pending_echo = bytes(self._buf[lo:hi])
        del self._buf[:cut]
        self._buf_start += cut
        previous = self._last_item
        self._emit({"type": "input_audio_buffer.committed", "item_id": item_id,
                    "previous_item_id": previous})
        item = {"id": item_id, "object": "realtime.item", "type": "message",
                "status": "completed", "role": "user",
                "content": [{"type": "input_audio", "transcript": None}]}
        self._add_item(item)
        self._turns += 1
        self._user_audio_ms += committed_ms
        self.record.user_items.append(UserItemRecord(item_id, "audio", audio_ms=committed_ms,
                                                     turn=self._turns))
        transcription = self._session["audio"]["input"]["transcription"]
        if transcription:
            seconds = (hi - lo) / fmt.bytes_per_ms / 1000.0
            self._emit({
                "type": "conversation.item.input_audio_transcription.completed",
                "item_id": item_id, "content_index": 0,
                "transcript": f"({seconds:.1f} s of caller audio; the emulator does not "
                              "transcribe)",
                "usage": {"type": "duration", "seconds": round(committed_ms / 1000.0, 3)},
            })
        self._trigger("on_turn", self._turns, now)

    def _on_commit(self, event: dict[str, Any], event_id: str | None, now: float) -> None:
        fmt = self._in_fmt
        buffered = len(self._buf) / fmt.bytes_per_ms
        if buffered < MIN_COMMIT_MS:
            self._error("input_audio_buffer_commit_empty", "Error committing input audio "
                        "buffer: buffer too small. Expected at least 100ms of audio, but buffer "
                        f"only has {buffered:.2f}ms of audio.", event_id=event_id)
            return
        position = self._audio_ms()
        in_speech = self._vad is not None and self._vad.in_speech
        start = self._onset_ms if in_speech else position - buffered
        item_id = self._speech_item if in_speech and self._speech_item else self._id("item")
        self._speech_item = None
        if self._vad is not None:
            self._vad.reset()
        self._commit(item_id, position, (start, position), now)

    def _on_clear(self, event: dict[str, Any], event_id: str | None, now: float) -> None:
        self._buf_start += len(self._buf)
        self._buf.clear()
        self._speech_item = None
        if self._vad is not None:
            self._vad.reset()
        self._emit({"type": "input_audio_buffer.cleared"})

    # --- conversation -------------------------------------------------------------------

    def _add_item(self, item: dict[str, Any], previous: str | None = None) -> None:
        prev = previous if previous is not None else self._last_item
        self._items[item["id"]] = item
        self._last_item = item["id"]
        self._emit({"type": "conversation.item.added", "previous_item_id": prev, "item": item})
        self._emit({"type": "conversation.item.done", "previous_item_id": prev, "item": item})

    def _on_item_create(self, event: dict[str, Any], event_id: str | None, now: float) -> None:
        item = event.get("item")
        if not isinstance(item, dict):
            self._error("missing_required_parameter", "Missing required parameter: 'item'.",
                        param="item", event_id=event_id)
            return
        if self._preview:
            item = from_preview_item(item)
        previous = event.get("previous_item_id")
        if previous is not None and previous != "root" and previous not in self._items:
            self._error("invalid_value", f"Previous item with id '{previous}' not found.",
                        param="previous_item_id", event_id=event_id)
            return
        item_id = item.get("id") or self._id("item")
        if item_id in self._items:
            self._error("invalid_value", f"Item with id '{item_id}' already exists.",
                        param="item.id", event_id=event_id)
            return
        builder = self._item_builders.get(item.get("type", ""))
        if builder is None:
            self._error("invalid_value", f"Invalid value: '{item.get('type')}'. Supported values "
                        "are: 'message', 'function_call', and 'function_call_output'.",
                        param="item.type", event_id=event_id)
            return
        built = builder(self, item, item_id, event_id)
        if built is None:
            return
        self._add_item(built, previous)
        self._after_item(built, now)

    def _build_message(self, item: dict[str, Any], item_id: str,
                       event_id: str | None) -> dict[str, Any] | None:
        role = item.get("role")
        allowed = {"user": ("input_text", "input_audio", "input_image"),
                   "system": ("input_text",),
                   "assistant": ("output_text", "output_audio")}.get(str(role))
        if allowed is None:
            self._error("invalid_value", f"Invalid value: '{role}'. Supported values are: "
                        "'user', 'assistant', and 'system'.", param="item.role",
                        event_id=event_id)
            return None
        content = item.get("content")
        if not isinstance(content, list) or not content:
            self._error("missing_required_parameter", "Missing required parameter: "
                        "'item.content'.", param="item.content", event_id=event_id)
            return None
        parts = []
        for i, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind not in allowed:
                self._error("invalid_value", f"Invalid value: '{kind}'. Supported values are: "
                            + ", ".join(f"'{a}'" for a in allowed) + ".",
                            param=f"item.content[{i}].type", event_id=event_id)
                return None
            assert isinstance(part, dict)
            if kind in ("input_text", "output_text") and not isinstance(part.get("text"), str):
                self._error("missing_required_parameter", "Missing required parameter: "
                            f"'item.content[{i}].text'.", param=f"item.content[{i}].text",
                            event_id=event_id)
                return None
            # Audio payloads are not echoed back (the real server sends transcripts only).
            parts.append({k: v for k, v in part.items() if k != "audio"})
        return {"id": item_id, "object": "realtime.item", "type": "message",
                "status": "completed", "role": role, "content": parts}

    def _build_call(self, item: dict[str, Any], item_id: str,
                    event_id: str | None) -> dict[str, Any] | None:
        for key in ("name", "arguments"):
            if not isinstance(item.get(key), str):
                self._error("missing_required_parameter", f"Missing required parameter: "
                            f"'item.{key}'.", param=f"item.{key}", event_id=event_id)
                return None
        call_id = item.get("call_id") or self._id("call")
        self._calls[call_id] = item["name"]
        return {"id": item_id, "object": "realtime.item", "type": "function_call",
                "status": "completed", "name": item["name"], "call_id": call_id,
                "arguments": item["arguments"]}

    def _build_call_output(self, item: dict[str, Any], item_id: str,
                           event_id: str | None) -> dict[str, Any] | None:
        for key in ("call_id", "output"):
            if not isinstance(item.get(key), str):
                self._error("missing_required_parameter", f"Missing required parameter: "
                            f"'item.{key}'.", param=f"item.{key}", event_id=event_id)
                return None
        return {"id": item_id, "object": "realtime.item", "type": "function_call_output",
                "status": "completed", "call_id": item["call_id"], "output": item["output"]}

    _item_builders: dict[str, Callable[[SessionCore, dict[str, Any], str, str | None],
                                       dict[str, Any] | None]] = {
        "message": _build_message,
        "function_call": _build_call,
        "function_call_output": _build_call_output,
    }

    def _after_item(self, item: dict[str, Any], now: float) -> None:
        if item["type"] == "function_call_output":
            self.record.tool_outputs.append((item["call_id"], item["output"]))
            name = self._calls.get(item["call_id"], "")
            self._pending_tools.append(name or item["call_id"])
            self._trigger("on_tool_output", name, now)
        elif item["type"] == "message" and item["role"] == "user":
            for part in item["content"]:
                if part["type"] == "input_text":
                    text = part["text"]
                    self.record.user_items.append(UserItemRecord(item["id"], "text", text=text))
                    self._pending_texts.append(text)
                    self._trigger("on_text", text, now)

    def _find_item(self, event: dict[str, Any], event_id: str | None) -> str | None:
        item_id = event.get("item_id")
        if not isinstance(item_id, str):
            self._error("missing_required_parameter", "Missing required parameter: 'item_id'.",
                        param="item_id", event_id=event_id)
            return None
        if item_id not in self._items:
            self._error("invalid_value", f"Item with item_id not found: {item_id}",
                        param="item_id", event_id=event_id)
            return None
        return item_id

    def _on_item_delete(self, event: dict[str, Any], event_id: str | None, now: float) -> None:
        item_id = self._find_item(event, event_id)
        if item_id is None:
            return
        del self._items[item_id]
        if self._last_item == item_id:
            self._last_item = next(reversed(self._items), None)
        self._emit({"type": "conversation.item.deleted", "item_id": item_id})

    def _on_item_retrieve(self, event: dict[str, Any], event_id: str | None,
                          now: float) -> None:
        item_id = self._find_item(event, event_id)
        if item_id is not None:
            self._emit({"type": "conversation.item.retrieved", "item": self._items[item_id]})

    def _on_truncate(self, event: dict[str, Any], event_id: str | None, now: float) -> None:
        item_id = self._find_item(event, event_id)
        if item_id is None:
            return
        end = event.get("audio_end_ms")
        if not isinstance(end, int) or isinstance(end, bool):
            self._error("missing_required_parameter", "Missing required parameter: "
                        "'audio_end_ms'.", param="audio_end_ms", event_id=event_id)
            return
        if end < 0:
            self._error("integer_below_min_value", "Invalid 'audio_end_ms': integer below "
                        f"minimum value. Expected a value >= 0, but got {end} instead.",
                        param="audio_end_ms", event_id=event_id)
            return
        content_index = event.get("content_index", 0)
        if content_index != 0:
            self._error("invalid_value", f"Invalid 'content_index': {content_index}. The item "
                        "has one content part.", param="content_index", event_id=event_id)
            return
        item = self._items[item_id]
        audio_ms = self._item_audio_ms.get(item_id)
        if item.get("role") != "assistant" or not audio_ms:
            self._error("invalid_value", f"Item '{item_id}' has no audio content to truncate.",
                        param="item_id", event_id=event_id)
            return
        have = int(audio_ms)
        if end > have:
            self._error("invalid_value", f"Audio content of {have}ms is already shorter than "
                        f"{end}ms", param="audio_end_ms", event_id=event_id)
            return
        self._item_audio_ms[item_id] = float(end)
        self.record.truncations.append(Truncation(item_id, end, have))
        self._emit({"type": "conversation.item.truncated", "item_id": item_id,
                    "content_index": 0, "audio_end_ms": end})

    # --- responses ----------------------------------------------------------------------

    def _on_response_create(self, event: dict[str, Any], event_id: str | None,
                            now: float) -> None:
        self.record.response_creates += 1
        if self._active is not None:
            self._error("conversation_already_has_active_response", "Conversation already has "
                        f"an active response in progress: {self._active.rid}. Wait until the "
                        "response is finished before creating a new one.", event_id=event_id)
            return
        params = event.get("response")
        if params is not None and not isinstance(params, dict):
            self._error("invalid_type", "Invalid type for 'response': expected an object.",
                        param="response", event_id=event_id)
            return
        self._start_response("client", params, now)

    def _on_response_cancel(self, event: dict[str, Any], event_id: str | None,
                            now: float) -> None:
        wanted = event.get("response_id")
        if self._active is None or (wanted is not None and wanted != self._active.rid):
            self._error("response_cancel_not_active", "Cancellation failed: no active response "
                        "found.", event_id=event_id)
            return
        self._cancel("client_cancelled")

    def _trigger(self, trigger: str, value: int | str, now: float) -> None:
        if self._script is None:
            return
        for rule in self._script.rules:
            if not rule.matches(trigger, value):
                continue
            if rule.number in self._fired and not rule.repeat:
                continue
            self._fired.add(rule.number)
            if rule.error:
                self._error(rule.error, rule.message or f"Scripted error: {rule.error}.",
                            kind="server_error" if rule.error == "server_error"
                            else "invalid_request_error")
            if rule.shapes_response:
                self._planned = rule
            if rule.close is not None:
                if rule.after_s <= 0:
                    self._close(rule.close, "scripted close")
                else:
                    self._schedule(now + rule.after_s, "close", rule.close)
            return

    def _say(self, text: str) -> _Say:
        speech = self._speech.get(text)
        if speech is not None:
            return _Say(convert(PCM16, speech, self._out_fmt), text)
        ms = min(8000, max(400, 60 * len(text)))
        return _Say(tone(self._out_fmt, ms, freqs=(523.25,)), text)

    def _plan(self, trigger: str) -> list[_Step]:
        rule, self._planned = self._planned, None
        echo, self._pending_echo = self._pending_echo, None
        texts, self._pending_texts = self._pending_texts, []
        tools, self._pending_tools = self._pending_tools, []
        steps: list[_Step] = []
        if rule is not None:
            if rule.fail:
                return [_Fail(rule.fail, rule.message or f"Scripted failure: {rule.fail}.")]
            if rule.echo and echo:
                steps.append(self._echo(echo))
            if rule.say:
                steps.append(self._say(rule.say))
            if rule.call:
                steps.append(_Call(rule.call, rule.args))
            return steps
        if echo:
            return [self._echo(echo)]
        if trigger == "idle":
            return [self._tone_say("(idle timeout: are you still there?)")]
        if tools:
            return [self._tone_say(f"(tool output received for {', '.join(tools)})")]
        if texts:
            return [self._tone_say(f"(text received: {texts[-1][:80]})")]
        if self._turns == 0:
            seconds = self._greeting_ms / 1000.0
            return [_Say(tone(self._out_fmt, self._greeting_ms),
                         f"(greeting: a {seconds:.1f} s tone from the voicebridge emulator)")]
        return [self._tone_say("(no new caller audio to echo)")]

    def _tone_say(self, transcript: str) -> _Say:
        return _Say(tone(self._out_fmt, 600, freqs=(523.25,)), transcript)

    def _echo(self, audio: bytes) -> _Say:
        out = convert(self._in_fmt, audio, self._out_fmt)
        seconds = len(audio) / self._in_fmt.bytes_per_ms / 1000.0
        return _Say(out, f"(echo of {seconds:.1f} s of caller audio)")

    def _start_response(self, trigger: str, params: dict[str, Any] | None, now: float) -> None:
        params = params or {}
        modalities = params.get("output_modalities") or params.get("modalities") \
            or self._session["output_modalities"]
        modalities = ["audio"] if "audio" in modalities else ["text"]
        metadata = params.get("metadata") if isinstance(params.get("metadata"), dict) else None
        rid = self._id("resp")
        rec = ResponseRecord(rid, trigger)
        self.record.responses.append(rec)
        self._responses += 1
        active = _Active(rid=rid, record=rec, modalities=modalities, metadata=metadata,
                         next_at=now)
        self._active = active
        active.gen = self._run(active, self._plan(trigger))
        self._pump(now)

    def _pump(self, now: float) -> None:
        while (a := self._active) is not None and a.gen is not None and a.next_at <= now:
            try:
                pause = next(a.gen)
            except StopIteration:
                break
            a.next_at += pause

    def _response_obj(self, a: _Active, status: str,
                      details: dict[str, Any] | None) -> dict[str, Any]:
        usage = None
        if status != "in_progress":
            in_text = len(self._session.get("instructions") or "") // 4
            in_audio = int(self._user_audio_ms / 100)
            out_audio = int(a.audio_ms / 50)
            usage = {
                "total_tokens": in_text + in_audio + out_audio + a.text_tokens,
                "input_tokens": in_text + in_audio,
                "output_tokens": out_audio + a.text_tokens,
                "input_token_details": {"text_tokens": in_text, "audio_tokens": in_audio,
                                        "cached_tokens": 0},
                "output_token_details": {"text_tokens": a.text_tokens,
                                         "audio_tokens": out_audio},
            }
        return {
            "object": "realtime.response", "id": a.rid, "status": status,
            "status_details": details, "output": list(a.output),
            "conversation_id": self._conv_id, "output_modalities": a.modalities,
            "max_output_tokens": self._session["max_output_tokens"],
            "audio": {"output": {"format": self._session["audio"]["output"]["format"],
                                 "voice": self._session["audio"]["output"]["voice"]}},
            "usage": usage, "metadata": a.metadata,
        }

    def _run(self, a: _Active, steps: list[_Step]) -> Generator[float, None, None]:
        self._emit({"type": "response.created",
                    "response": self._response_obj(a, "in_progress", None)})
        for step in steps:
            if isinstance(step, _Fail):
                self._finish(a, "failed", {"type": "failed", "error": {
                    "type": "server_error", "code": step.code, "message": step.message}})
                return
            if isinstance(step, _Call):
                self._run_call(a, step)
            else:
                yield from self._run_message(a, step)
        self._finish(a, "completed", None)

    def _open_item(self, a: _Active, item: dict[str, Any]) -> None:
        a.item = item
        a.output_index = len(a.output)
        a.record.item_ids.append(item["id"])
        self._emit({"type": "response.output_item.added", "response_id": a.rid,
                    "output_index": a.output_index, "item": dict(item)})
        self._items[item["id"]] = item
        prev, self._last_item = self._last_item, item["id"]
        self._emit({"type": "conversation.item.added", "previous_item_id": prev,
                    "item": dict(item)})

    def _close_item(self, a: _Active, final: dict[str, Any]) -> None:
        self._items[final["id"]] = final
        a.output.append(final)
        a.item = None
        self._emit({"type": "conversation.item.done", "item": final})
        self._emit({"type": "response.output_item.done", "response_id": a.rid,
                    "output_index": a.output_index, "item": final})

    def _run_message(self, a: _Active, say: _Say) -> Generator[float, None, None]:
        item_id = self._id("item")
        self.record.assistant_items[item_id] = AssistantItemRecord(item_id, a.rid, "message")
        self._open_item(a, {"id": item_id, "object": "realtime.item", "type": "message",
                            "status": "in_progress", "role": "assistant", "content": []})
        a.transcript = ""
        ids = {"response_id": a.rid, "item_id": item_id, "output_index": a.output_index,
               "content_index": 0}
        if a.modalities == ["text"]:
            self._emit({"type": "response.content_part.added", **ids,
                        "part": {"type": "text", "text": ""}})
            for piece in _spread(say.transcript, max(1, len(say.transcript.split()))):
                if piece:
                    a.transcript += piece
                    self._emit({"type": "response.output_text.delta", **ids, "delta": piece})
            self._end_message(a, "completed")
            return
        self._emit({"type": "response.content_part.added", **ids,
                    "part": {"type": "audio", "transcript": ""}})
        fmt = self._out_fmt
        sizes = _chunk_sizes(len(say.audio), fmt.bytes_per_ms)
        words = _spread(say.transcript, len(sizes))
        record = self.record.assistant_items[item_id]
        self._item_audio_ms[item_id] = 0.0
        pause_per_ms = 0.0 if self._pace <= 0 else 1.0 / (1000.0 * self._pace)
        offset = 0
        for i, size in enumerate(sizes):
            chunk = say.audio[offset:offset + size]
            offset += size
            self._voice_locked = True
            self._emit({"type": "response.output_audio.delta", **ids,
                        "delta": base64.b64encode(chunk).decode("ascii")})
            ms = size / fmt.bytes_per_ms
            a.audio_ms += ms
            record.audio_ms_sent += ms
            self._item_audio_ms[item_id] += ms
            if words[i]:
                a.transcript += words[i]
                record.transcript = a.transcript
                self._emit({"type": "response.output_audio_transcript.delta", **ids,
                            "delta": words[i]})
            if i + 1 < len(sizes):
                yield ms * pause_per_ms
        if not sizes and say.transcript:
            a.transcript = say.transcript
            self._emit({"type": "response.output_audio_transcript.delta", **ids,
                        "delta": say.transcript})
        self._end_message(a, "completed")

    def _end_message(self, a: _Active, status: str) -> None:
        item = a.item
        assert item is not None
        ids = {"response_id": a.rid, "item_id": item["id"], "output_index": a.output_index,
               "content_index": 0}
        a.text_tokens += len(a.transcript) // 4
        record = self.record.assistant_items[item["id"]]
        record.transcript = a.transcript
        record.status = status
        if a.modalities == ["text"]:
            self._emit({"type": "response.output_text.done", **ids, "text": a.transcript})
            part = {"type": "text", "text": a.transcript}
            content = {"type": "output_text", "text": a.transcript}
        else:
            self._emit({"type": "response.output_audio.done", **ids})
            self._emit({"type": "response.output_audio_transcript.done", **ids,
                        "transcript": a.transcript})
            part = {"type": "audio", "transcript": a.transcript}
            content = {"type": "output_audio", "transcript": a.transcript}
        self._emit({"type": "response.content_part.done", **ids, "part": part})
        self._close_item(a, {**item, "status": status, "content": [content]})

    def _run_call(self, a: _Active, call: _Call) -> None:
        item_id, call_id = self._id("item"), self._id("call")
        self._calls[call_id] = call.name
        record = AssistantItemRecord(item_id, a.rid, "function_call", name=call.name,
                                     call_id=call_id, arguments=call.arguments)
        self.record.assistant_items[item_id] = record
        self._open_item(a, {"id": item_id, "object": "realtime.item", "type": "function_call",
                            "status": "in_progress", "name": call.name, "call_id": call_id,
                            "arguments": ""})
        ids = {"response_id": a.rid, "item_id": item_id, "output_index": a.output_index,
               "call_id": call_id}
        half = len(call.arguments) // 2
        for piece in (call.arguments[:half], call.arguments[half:]):
            if piece:
                self._emit({"type": "response.function_call_arguments.delta", **ids,
                            "delta": piece})
        self._emit({"type": "response.function_call_arguments.done", **ids, "name": call.name,
                    "arguments": call.arguments})
        record.status = "completed"
        assert a.item is not None
        self._close_item(a, {**a.item, "status": "completed", "arguments": call.arguments})

    def _finish(self, a: _Active, status: str, details: dict[str, Any] | None) -> None:
        a.record.status = status
        a.record.reason = (details or {}).get("reason")
        self._active = None
        self._emit({"type": "response.done", "response": self._response_obj(a, status, details)})
        if self._td is not None and self._td.get("idle_timeout_ms"):
            # The idle timer runs from the moment the reply has finished playing.
            self._idle_from_ms = self._audio_ms() + a.audio_ms

    def _cancel(self, reason: str) -> None:
        a = self._active
        assert a is not None
        if a.gen is not None:
            a.gen.close()
            a.gen = None
        if a.item is not None:
            if a.item["type"] == "message":
                self._end_message(a, "incomplete")
            else:
                self._close_item(a, {**a.item, "status": "incomplete"})
        self._finish(a, "cancelled", {"type": "cancelled", "reason": reason})
