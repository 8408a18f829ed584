"""Response bookkeeping of one Realtime call (sans-I/O).

The Realtime API runs one response at a time per conversation (docs/realtime-protocol.md
§5.4). The call asks for responses, cancels them, answers tool calls and reports what the
caller heard; the server starts responses of its own (server VAD) and cancels them when the
caller barges in (§6.4). ``Responses`` keeps the books of all that for ``RealtimeClient``
and decides; the client does the writing. Fed with the internal events of
``bridge.realtime.events`` (``on_event``) and the call's requests, it answers with plain
values -- no asyncio, no sockets, no clock:

* which response is active (``active``: its id, ``""`` while our ``response.create`` is
  unacknowledged, ``None`` when none is) and which ``response.create`` requests wait their
  turn (``request_create`` / ``due_create`` / ``pop_queued``); a create refused because the
  server started one itself at the same moment runs after that one;
* which responses are being cancelled: their audio, transcript deltas, items and function
  calls never reach the call (``Verdict.forward``), and the client tells the event mapper
  (``Verdict.mute``) and, for a cancel it still owes, sends ``response.cancel``
  (``Verdict.send_cancel``);
* each session's assistant items and function calls (``SessionItems``): a truncate of an
  item of an earlier session is not sent, and a tool output for a call made on an earlier
  session first re-creates the call's item (``tool_output``);
* what the caller heard, in ``History``: assistant audio received per item, transcripts,
  caller turns, responses cut off by a barge-in, the heard position of a truncate;
* whether the call is quiet -- no response active or queued, playout idle, caller not
  speaking, no caller turn waiting for server VAD's answer, no tool call outstanding -- the
  only moment the client may swap sessions (``quiet``; ``Verdict.rotate`` says when one may
  have begun);
* what to tell the call when a session dies with a response running (``session_lost``).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from bridge.realtime import events as ev
from bridge.realtime.history import History

#: Function calls remembered for re-creating on a new session (answered ones are popped).
MAX_REMEMBERED_CALLS = 32


@dataclass
class SessionItems:
    """What one session (one socket) holds: its assistant output items, its function calls."""

    items: set[str] = field(default_factory=set)
    call_ids: set[str] = field(default_factory=set)


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the client does about one server event, in this order."""

    forward: bool = True        # hand the event to the call
    mute: str | None = None     # tell the mapper: this response is being cancelled
    send_cancel: bool = False   # ... and send ``response.cancel`` for it now
    pump: bool = False          # a queued ``response.create`` may go out (``due_create``)
    rotate: bool = False        # a quiet moment may have begun: check the rotation


FORWARD = Verdict()
DROP = Verdict(forward=False)
_DONE = Verdict(pump=True, rotate=True)
_ROTATE = Verdict(rotate=True)


@dataclass(frozen=True, slots=True)
class ToolOutputPlan:
    """How to answer a function call: ``recreate`` its item first (the call was made on a
    session since replaced), then send the output -- or drop it (``send`` False)."""

    send: bool
    recreate: ev.FunctionCall | None = None


