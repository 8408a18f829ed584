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
either acts or answers one ``error`` event echoing the client's ``event_id``. The session
is four parts sharing one :class:`~bridge.realtime.emulator.outbox.Outbox` (ids, events,
errors): the input audio buffer and turn detection (``input_audio.py``), the conversation
(``conversation.py``), the response generator (``responses.py``: a response is a generator
that emits its events and yields the pause before its next audio delta, so a barge-in or
``response.cancel`` can stop it between deltas and close what it left open, every
``*.done`` event still sent with an ``incomplete``/``cancelled`` status), and this core:
the session configuration, the timers, the script's rules and what the agent answers.

The session is kept in the GA shape; a preview session is translated at the edge
(``dialect.py``).
"""

from __future__ import annotations

import heapq
import json
from collections.abc import Callable, Mapping
from typing import Any

from bridge.realtime.emulator.analysis import answer
from bridge.realtime.emulator.audio import PCM16, AudioFormat, convert, tone
from bridge.realtime.emulator.conversation import Conversation
from bridge.realtime.emulator.dialect import (
    SessionUpdateError,
    apply_update,
    default_session,
    output_format,
)
from bridge.realtime.emulator.input_audio import MIN_COMMIT_MS, InputAudio
from bridge.realtime.emulator.outbox import DUMPS, Close, Outbox, elide
from bridge.realtime.emulator.record import SessionRecord
from bridge.realtime.emulator.request import (
    MAX_OUT_OF_BAND,
    Refusal,
    item_texts,
    parse_request,
)
from bridge.realtime.emulator.responses import CHUNK_MS, Call, Fail, Responses, Say, Step
from bridge.realtime.emulator.script import Rule, Script
from bridge.realtime.emulator.transcription import (
    TranscriptionJob,
    apply_transcription_update,
    transcription_events,
    transcription_view,
)

__all__ = ["CHUNK_MS", "MIN_COMMIT_MS", "Close", "SessionCore"]

#: a client event's handler: ``(event, its event_id, now)``
Handler = Callable[[dict[str, Any], str | None, float], None]


class SessionCore:
    """The server side of one Realtime session (see the module docstring)."""

    def __init__(self, record: SessionRecord, *, dialect: str, model: str, now: float,
                 wall_time: float, session_max_s: float = 1800.0, greeting_ms: int = 1200,
                 script: Script | None = None, speech: Mapping[str, bytes] | None = None,
                 session_index: int = 1, pace: float = 4.0) -> None:
        self.record = record
        self._out = out = Outbox(record, preview=dialect == "preview")
        self._emit = out.emit
        self._error = out.error
        out.session = default_session(out.new_id("sess"), model, int(wall_time + session_max_s))
        self._session_max_s = session_max_s
        self._greeting_ms = greeting_ms
        self._script = script
        self._speech = speech or {}
        self._session_index = session_index
        self.closed = False
        self._timers: list[tuple[float, int, str, int]] = []
        self._conv = Conversation(out, self.trigger)
        self._input = InputAudio(out, self._conv, self)
        self._responses = Responses(out, self._conv, self._input, pace=pace)
        self._planned: Rule | None = None
        self._fired: set[int] = set()
        self._handlers: dict[str, Handler] = {
            "session.update": self._on_session_update,
            "input_audio_buffer.append": self._input.on_append,
            "input_audio_buffer.commit": self._input.on_commit,
            "input_audio_buffer.clear": self._input.on_clear,
            "conversation.item.create": self._conv.on_item_create,
            "conversation.item.truncate": self._conv.on_truncate,
            "conversation.item.delete": self._conv.on_item_delete,
            "conversation.item.retrieve": self._conv.on_item_retrieve,
            "response.create": self._on_response_create,
            "response.cancel": self._on_response_cancel,
        }
        if dialect == "preview":
            self._handlers["transcription_session.update"] = self._on_transcription_update
        self._input.configure(out.session)
        record.session_id = out.session["id"]

    # --- public surface -----------------------------------------------------------------

    @property
    def session_id(self) -> str:
        return str(self._out.session["id"])

    @property
    def response_active(self) -> bool:
        return self._responses.active is not None

    def start(self, now: float) -> None:
        """Send ``session.created`` and arm the expiry."""
        view = self._out.session_view()
        self.record.config = json.loads(DUMPS(view))
        self._emit({"type": "session.created", "session": view})
        self._schedule(now + self._session_max_s, "expire", 0)
        self.trigger("on_session", self._session_index, now)

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
            self.record.received.append(elide(event))
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
        self._responses.pump(now)

    def receive_bytes(self, data: bytes, now: float) -> None:
        if self.closed:
            return
        self.record.received_types.append("<binary>")
        self._error("invalid_event", "Binary frames are not supported: send JSON events as "
                    "text frames.")

    def next_deadline(self) -> float | None:
        deadline = self._timers[0][0] if self._timers else None
        at = self._responses.deadline()
        if at is not None:
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
            self._responses.pump(now)

    def take_jobs(self) -> list[TranscriptionJob]:
        """Committed turns of a transcription session to recognise (``transcription.py``);
        each one's text comes back through :meth:`finish_job`."""
        jobs, self._input.jobs = self._input.jobs, []
        return jobs

    def finish_job(self, job: TranscriptionJob, text: str | None) -> None:
        """The words of ``job`` (None: the placeholder): its deltas and ``completed``."""
        if self.closed:
            return
        for event in transcription_events(job.item_id, len(job.audio) / job.fmt.bytes_per_ms
                                          / 1000.0, job.committed_ms, text, words=True):
            self._emit(event)

    def take_output(self) -> list[str | Close]:
        return self._out.take()

    @property
    def has_output(self) -> bool:
        return self._out.has_output

    def abandon(self, code: int | None) -> None:
        """The socket is gone: stop everything, write the record's last words."""
        self.closed = True
        self._timers.clear()
        self._responses.abandon()
        self.record.open = False
        self.record.close_code = code

    # --- what the input audio buffer asks for (``input_audio.TurnHost``) ---------------

    def cancel_response(self, reason: str) -> None:
        self._responses.cancel(reason)

    def start_response(self, trigger: str, now: float) -> None:
        self._start_response(trigger, None, now)

    # --- plumbing -----------------------------------------------------------------------

    def _schedule(self, at: float, kind: str, arg: int) -> None:
        heapq.heappush(self._timers, (at, self._out.seq(), kind, arg))

    def _close(self, code: int, reason: str) -> None:
        self.closed = True
        self._timers.clear()
        self._responses.drop()
        self._out.close(code, reason)

    def _expire(self) -> None:
        minutes = self._session_max_s / 60.0
        self._error("session_expired", f"Your session hit the maximum duration of {minutes:g} "
                    "minutes.")
        self._close(1001, "session expired")

    # --- session ------------------------------------------------------------------------

    def _on_session_update(self, event: dict[str, Any], event_id: str | None,
                           now: float) -> None:
        out = self._out
        update = event.get("session")
        if not out.preview and isinstance(update, dict) and update.get("type") == "transcription":
            self._on_transcription_update(event, event_id, now)
            return
        try:
            session, extras = apply_update(out.session, event.get("session"),
                                           "preview" if out.preview else "ga", out.extras)
        except SessionUpdateError as exc:
            self._error(exc.code, exc.message, param=exc.param, event_id=event_id)
            return
        old_voice = out.session["audio"]["output"]["voice"]
        if self._responses.voice_locked and session["audio"]["output"]["voice"] != old_voice:
            self._error("invalid_value", "Cannot update a conversation's voice if assistant "
                        "audio is present.", param="session.audio.output.voice",
                        event_id=event_id)
            return
        out.session = session
        out.extras = extras
        self._input.configure(session)
        view = out.session_view()
        self.record.config = json.loads(DUMPS(view))
        self.record.session_updates += 1
        self._emit({"type": "session.updated", "session": view})

    def _on_transcription_update(self, event: dict[str, Any], event_id: str | None,
                                 now: float) -> None:
        """A transcription session's configuration (``transcription.py``): GA
        ``session.update`` of type ``transcription``, preview ``transcription_session.update``."""
        out = self._out
        try:
            session = apply_transcription_update(out.session, event.get("session"),
                                                 "preview" if out.preview else "ga")
        except SessionUpdateError as exc:
            self._error(exc.code, exc.message, param=exc.param, event_id=event_id)
            return
        out.session = session
        self._input.configure(session)
        view = transcription_view(session, out.preview)
        self.record.config = json.loads(DUMPS(view))
        self.record.session_updates += 1
        kind = "transcription_session.updated" if out.preview else "session.updated"
        out.append_raw({"type": kind, "session": view})

    # --- responses ----------------------------------------------------------------------

    def _on_response_create(self, event: dict[str, Any], event_id: str | None,
                            now: float) -> None:
        self.record.response_creates += 1
        params = event.get("response")
        req = parse_request(params, self._conv, preview=self._out.preview)
        active = self._responses.active
        if isinstance(params, dict) and params.get("conversation") == "none":
            if len(self._responses.oob) >= MAX_OUT_OF_BAND:
                self._error("too_many_active_responses", "Too many out-of-band responses in "
                            f"progress (at most {MAX_OUT_OF_BAND}). Wait until one is finished "
                            "before creating another.", event_id=event_id)
                return
        elif active is not None:
            self._error("conversation_already_has_active_response", "Conversation already has "
                        f"an active response in progress: {active.rid}. Wait until the "
                        "response is finished before creating a new one.", event_id=event_id)
            return
        if isinstance(req, Refusal):
            self._error(req.code, req.message, param=req.param, event_id=event_id)
            return
        if not req.out_of_band and req.items is None:
            self._start_response("client", req.params, now)
            return
        texts = req.texts if req.items is not None else item_texts(
            [i for i in self._conv.items.values() if i.get("role") == "user"])
        instructions = req.params.get("instructions", self._out.session.get("instructions"))
        self._responses.start("client", req.params, [self._say(answer(instructions, texts))],
                              now, input_ids=req.input_ids, input_texts=req.texts)

    def _on_response_cancel(self, event: dict[str, Any], event_id: str | None,
                            now: float) -> None:
        """Cancel the conversation's response, or any one in progress named by id."""
        wanted = event.get("response_id")
        if wanted is None:
            target = self._responses.active
        else:
            target = self._responses.find(wanted) if isinstance(wanted, str) else None
        if target is None:
            self._error("response_cancel_not_active", "Cancellation failed: no active response "
                        "found.", event_id=event_id)
            return
        self._responses.cancel("client_cancelled", target.rid)

    def heard(self, turn: int) -> str | None:
        """What the script says the caller said in turn ``turn`` (``heard``), if anything."""
        return None if self._script is None else self._script.heard(turn)

    def trigger(self, trigger: str, value: int | str, now: float) -> None:
        """A scripted rule may fire on ``trigger`` (``Script``'s trigger names)."""
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

    def _say(self, text: str) -> Say:
        speech = self._speech.get(text)
        if speech is not None:
            return Say(convert(PCM16, speech, self._out_fmt()), text)
        ms = min(8000, max(400, 60 * len(text)))
        return Say(tone(self._out_fmt(), ms, freqs=(523.25,)), text)

    def _plan(self, trigger: str) -> list[Step]:
        rule, self._planned = self._planned, None
        audio, conv = self._input, self._conv
        echo, audio.pending_echo = audio.pending_echo, None
        texts, conv.pending_texts = conv.pending_texts, []
        tools, conv.pending_tools = conv.pending_tools, []
        steps: list[Step] = []
        if rule is not None:
            if rule.fail:
                return [Fail(rule.fail, rule.message or f"Scripted failure: {rule.fail}.")]
            if rule.echo and echo:
                steps.append(self._echo(echo))
            if rule.say:
                steps.append(self._say(rule.say))
            if rule.call:
                steps.append(Call(rule.call, rule.args))
            return steps
        if echo:
            return [self._echo(echo)]
        if trigger == "idle":
            return [self._tone_say("(idle timeout: are you still there?)")]
        if tools:
            return [self._tone_say(f"(tool output received for {', '.join(tools)})")]
        if texts:
            return [self._tone_say(f"(text received: {texts[-1][:80]})")]
        if audio.turns == 0:
            seconds = self._greeting_ms / 1000.0
            return [Say(tone(self._out_fmt(), self._greeting_ms),
                         f"(greeting: a {seconds:.1f} s tone from the voicebridge emulator)")]
        return [self._tone_say("(no new caller audio to echo)")]

    def _tone_say(self, transcript: str) -> Say:
        return Say(tone(self._out_fmt(), 600, freqs=(523.25,)), transcript)

    def _echo(self, audio: bytes) -> Say:
        in_fmt = self._input.in_fmt
        out = convert(in_fmt, audio, self._out_fmt())
        seconds = len(audio) / in_fmt.bytes_per_ms / 1000.0
        return Say(out, f"(echo of {seconds:.1f} s of caller audio)")

    def _out_fmt(self) -> AudioFormat:
        return output_format(self._out.session)

    def _start_response(self, trigger: str, params: dict[str, Any] | None, now: float) -> None:
        self._responses.start(trigger, params, self._plan(trigger), now)
