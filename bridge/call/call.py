"""``Call``: one phone call between a media leg and a Realtime session.

Theory of operation
-------------------
A ``Call`` wires the parts of one call and runs its lifecycle; the parts do the work:

    state.py     CallStateMachine   the lifecycle (setting up ... ended), one transition table
    inbound.py   InboundAudio       leg frames -> resample / encode / passthrough -> append
    playout.py   Playout            deltas -> one paced frame per clock tick -> leg
    speech.py    SpeechLog          responses, items, barge-in accounting, transcript, spans
    tools.py     ToolRunner         the model's function calls through the dialplan
    control.py   CallControl        transfer, hang up, send DTMF (what tools may do)
    dtmf.py      DtmfActions        what a key press does
    fallback.py  Fallback           announce, then transfer or hang up
    outage.py    Outage             hold signal while the upstream is reconnected; counted
    recorder.py  Recorder           the only place that saves the record
    recording.py CallRecording      the stereo WAV of what each side heard ([recording])
    redaction.py CallRedaction      values masked, and deleted upstream after use ([redaction])
    timers.py    clock timers       limits and deadlines on the injected media clock

Everything of one call runs in ONE ``asyncio.TaskGroup``: the task reading the upstream
events, the tool runs, the record saves, DTMF actions. Limits (max duration, caller
silence) are timers on the media clock: they cost nothing until they fire. Ending for any
reason goes through ``end(reason)``, which the state machine accepts only where the table
allows that reason; the group is then cancelled, the Realtime client closed, the leg hung
up (idempotent), the parts unsubscribed from the clock and the record written.
``asyncio.CancelledError`` is never swallowed: a cancelled ``run()`` still writes the
record (reason ``shutdown``) and then re-raises.

Media never creates a task: the leg hands inbound frames straight to ``InboundAudio``
(the call's ``on_leg_audio`` *is* its ``on_frame``), and outbound audio goes into the
``Playout``, which the shared ``MediaClock`` drives.

Upstream events are handled through a dispatch table keyed by event type (dispatch.py).

Barge-in (docs/realtime-protocol.md §6)
---------------------------------------
On ``SpeechStarted`` while agent audio is playing or a response is active: the playout is
flushed at once (the next tick plays no agent audio), ``heard_ms`` of the item being heard
is read, ``conversation.item.truncate`` is sent at ``min(heard_ms, received_ms)`` (skipped
at 0: truncating an item with no audio errors), later deltas of the interrupted response
are dropped, and ``response.cancel`` is sent only when ``interrupt_response`` is off (the
server cancels by itself otherwise) or the interruption is our own (DTMF action).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any, Protocol

from bridge.call import recording
from bridge.call.analysis import CallAnalyser
from bridge.call.clock import MediaClock, TimerHandle
from bridge.call.control import CallControl
from bridge.call.dispatch import handler_tables
from bridge.call.dtmf import DtmfActions
from bridge.call.early import EarlyUpstream, apply_budget, new_call_id
from bridge.call.events import (
    BargedIn,
    CallEnded,
    CallEvent,
    CallStarted,
    StateChanged,
    TranscriptAdded,
)
from bridge.call.fallback import DEFAULT_FALLBACK_TONES, Fallback
from bridge.call.inbound import InboundAudio
from bridge.call.leg import SESSION_EXPIRED, MediaLeg
from bridge.call.outage import Outage
from bridge.call.playout import BYTES_PER_MS, Playout
from bridge.call.recorder import Recorder
from bridge.call.records import BargeIn, CallRecord, RecordStore
from bridge.call.redaction import attach_redaction
from bridge.call.speech import SpeechLog
from bridge.call.state import CallState, CallStateMachine, EndReason, Key, Trigger
from bridge.call.timers import OneShot, clock_timeout
from bridge.call.tools import ToolRunner
from bridge.call.turns import TurnDriver
from bridge.dialplans.plan import Dialplan
from bridge.errors import BridgeError, RealtimeError
from bridge.realtime import events as ev
from bridge.realtime.profile import SessionProfile

log = logging.getLogger(__name__)


class RealtimeSession(Protocol):
    """What the call uses of ``bridge.realtime.client.RealtimeClient``."""

    async def connect(self) -> None: ...

    def events(self) -> AsyncIterator[ev.Event]: ...

    def append_audio(self, data: bytes) -> None: ...

    async def create_response(self, instructions: str | None = None) -> None: ...

    async def cancel_response(self) -> None: ...

    async def truncate(self, item_id: str, audio_end_ms: int) -> None: ...

    async def send_tool_output(self, call_id: str, output: str) -> None: ...

    async def add_user_text(self, text: str) -> None: ...

    async def clear_input_audio(self) -> None: ...

    async def commit_input_audio(self) -> None: ...

    def set_playout_active(self, active: bool) -> None: ...

    @property
    def response_active(self) -> bool: ...

    async def close(self) -> None: ...


#: Builds the Realtime client of a call: ``factory(profile, log)``.
RealtimeFactory = Callable[[SessionProfile, "logging.LoggerAdapter[Any]"], RealtimeSession]
#: Receives the call's events for the dashboard (cheap; must not block).
EventHook = Callable[[CallEvent], None]


class CallLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """Prefixes every message with the call id."""

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        return f"[{self.extra['call_id'] if self.extra else '?'}] {msg}", kwargs


class _CallEnded(BridgeError):
    """Raised inside the task group to end it (never escapes ``run``)."""


class Call:
    """One call. ``await call.run()`` returns the record once the call has ended."""

    def __init__(self, leg: MediaLeg, dialplan: Dialplan, realtime_factory: RealtimeFactory,
                 clock: MediaClock, store: RecordStore, *, call_id: str | None = None,
                 connect_timeout_s: float = 10.0, drain_timeout_s: float = 10.0,
                 close_timeout_s: float = 2.0, on_event: EventHook | None = None,
                 append_ms: int = 20, early: EarlyUpstream | None = None,
                 recordings_path: str = "") -> None:
        if append_ms % leg.frame_ms or not 0 < append_ms <= 100:
            raise ValueError(f"append_ms must be a multiple of {leg.frame_ms} up to 100")
        self.leg = leg
        self.dialplan = dialplan
        self.clock = clock
        self.store = store
        #: the upstream opened while the call was set up (bridge.call.early), if any
        self._early = early
        self.call_id = early.call_id if early is not None else call_id or new_call_id()
        self.caller = leg.info.caller
        self.called = leg.info.called
        self.log = CallLog(log, {"call_id": self.call_id})
        self._factory = realtime_factory
        self.connect_timeout_s = connect_timeout_s
        self.close_timeout_s = close_timeout_s
        self._on_event = on_event
        self.state = CallStateMachine(self.log, on_change=self._on_state)
        self.profile = dialplan.session_profile(leg_g711=leg.g711)
        fmt = self.profile.audio_format
        if fmt in ("pcmu", "pcma"):
            leg.carry_encoded(fmt)           # true passthrough where the leg can carry it
        self.record = CallRecord(
            call_id=self.call_id, leg_call_id=leg.info.call_id, source=leg.info.source.value,
            caller=self.caller, called=self.called, dialplan=dialplan.name,
            started_at=time.time())
        self._client: RealtimeSession | None = None
        self._tg: asyncio.TaskGroup | None = None
        self._ended = asyncio.Event()
        #: set once the call is over and its record written
        self.finished = asyncio.Event()
        self._finish_task: asyncio.Task[None] | None = None
        self._max_timer: TimerHandle | None = None
        #: clock time each barge-in reached the bridge (monotonic seconds)
        self.barge_in_seen: list[float] = []
        self._recordings_path = recordings_path      # [records] recordings_path
        self._recording: recording.CallRecording | None = None
        self._build_parts(fmt, append_ms // leg.frame_ms, drain_timeout_s)
        #: the bridge's own turn handling, where the plan has it (bridge.call.turns)
        self.turns = TurnDriver(self, dialplan.turns) if dialplan.turns is not None else None
        if self.turns is not None:
            self.turns.install(self._sync_handlers, self._async_handlers)

    def _build_parts(self, fmt: str, append_frames: int, drain_timeout_s: float) -> None:
        td = self.profile.turn_detection
        self._server_interrupts = td is not None and td.interrupt_response
        prefix_ms = silence_ms = 0
        if td is not None and td.type == "server_vad":
            # audio_start_ms includes the prefix padding and audio_end_ms the silence
            # waited for (docs/realtime-protocol.md §9; 300 ms is the documented default).
            prefix_ms = 300 if td.prefix_padding_ms is None else td.prefix_padding_ms
            silence_ms = td.silence_duration_ms or 0
        self.recorder = Recorder(self.store, self.record, self.log, self.spawn)
        self.inbound = InboundAudio(self.leg, fmt, self.clock, append_frames=append_frames)
        #: the leg's inbound frames go straight to the inbound path (no hop through here)
        self.on_leg_audio = self.inbound.on_frame
        self.speech = SpeechLog(self.record, prefix_ms=prefix_ms, silence_ms=silence_ms,
                                bytes_per_ms=BYTES_PER_MS[fmt],
                                sent_bytes=lambda: self.inbound.sent_bytes, wall=time.time)
        self.playout = Playout(self.leg, audio_format=fmt,
                               on_first_frame=self.speech.first_frame,
                               on_active=self._on_playout_active,
                               on_span=self.speech.agent_span,
                               on_hold=self._on_leg_hold)
        self.control = CallControl(self, drain_timeout_s)
        self.tools = ToolRunner(self)
        self.dtmf = DtmfActions(self)
        self.fallback = Fallback(self)
        self.outage = Outage(self)
        self.analyser = CallAnalyser(self)
        self.redaction = attach_redaction(self)
        self._silence = OneShot(self.clock, lambda: self.end(EndReason.CALLER_SILENCE))
        self._sync_handlers, self._async_handlers = handler_tables(self)

    # ================================================================== the parts' view
    @property
    def client(self) -> RealtimeSession | None:
        return self._client

    @property
    def upstream_usable(self) -> bool:
        """The upstream may still be talked to (not replaced by the fallback)."""
        return self._client is not None and self.record.fallback is None

    @property
    def ended(self) -> bool:
        return self.state.over

    def comfort_wanted(self) -> bool:
        """The caller is waiting on us (connecting, reconnecting, a transfer, a tool): the
        comfort beep covers any silence longer than 1.5 s."""
        return self.tools.running > 0 or self.state.in_(
            CallState.CONNECTING, CallState.RECONNECTING, CallState.TRANSFERRING)

    def spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        """Run ``coro`` in the call's task group (dropped if the call is over)."""
        if self._tg is None or self.state.over:
            coro.close()
            return
        self._tg.create_task(coro, name=f"{self.call_id}-{name}")

    def emit(self, event: CallEvent) -> None:
        if self._on_event is not None:
            try:
                self._on_event(event)
            except Exception:
                self.log.exception("call event hook failed")

    def _on_state(self, old: CallState, new: CallState, _trigger: Key) -> None:
        self.emit(StateChanged(call_id=self.call_id, state=new.value, previous=old.value))

    # ================================================================== lifecycle
    async def run(self) -> CallRecord:
        self.speech.mono_to_wall = time.time() - self.clock.time()
        self.leg.poll = self.clock.poll             # the leg's preemption point per frame
        self._recording = recording.start(self, self._recordings_path)   # before attach
        self.leg.attach(self)
        self.clock.subscribe(self.playout, first=True)
        self.clock.subscribe(self.inbound)             # inbound gap filling (on_tick)
        rec = self.record
        self.log.info("call from %r to %r on %s, dialplan %s", self.caller, self.called,
                      rec.source, self.dialplan.name)
        self.emit(CallStarted(call_id=self.call_id, source=rec.source, caller=self.caller,
                              called=self.called, dialplan=self.dialplan.name))
        self.state.fire(Trigger.START)
        self._max_timer = self.clock.call_later(self.dialplan.limits.max_call_s,
                                                lambda: self.end(EndReason.MAX_DURATION))
        await self.recorder.save()
        try:
            try:
                async with asyncio.TaskGroup() as tg:
                    self._tg = tg
                    tg.create_task(self._session(), name=f"{self.call_id}-session")
                    tg.create_task(self._until_ended(), name=f"{self.call_id}-end")
            except* _CallEnded:
                pass
            except* Exception as group:
                for exc in group.exceptions:
                    self.log.error("call failed: %r", exc, exc_info=exc)
                self.end(EndReason.ERROR, type(group.exceptions[0]).__name__)
        except asyncio.CancelledError:
            # Cancelled from outside (shutdown): still clean up and write the record.
            self.end(EndReason.SHUTDOWN)
            await self._finish()
            raise
        await self._finish()
        return self.record

    async def _until_ended(self) -> None:
        await self._ended.wait()
        raise _CallEnded

    def end(self, reason: EndReason | str, detail: str = "") -> None:
        """End the call (the first reason the state allows wins). Safe to call from
        anywhere, any number of times."""
        if isinstance(reason, str):
            text = reason
            try:
                reason = EndReason(text)
            except ValueError:      # an operator's own words: recorded as the detail
                detail = detail or text
                reason = EndReason.OPERATOR
        if not self.state.fire(reason):
            return
        self.record.end_reason = reason.value
        self.record.end_detail = detail
        self.log.info("call ends: %s%s", reason.value, f" ({detail})" if detail else "")
        self._ended.set()

    async def _finish(self) -> None:
        """Clean up and write the record, in a task of its own: a second cancellation
        (a shutdown running out of patience) cannot stop the record being written."""
        if self._finish_task is None:
            self._finish_task = asyncio.get_running_loop().create_task(
                self._finish_inner(), name=f"{self.call_id}-finish")
        await asyncio.shield(self._finish_task)

    async def _finish_inner(self) -> None:
        self.inbound.close()
        self._tg = None
        if self._max_timer is not None:
            self._max_timer.cancel()
        self._silence.cancel()
        self.analyser.close()
        self.clock.unsubscribe(self.playout)
        self.clock.unsubscribe(self.inbound)
        recording.stop(self, self._recording)
        # The record first: it is complete now, and the far ends may be slow to close.
        self.playout.close_span()
        ended = self.record.ended_at = time.time()
        self.speech.close(ended)
        await self.recorder.save()
        await asyncio.gather(self._close_client(), self._hang_up_leg())
        self.state.fire(Trigger.FINISHED)
        self.emit(CallEnded(call_id=self.call_id, reason=self.record.end_reason or "",
                            source=self.record.source))
        self.finished.set()

    async def _close_client(self) -> None:
        if self._client is not None:
            try:
                async with clock_timeout(self.clock, self.close_timeout_s):
                    await self._client.close()
            except Exception as exc:     # closing is best effort
                self.log.warning("closing the Realtime client failed: %r", exc)

    async def _hang_up_leg(self) -> None:
        try:
            await self.leg.hang_up(self.record.end_reason or "")
        except Exception as exc:
            self.log.warning("hanging up the leg failed: %r", exc)

    # ================================================================== upstream session
    async def _session(self) -> None:
        self.playout.comfort = True        # a beep if connecting takes long
        try:
            early, self._early = self._early, None
            client = self._factory(self.profile, self.log) if early is None else early.client
            self._client = client
            if hasattr(client, "on_message"):
                client.on_message = self.clock.poll   # the connection's preemption point
            async with clock_timeout(self.clock, self.connect_timeout_s):
                if early is None:
                    apply_budget(client, self.dialplan)
                    await client.connect()
                else:
                    await early.connecting            # opened during the call's set-up
        except (RealtimeError, TimeoutError, OSError) as exc:
            self.log.warning("upstream unavailable at connect: %r", exc)
            await self.fallback.run(f"connect: {type(exc).__name__}")
            return
        except Exception as exc:
            # Whatever else stops us from having an upstream (a token provider, a bad
            # target): the caller still gets the fallback, never dead air.
            self.log.exception("could not set up the upstream")
            await self.fallback.run(f"connect: {type(exc).__name__}")
            return
        greeting = recording.consent_greeting(self, self.dialplan.agent.greeting)
        await recording.play_consent(self)
        if self.state.over or not self.state.fire(
                Trigger.GREET if greeting else Trigger.CONNECTED):
            return
        self.playout.comfort = self.comfort_wanted()    # a transfer may be pending
        self.inbound.open(client, self.clock.time())
        self.record.connected_at = time.time()
        self._arm_silence()
        try:
            if greeting:
                await client.create_response(instructions=greeting)
            await self._pump(client)
        except Exception as exc:
            # The one boundary for our own bugs: the call falls back instead of the
            # caller being cut off (CancelledError is not an Exception: it propagates).
            self.log.exception("call logic failed")
            self.record.errors.append(f"internal: {type(exc).__name__}")
            await self.fallback.run(f"internal error: {type(exc).__name__}")
            return
        if not self.state.over:
            await self.fallback.run("upstream event stream ended")

    async def _pump(self, client: RealtimeSession) -> None:
        """Hand every upstream event to its handler (dispatch table by type)."""
        sync, asyn = self._sync_handlers, self._async_handlers
        async for event in client.events():
            handler = sync.get(type(event))
            if handler is not None:
                handler(event)
                continue
            ahandler = asyn.get(type(event))
            if ahandler is not None:
                await ahandler(event)
            if self.record.fallback is not None:
                return

    # ================================================================== the leg's sink
    def on_leg_dtmf(self, digit: str) -> None:
        self.dtmf.on_digit(digit)

    def on_leg_hangup(self, reason: str) -> None:
        self.end(EndReason.SESSION_EXPIRED if reason == SESSION_EXPIRED
                 else EndReason.CALLER_HANGUP, reason)

    def _on_leg_hold(self, held: bool) -> None:
        """The far end put the call on hold (or took it off): what the caller's line
        carried meanwhile (hold music, a side conversation) must not start a turn."""
        self.log.info("the caller %s", "put the call on hold" if held else "is back")
        if self.turns is not None:
            self.turns.input_cleared()
        self.spawn(self.control.clear_input(), "clear-input")

    # ================================================================== upstream events
    def _move(self, trigger: Key, *when: CallState) -> None:
        """Fire ``trigger`` if the call is in one of ``when`` (every state if none)."""
        if not when or self.state.state in when:
            self.state.fire(trigger)

    def _on_session_ready(self, e: ev.SessionReady) -> None:
        if e.session_id not in self.record.session_ids:
            self.record.session_ids.append(e.session_id)

    def _on_reconnecting(self, e: ev.Reconnecting) -> None:
        self.log.warning("upstream reconnecting (attempt %d): %s", e.attempt, e.reason)
        self.playout.comfort = True
        self.outage.begin()
        self._move(Trigger.RECONNECTING, CallState.GREETING, CallState.CONVERSING,
                   CallState.RECONNECTING, CallState.TRANSFERRING)

    def _on_reconnected(self, e: ev.Reconnected) -> None:
        self.outage.end("reconnected")
        self.record.session_ids.append(e.session_id)
        self.speech.new_session()
        self._move(Trigger.RECONNECTED, CallState.RECONNECTING, CallState.TRANSFERRING)
        self.playout.comfort = self.comfort_wanted()

    def _on_session_rotated(self, e: ev.SessionRotated) -> None:
        self.log.info("upstream session rotated")
        if e.session_id not in self.record.session_ids:
            self.record.session_ids.append(e.session_id)
        self.speech.new_session()
        self.recorder.save_soon()

    def _on_server_error(self, e: ev.ServerError) -> None:
        self.log.warning("upstream error %s: %s", e.code, e.message)
        self.record.errors.append(f"{e.code}: {e.message}")

    async def _on_upstream_lost(self, e: ev.UpstreamLost) -> None:
        self.log.warning("upstream lost: %s", e.reason)
        await self.fallback.run(("auth: " if e.fatal_auth else "") + e.reason)

    def _on_audio_delta(self, e: ev.AudioDelta) -> None:
        if self.speech.play_delta(e.response_id, e.item_id, self.clock.time()):
            self.playout.push(e.item_id, e.audio)

    def _on_audio_done(self, e: ev.AudioDone) -> None:
        if self.speech.audio_done(e.response_id):
            self.playout.end_of_response()

    def _on_transcript_done(self, e: ev.TranscriptDone) -> None:
        if self.speech.transcript_done(e.response_id, e.item_id, e.transcript):
            self.emit(TranscriptAdded(call_id=self.call_id, role="agent", text=e.transcript))

    async def _on_response_done(self, e: ev.ResponseDone) -> None:
        if self.speech.audio_done(e.response_id):
            self.playout.end_of_response()
        interrupted = self.speech.response_done(e.response_id)
        self.record.add_usage(e.usage)
        if e.status == "failed":
            self.record.errors.append(f"response failed: {e.reason or e.error}")
        self.tools.response_done(e.response_id, e.status, interrupted)
        self._move(Trigger.GREETED, CallState.GREETING)
        self.recorder.save_soon()

    def _on_user_transcript(self, e: ev.UserTranscript) -> None:
        self.speech.user_transcript(e.item_id, e.transcript)
        if self.redaction is not None:
            self.redaction.user_transcript(e.item_id, e.transcript)
        self.emit(TranscriptAdded(call_id=self.call_id, role="caller", text=e.transcript))
        self.analyser.caller_turn(e.item_id)
        self.recorder.save_soon()

    # ---------------------------------------------------------------- caller turns
    async def _on_speech_started(self, e: ev.SpeechStarted) -> None:
        seen = self.clock.time()
        self._silence.cancel()
        self.speech.speech_started(e.item_id, e.audio_start_ms)
        self._move(Trigger.GREETED, CallState.GREETING)
        client = self._client
        if self.playout.playing or (client is not None and client.response_active):
            await self.barge_in(seen, own=False)

    def _on_speech_stopped(self, e: ev.SpeechStopped) -> None:
        self.speech.speech_stopped(e.item_id, e.audio_end_ms, self.clock.time())
        self._arm_silence()

    async def barge_in(self, seen_at: float, *, own: bool) -> None:
        """Stop agent audio now and tell the upstream what was heard
        (docs/realtime-protocol.md §6)."""
        self.barge_in_seen.append(seen_at)
        item, heard, received, dropped = self.playout.barge_in(seen_at)
        self.speech.barged_in(item, heard, received)
        client = self._client
        truncated: int | None = None
        if item is not None and client is not None:
            # At 0 ms the client only trims its history (truncating an item with no audio
            # is an error on the wire, docs/realtime-protocol.md §6.3), so the conversation
            # it would re-seed after a reconnect holds what the caller heard, and no more.
            truncated = min(heard, received) if heard > 0 else None
            try:
                await client.truncate(item, truncated or 0)
            except RealtimeError as exc:
                self.log.warning("truncate failed: %r", exc)
        if item is not None:
            self.record.barge_ins.append(
                BargeIn(time.time(), item, heard, received, truncated, dropped))
            self.emit(BargedIn(call_id=self.call_id, item_id=item, heard_ms=heard))
            self.recorder.save_soon()
        if client is not None and client.response_active and (own or
                                                              not self._server_interrupts):
            try:
                await client.cancel_response()
            except RealtimeError as exc:
                self.log.warning("response.cancel failed: %r", exc)

    # ---------------------------------------------------------------- caller silence
    def _on_playout_active(self, active: bool) -> None:
        if self._client is not None:
            self._client.set_playout_active(active)
        if active:
            self._silence.cancel()
        else:
            self._arm_silence()

    def caller_active(self, talking: bool) -> None:
        """The bridge's own VAD heard the caller start (or finish) a turn."""
        if talking:
            self._silence.cancel()
        else:
            self._arm_silence()

    def _arm_silence(self) -> None:
        limit = self.dialplan.limits.caller_silence_s
        if (limit is None or not self.state.talking or self.speech.caller_speaking
                or self.playout.active):
            return
        self._silence.arm(limit)


__all__ = ["DEFAULT_FALLBACK_TONES", "Call", "CallLog", "EventHook", "RealtimeFactory",
           "RealtimeSession"]