class Responses:
    """The books of one call's responses; see the module docstring."""

    def __init__(self, history: History, *, bytes_per_ms: float, server_answers: bool,
                 interrupt_response: bool) -> None:
        self.history = history
        self._bytes_per_ms = bytes_per_ms
        self._server_answers = server_answers
        #: the server answers a caller turn by itself (server VAD with create_response)
        self.server_answers = server_answers
        self._interrupt_response = interrupt_response
        self.active: str | None = None          # response id, "" while our create is unacked
        self.playout_active = False
        self._create_event_id: str | None = None
        self._create_instructions: str | None = None
        self._cancel_on_create = False
        self._queued: deque[str | None] = deque()
        self._suppressed: set[str] = set()      # responses being cancelled: no audio, no tools
        self._caller_speaking = False
        # Server VAD ended a caller turn and will answer it on *this* session: swapping
        # sessions before its response.created would lose the caller's words.
        self._answer_due = False
        self._tools_outstanding: set[str] = set()
        self._calls: dict[str, ev.FunctionCall] = {}

    # -- state ----------------------------------------------------------------------------

    @property
    def response_active(self) -> bool:
        return self.active is not None

    def quiet(self) -> bool:
        """Nothing is going on that a session swap could lose."""
        return (self.active is None and not self._queued and not self.playout_active
                and not self._caller_speaking and not self._answer_due
                and not self._tools_outstanding)

    def suppressed(self, response_id: str) -> bool:
        return response_id in self._suppressed

    # -- the call's requests --------------------------------------------------------------

    def request_create(self, instructions: str | None, *, ready: bool) -> bool:
        """The call wants a response. True: send ``response.create`` now; otherwise it is
        queued (a response is active, or no session is ready)."""
        if self.active is not None or not ready:
            self._queued.append(instructions)
            return False
        return True

    def due_create(self) -> bool:
        """A queued ``response.create`` may go out now."""
        return self.active is None and bool(self._queued)

    def pop_queued(self) -> str | None:
        return self._queued.popleft()

    def create_sent(self, event_id: str, instructions: str | None) -> None:
        self.active = ""            # pending until response.created
        self._create_event_id = event_id
        self._create_instructions = instructions

    def create_unsent(self, instructions: str | None) -> None:
        """A create could not be written: it goes back to the head of the queue."""
        self._queued.appendleft(instructions)

    def cancel(self) -> str | None:
        """The call cancels the active response: the id to cancel on the wire now, or
        None (none active, or ours is not acknowledged yet: cancelled once it is)."""
        rid = self.active
        if rid is None:
            return None
        if rid == "":
            self._cancel_on_create = True
            return None
        self._suppressed.add(rid)
        return rid

    def truncate(self, item_id: str, audio_end_ms: int, session: SessionItems | None) -> int:
        """The caller heard ``audio_end_ms`` of ``item_id``: the history is trimmed, and the
        position to send in ``conversation.item.truncate`` is returned -- clamped to the
        audio received; 0 means send nothing (0 ms would be refused, and an item of an
        earlier session is unknown to this one)."""
        received = self.history.audio_ms(item_id)
        heard = max(0, min(int(audio_end_ms), int(received)))
        self.history.heard(item_id, heard)
        if heard <= 0 or session is None or item_id not in session.items:
            return 0
        return heard

    def tool_output(self, call_id: str, session: SessionItems | None) -> ToolOutputPlan:
        """The call answers function call ``call_id`` on ``session`` (None: no live one)."""
        self._tools_outstanding.discard(call_id)
        call = self._calls.pop(call_id, None)
        if session is None or call_id in session.call_ids:
            return ToolOutputPlan(send=True)
        if call is None:
            return ToolOutputPlan(send=False)
        return ToolOutputPlan(send=True, recreate=call)

    def session_lost(self, reason: str) -> ev.ResponseDone | None:
        """A session is gone: close its books so the call never waits on it. Returns the
        ``ResponseDone`` to give the call for a response that was running."""
        rid = self.active
        self.active = None
        self._create_event_id = None
        self._cancel_on_create = False
        self._caller_speaking = False
        self._answer_due = False
        self._tools_outstanding.clear()
        if not rid:
            return None
        return ev.ResponseDone(rid, "failed", "connection_lost", None,
                               {"code": "connection_lost", "message": reason})

    # -- server events --------------------------------------------------------------------

    def on_event(self, event: ev.Event, session: SessionItems) -> Verdict:
        """Book ``event`` (from ``session``) and say what to do about it."""
        handler = _HANDLERS.get(type(event))
        return handler(self, event, session) if handler is not None else FORWARD

    def _response_created(self, event: ev.Event, session: SessionItems) -> Verdict:
        assert isinstance(event, ev.ResponseCreated)
        self.active = event.response_id
        self._answer_due = False
        # _create_event_id stays until this response is done: if the server started this
        # one itself, the refusal of our create arrives after it (see _error).
        if self._cancel_on_create:
            self._cancel_on_create = False
            if event.response_id:
                self._suppressed.add(event.response_id)
                return Verdict(mute=event.response_id, send_cancel=True)
            return Verdict(send_cancel=True)
        return FORWARD

    def _response_done(self, event: ev.Event, session: SessionItems) -> Verdict:
        assert isinstance(event, ev.ResponseDone)
        self._suppressed.discard(event.response_id)
        if self.active in (event.response_id, ""):
            self.active = None
            self._create_event_id = None
        return _DONE

    def _item_added(self, event: ev.Event, session: SessionItems) -> Verdict:
        assert isinstance(event, ev.OutputItemAdded)
        session.items.add(event.item_id)
        if event.item_type == "message":
            self.history.assistant_item(event.item_id, event.response_id)
        return DROP if event.response_id in self._suppressed else FORWARD

    def _audio(self, event: ev.Event, session: SessionItems) -> Verdict:
        assert isinstance(event, ev.AudioDelta)
        if event.response_id in self._suppressed:
            return DROP
        self.history.assistant_audio(event.item_id, len(event.audio) / self._bytes_per_ms)
        return FORWARD

    def _transcript_delta(self, event: ev.Event, session: SessionItems) -> Verdict:
        assert isinstance(event, ev.TranscriptDelta)
        return DROP if event.response_id in self._suppressed else FORWARD

    def _transcript_done(self, event: ev.Event, session: SessionItems) -> Verdict:
        assert isinstance(event, ev.TranscriptDone)
        self.history.assistant_transcript(event.item_id, event.transcript)
        return FORWARD

    def _function_call(self, event: ev.Event, session: SessionItems) -> Verdict:
        assert isinstance(event, ev.FunctionCall)
        if event.response_id in self._suppressed:
            return DROP
        session.call_ids.add(event.call_id)
        self._tools_outstanding.add(event.call_id)
        self._calls[event.call_id] = event
        while len(self._calls) > MAX_REMEMBERED_CALLS:   # bound the never-answered ones
            del self._calls[next(iter(self._calls))]
        return FORWARD

    def _speech_started(self, event: ev.Event, session: SessionItems) -> Verdict:
        self._caller_speaking = True
        # docs/realtime-protocol.md §6.4: with interrupt_response the server cancels the
        # running response itself; what it still sends of it is stale audio the caller must
        # not hear.
        rid = self.active
        if rid and self._interrupt_response:
            self._suppressed.add(rid)
            self.history.interrupted(rid)
            return Verdict(mute=rid)
        return FORWARD

    def _speech_stopped(self, event: ev.Event, session: SessionItems) -> Verdict:
        self._caller_speaking = False
        self._answer_due = self._server_answers
        return _ROTATE

    def _input_timeout(self, event: ev.Event, session: SessionItems) -> Verdict:
        # The server commits the silence and answers it (a "still there?").
        self._answer_due = self._server_answers
        return FORWARD

    def _committed(self, event: ev.Event, session: SessionItems) -> Verdict:
        assert isinstance(event, ev.InputCommitted)
        self._caller_speaking = False
        self.history.user_turn(event.item_id)
        return FORWARD

    def _user_transcript(self, event: ev.Event, session: SessionItems) -> Verdict:
        assert isinstance(event, ev.UserTranscript)
        self.history.user_transcript(event.item_id, event.transcript)
        return FORWARD

    def _error(self, event: ev.Event, session: SessionItems) -> Verdict:
        assert isinstance(event, ev.ServerError)
        if (event.code == "conversation_already_has_active_response"
                and event.event_id is not None and event.event_id == self._create_event_id):
            # Our create collided with one the server started itself (server VAD): run it
            # after that one is done instead (unless the call has cancelled it meanwhile).
            if self._cancel_on_create:
                self._cancel_on_create = False
            else:
                self._queued.appendleft(self._create_instructions)
            self._create_event_id = None
            if self.active == "":
                self.active = None
        return FORWARD

    def _session_created(self, event: ev.Event, session: SessionItems) -> Verdict:
        return DROP   # internal: the client's handshake has handled it


_HANDLERS: dict[type, Callable[[Responses, ev.Event, SessionItems], Verdict]] = {
    ev.ResponseCreated: Responses._response_created,
    ev.ResponseDone: Responses._response_done,
    ev.OutputItemAdded: Responses._item_added,
    ev.AudioDelta: Responses._audio,
    ev.TranscriptDelta: Responses._transcript_delta,
    ev.TranscriptDone: Responses._transcript_done,
    ev.FunctionCall: Responses._function_call,
    ev.SpeechStarted: Responses._speech_started,
    ev.SpeechStopped: Responses._speech_stopped,
    ev.InputTimeout: Responses._input_timeout,
    ev.InputCommitted: Responses._committed,
    ev.UserTranscript: Responses._user_transcript,
    ev.ServerError: Responses._error,
    ev.SessionCreated: Responses._session_created,
}

__all__ = ["DROP", "FORWARD", "MAX_REMEMBERED_CALLS", "Responses", "SessionItems",
           "ToolOutputPlan", "Verdict"]
