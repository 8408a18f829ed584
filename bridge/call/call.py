"""``Call``: one phone call between a media leg and a Realtime session.

Theory of operation
-------------------
A ``Call`` owns everything of one call in ONE ``asyncio.TaskGroup``: the task reading the
upstream events, the tool runs, the record saves, DTMF actions. Limits (max duration,
caller silence) are loop timer handles, not tasks: they cost nothing until they fire.
Ending for any reason (caller hangs up, agent hangs up, transfer, a limit, upstream lost,
shutdown) goes through ``end(reason)``: the group is cancelled, the Realtime client closed,
the leg hung up (idempotent), the playout unsubscribed from the clock and the record
written. ``asyncio.CancelledError`` is never swallowed: a cancelled ``run()`` still writes
the record (reason ``shutdown``) and then re-raises.

Media never creates a task: inbound frames arrive on the leg's callback and go straight
through the inbound resampler (or G.711 encode) into ``client.append_audio``; outbound
audio goes into the ``Playout``, which the shared ``MediaClock`` drives.

Gaps in the caller's audio (the end of a recording, silence suppression / DTX, comfort
noise) would leave server VAD waiting for the end of the turn forever: it counts audio
time. On each clock tick the call asks ``InboundGaps`` (gaps.py) whether caller audio has
stopped for more than ~3 ticks and, if so, appends silence in the upstream format for
each missing tick, never doubling up real audio that is merely jittery.

Upstream events are handled through a dispatch table keyed by event type.

Barge-in (PROTOCOL.md §6)
-------------------------
On ``SpeechStarted`` while agent audio is playing or a response is active: the playout is
flushed at once (the next tick plays no agent audio), ``heard_ms`` of the item being heard
is read, ``conversation.item.truncate`` is sent at ``min(heard_ms, received_ms)`` (skipped
at 0: truncating an item with no audio errors), later deltas of the interrupted response
are dropped, and ``response.cancel`` is sent only when ``interrupt_response`` is off (the
server cancels by itself otherwise) or the interruption is our own (DTMF action).

The agent transcript is trimmed to what was heard in proportion to audio: the text
received so far is cut at ``len(text) * heard_ms / received_ms`` (back to a word
boundary). Transcript deltas run ahead of the audio, so this is an estimate; it is exact
when the whole item had arrived.

Tools (PROTOCOL.md §5)
----------------------
``FunctionCall`` events are collected per response and dispatched only once that
response's ``ResponseDone`` says ``completed``: a call from a cancelled, failed or
interrupted response never runs. All calls of a response run concurrently through the
dialplan's registry (which never raises), each answered with ``send_tool_output``; one
``create_response`` follows when all outputs are in, unless a tool ended the call.
A transfer or hang-up requested by a tool first waits (≤ ``drain_timeout_s``) for the
model's last words to play out, and the call ends after the tool's result is recorded.

Failures
--------
If the upstream cannot be had at connect (error or ``connect_timeout_s``) or is lost beyond
reconnect (``UpstreamLost``), the dialplan's fallback runs: its announcement (or tones) is
played through the playout at the next tick and then the call is transferred to the
fallback target or hung up. While connecting or reconnecting, a comfort beep plays after
1.5 s of silence, so there is no dead air longer than 2 s on any failure path.
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Protocol

from bridge.call.batch import upstream_batch
from bridge.call.clock import MediaClock
from bridge.call.gaps import InboundGaps
from bridge.call.leg import MediaLeg, TransferOutcome
from bridge.call.playout import BYTES_PER_MS, Playout
from bridge.call.records import (
    BargeIn,
    CallRecord,
    DtmfRecord,
    RecordStore,
    SpeechSpan,
    ToolCallRecord,
    TranscriptEntry,
    TurnLatency,
)
from bridge.codecs import g711
from bridge.codecs.resample import StreamResampler, inbound_resampler
from bridge.dialplans.announce import load_announcement
from bridge.dialplans.plan import Dialplan, DtmfAction
from bridge.errors import BridgeError, RealtimeError
from bridge.realtime import events as ev
from bridge.realtime.profile import SessionProfile

log = logging.getLogger(__name__)

DEFAULT_FALLBACK_TONES = "440:300,0:200,440:300,0:200,440:300"


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

    def set_playout_active(self, active: bool) -> None: ...

    @property
    def response_active(self) -> bool: ...

    async def close(self) -> None: ...


#: Builds the Realtime client of a call: ``factory(profile, log)``.
RealtimeFactory = Callable[[SessionProfile, "logging.LoggerAdapter[Any]"], RealtimeSession]
#: Receives the call's events for the dashboard (cheap; must not block).
EventHook = Callable[[dict[str, Any]], None]


class CallLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """Prefixes every message with the call id."""

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        return f"[{self.extra['call_id'] if self.extra else '?'}] {msg}", kwargs


class _CallEnded(BridgeError):
    """Raised inside the task group to end it (never escapes ``run``)."""


_KEEP = 64   # per-item bookkeeping kept for this many recent items (long calls stay small)


def _put(d: dict[str, Any], key: str, value: Any) -> None:
    d[key] = value
    if len(d) > _KEEP:
        del d[next(iter(d))]


#: Set inside a tool run: a transfer/hang-up then ends the call after the tool's result.
_IN_TOOL: contextvars.ContextVar[bool] = contextvars.ContextVar("in_tool", default=False)


@dataclass
class _ResponseTools:
    calls: list[ev.FunctionCall] = field(default_factory=list)
    outputs_pending: int = 0


@dataclass
class _Turn:
    """Latency bookkeeping of one reply (monotonic seconds)."""

    speech_stopped: float
    response_id: str | None = None
    first_delta: float | None = None


class Call:
    """One call. ``await call.run()`` returns the record once the call has ended."""

    def __init__(self, leg: MediaLeg, dialplan: Dialplan, realtime_factory: RealtimeFactory,
                 clock: MediaClock, store: RecordStore, *, call_id: str | None = None,
                 connect_timeout_s: float = 10.0, drain_timeout_s: float = 10.0,
                 close_timeout_s: float = 2.0, on_event: EventHook | None = None,
                 append_ms: int = 20) -> None:
        self.leg = leg
        self.dialplan = dialplan
        self.clock = clock
        self.store = store
        self.call_id = call_id or "c_" + uuid.uuid4().hex[:16]
        self.caller = leg.info.caller
        self.called = leg.info.called
        self.log = CallLog(log, {"call_id": self.call_id})
        self._factory = realtime_factory
        self.connect_timeout_s = connect_timeout_s
        self.drain_timeout_s = drain_timeout_s
        self.close_timeout_s = close_timeout_s
        self._on_event = on_event
        if append_ms % leg.frame_ms or not 0 < append_ms <= 100:
            raise ValueError(f"append_ms must be a multiple of {leg.frame_ms} up to 100")
        # Frames per input_audio_buffer.append: 1 (20 ms, the default) costs one WebSocket
        # message per frame; 2 halves that for up to 20 ms more inbound latency
        # (PROTOCOL.md §7: 20-40 ms appends keep server VAD responsive).
        self._append_frames = append_ms // leg.frame_ms
        self._up = bytearray()
        self._up_frames = 0

        self.profile = dialplan.session_profile(leg_g711=leg.g711)
        td = self.profile.turn_detection
        self._server_interrupts = td is not None and td.interrupt_response
        fmt = self.profile.audio_format
        self._g711_in = fmt if fmt in ("pcmu", "pcma") else ""
        self._in_resampler: StreamResampler | None = (
            None if self._g711_in else inbound_resampler(leg.sample_rate))
        self._batch = upstream_batch()
        # Silence standing in for caller audio that stopped coming (gaps.py): one frame
        # in the upstream format, and one at the leg's rate to ring the resampler out.
        self.gaps = InboundGaps(period=leg.frame_ms / 1000)
        self._leg_zero = bytes(leg.frame_bytes)
        if self._g711_in:
            byte = 0xFF if self._g711_in == "pcmu" else 0xD5   # G.711 silence (-0 level)
            self._up_silence = bytes([byte]) * (8 * leg.frame_ms)
        else:
            self._up_silence = bytes(48 * leg.frame_ms)        # PCM16 24 kHz zeros
        self.playout = Playout(leg, audio_format=fmt, on_first_frame=self._on_first_frame,
                               on_active=self._on_playout_active, on_span=self._on_agent_span)
        # Caller speech intervals: session audio time -> when that audio went upstream.
        self._up_bytes = 0          # caller audio handed to the client (all sessions)
        self._up_base = 0           # ... when the current session started
        self._up_bytes_per_ms = BYTES_PER_MS[fmt]
        self._prefix_ms = 0
        self._silence_ms = 0
        if td is not None and td.type == "server_vad":
            # audio_start_ms includes the prefix padding and audio_end_ms the silence
            # waited for (PROTOCOL.md §9; 300 ms is the documented padding default).
            self._prefix_ms = 300 if td.prefix_padding_ms is None else td.prefix_padding_ms
            self._silence_ms = td.silence_duration_ms or 0
        self._caller_open: tuple[str, float] | None = None
        self._mono_to_wall = 0.0

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
        self._ready = False                    # caller audio may flow upstream
        self._fallback_started = False
        self._end_requested: tuple[str, str] | None = None
        self._timers: list[asyncio.TimerHandle] = []
        self._silence_timer: asyncio.TimerHandle | None = None
        self._caller_speaking = False
        self._saving = False
        self._save_again = False
        self._started_mono = 0.0
        self._tools_running = 0

        # response / item bookkeeping
        self._active_response: str | None = None
        self._audio_response: str | None = None        # response whose audio is streaming
        self._item_response: dict[str, str] = {}
        self._interrupted: set[str] = set()             # response ids barged in on
        self._tools: dict[str, _ResponseTools] = {}
        self._agent_text: dict[str, list[str]] = {}
        self._trimmed: set[str] = set()
        self._agent_entry: dict[str, int] = {}       # item -> index in record.transcript
        self._first_frame_wall: dict[str, float] = {}
        self._item_wall: dict[str, float] = {}            # first audio delta arrived
        self._speech_wall: dict[str, float] = {}
        self._turn: _Turn | None = None
        #: clock time each barge-in reached the bridge (monotonic seconds)
        self.barge_in_seen: list[float] = []

        self._sync_handlers: dict[type, Callable[[Any], None]] = {
            ev.SessionReady: self._on_session_ready,
            ev.SpeechStopped: self._on_speech_stopped,
            ev.ResponseCreated: self._on_response_created,
            ev.AudioDelta: self._on_audio_delta,
            ev.AudioDone: self._on_audio_done,
            ev.TranscriptDelta: self._on_transcript_delta,
            ev.TranscriptDone: self._on_transcript_done,
            ev.FunctionCall: self._on_function_call,
            ev.UserTranscript: self._on_user_transcript,
            ev.UserTranscriptFailed: self._on_user_transcript_failed,
            ev.ServerError: self._on_server_error,
            ev.Reconnecting: self._on_reconnecting,
            ev.Reconnected: self._on_reconnected,
            ev.SessionRotated: self._on_session_rotated,
        }
        self._async_handlers: dict[type, Callable[[Any], Awaitable[None]]] = {
            ev.SpeechStarted: self._on_speech_started,
            ev.ResponseDone: self._on_response_done,
            ev.UpstreamLost: self._on_upstream_lost,
        }

    # ================================================================== lifecycle
    async def run(self) -> CallRecord:
        loop = asyncio.get_running_loop()
        self._started_mono = loop.time()
        self._mono_to_wall = time.time() - self.clock.time()
        self.leg.attach(self)
        self.clock.subscribe(self.playout, first=True)
        self.clock.subscribe(self)             # inbound gap filling (on_tick)
        self.log.info("call from %r to %r on %s, dialplan %s", self.caller, self.called,
                      self.record.source, self.dialplan.name)
        self._emit("call.started")
        self._timers.append(loop.call_later(self.dialplan.limits.max_call_s,
                                            self.end, "max_duration"))
        try:
            await self.store.save(self.record)
        except Exception:
            self.log.exception("could not save the call record")
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
                self.end("error", type(group.exceptions[0]).__name__)
        except asyncio.CancelledError:
            # Cancelled from outside (shutdown): still clean up and write the record.
            self.end("shutdown")
            await self._finish()
            raise
        await self._finish()
        return self.record

    async def _until_ended(self) -> None:
        await self._ended.wait()
        raise _CallEnded

    def end(self, reason: str, detail: str = "") -> None:
        """End the call (first reason wins). Safe to call from anywhere, any number of times."""
        if self._ended.is_set():
            return
        self.record.end_reason = reason
        self.record.end_detail = detail
        self.log.info("call ends: %s%s", reason, f" ({detail})" if detail else "")
        self._ended.set()

    @property
    def ended(self) -> bool:
        return self._ended.is_set()

    async def _finish(self) -> None:
        """Clean up and write the record, in a task of its own: a second cancellation
        (a shutdown running out of patience) cannot stop the record being written."""
        if self._finish_task is None:
            self._finish_task = asyncio.get_running_loop().create_task(
                self._finish_inner(), name=f"{self.call_id}-finish")
        await asyncio.shield(self._finish_task)

    async def _finish_inner(self) -> None:
        self._ready = False
        self._tg = None
        for timer in self._timers:
            timer.cancel()
        if self._silence_timer is not None:
            self._silence_timer.cancel()
        self.clock.unsubscribe(self.playout)
        self.clock.unsubscribe(self)
        self.gaps.stop()
        # The record first: it is complete now, and the far ends may be slow to close.
        self.playout.close_span()
        ended = self.record.ended_at = time.time()
        speech = self.record.speech
        if speech and speech[-1].end > ended:      # the leg hung up mid-frame
            speech[-1] = dataclasses.replace(speech[-1], end=max(speech[-1].start, ended))
        if self._caller_open is not None:
            item, start = self._caller_open
            self._caller_open = None
            self.record.speech.append(SpeechSpan("caller", item, start, self.record.ended_at))
        try:
            await self.store.save(self.record)
        except Exception:
            self.log.exception("could not save the call record")
        await asyncio.gather(self._close_client(), self._hang_up_leg())
        self._emit("call.ended", reason=self.record.end_reason)
        self.finished.set()

    async def _close_client(self) -> None:
        if self._client is not None:
            try:
                async with asyncio.timeout(self.close_timeout_s):
                    await self._client.close()
            except Exception as exc:     # closing is best effort
                self.log.warning("closing the Realtime client failed: %r", exc)

    async def _hang_up_leg(self) -> None:
        try:
            await self.leg.hang_up(self.record.end_reason)
        except Exception as exc:
            self.log.warning("hanging up the leg failed: %r", exc)

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        """Run ``coro`` in the call's task group (dropped if the call is over)."""
        if self._tg is None or self.ended:
            coro.close()
            return
        self._tg.create_task(coro, name=f"{self.call_id}-{name}")

    # ================================================================== upstream session
    async def _session(self) -> None:
        self.playout.comfort = True        # a beep if connecting takes long
        try:
            client = self._factory(self.profile, self.log)
            self._client = client
            if hasattr(client, "on_message"):
                client.on_message = self.clock.poll   # see MediaClock.poll
            async with asyncio.timeout(self.connect_timeout_s):
                await client.connect()
        except (RealtimeError, TimeoutError, OSError) as exc:
            self.log.warning("upstream unavailable at connect: %r", exc)
            await self._fallback(f"connect: {type(exc).__name__}")
            return
        except Exception as exc:
            # Whatever else stops us from having an upstream (a token provider, a bad
            # target): the caller still gets the fallback, never dead air.
            self.log.exception("could not set up the upstream")
            await self._fallback(f"connect: {type(exc).__name__}")
            return
        self.playout.comfort = False
        self._ready = True
        self.gaps.start(self.clock.time())
        self.record.connected_at = time.time()
        self._arm_silence()
        try:
            greeting = self.dialplan.agent.greeting
            if greeting:
                await client.create_response(instructions=greeting)
            await self._pump(client)
        except Exception as exc:
            # The one boundary for our own bugs: the call falls back instead of the
            # caller being cut off (CancelledError is not an Exception: it propagates).
            self.log.exception("call logic failed")
            self.record.errors.append(f"internal: {type(exc).__name__}")
            await self._fallback(f"internal error: {type(exc).__name__}")
            return
        if not self.ended and not self._fallback_started:
            await self._fallback("upstream event stream ended")

    async def _pump(self, client: RealtimeSession) -> None:
        """Hand every upstream event to its handler (dispatch table by type)."""
        sync, asyn = self._sync_handlers, self._async_handlers
        poll = self.clock.poll
        async for event in client.events():
            poll()
            handler = sync.get(type(event))
            if handler is not None:
                handler(event)
                continue
            ahandler = asyn.get(type(event))
            if ahandler is not None:
                await ahandler(event)
            if self._fallback_started:
                return

    # ---------------------------------------------------------------- inbound media
    def on_leg_audio(self, pcm: bytes) -> None:
        # Datagrams arrive in bursts of dozens per loop pass: a tick due meanwhile goes
        # out here rather than after the burst (MediaClock.poll).
        self.clock.poll()
        client = self._client
        if not self._ready or client is None:
            return
        self.gaps.on_frame(self.clock.time())
        if self._g711_in:
            data = g711.encode(self._g711_in, pcm)
        else:
            rs = self._in_resampler
            assert rs is not None
            if self._batch.submit(rs, pcm, self._deliver_up):
                return      # resampled with every other call's frame, later this pass
            data = rs.process(pcm)
        self._send_up(client, data)

    def _deliver_up(self, data: bytes) -> None:
        """A batched frame, resampled (batch.py). The batch delivers every call's frame
        in one callback, each a socket write: the clock may preempt between them."""
        client = self._client
        if self._ready and client is not None:
            self._send_up(client, data)
        self.clock.poll()

    def _send_up(self, client: RealtimeSession, data: bytes) -> None:
        if self._append_frames == 1:
            if data:
                client.append_audio(data)
                self._up_bytes += len(data)
            return
        self._up += data
        self._up_frames += 1
        if self._up_frames >= self._append_frames:
            client.append_audio(bytes(self._up))
            self._up_bytes += len(self._up)
            self._up.clear()
            self._up_frames = 0

    def on_tick(self, now: float) -> None:
        """Media clock tick: stand in silence for caller audio that stopped coming."""
        if not self._ready:
            return
        n = self.gaps.on_tick(now)
        client = self._client
        if n == 0 or client is None:
            return
        if self._in_resampler is not None and self.gaps.filled_in_gap == n:
            # The gap's first silent frame goes through the filter: it carries the
            # ring-out of the last real audio and leaves the filter's history silent.
            self._send_up(client, self._in_resampler.process(self._leg_zero))
            n -= 1
        for _ in range(n):
            self._send_up(client, self._up_silence)

    def on_leg_hangup(self, reason: str) -> None:
        self.end("caller_hangup", reason)

    # ---------------------------------------------------------------- session events
    def _on_session_ready(self, e: ev.SessionReady) -> None:
        if e.session_id not in self.record.session_ids:
            self.record.session_ids.append(e.session_id)

    def _on_reconnecting(self, e: ev.Reconnecting) -> None:
        self.log.warning("upstream reconnecting (attempt %d): %s", e.attempt, e.reason)
        self.playout.comfort = True

    def _on_reconnected(self, e: ev.Reconnected) -> None:
        self.log.info("upstream reconnected")
        self.record.session_ids.append(e.session_id)
        self._new_session()
        self.playout.comfort = self._tools_running > 0

    def _on_session_rotated(self, e: ev.SessionRotated) -> None:
        self.log.info("upstream session rotated")
        if e.session_id not in self.record.session_ids:
            self.record.session_ids.append(e.session_id)
        self._new_session()
        self._save_soon()

    def _new_session(self) -> None:
        # The new session counts its audio from zero (audio_start_ms/audio_end_ms). A
        # frame or two may have gone to it before this event was handled: the caller
        # spans of the first turn after a switch may be that much late.
        self._up_base = self._up_bytes
        if self._caller_open is not None:
            item, start = self._caller_open      # that session's turn will not stop
            self._caller_open = None
            self.record.speech.append(SpeechSpan("caller", item, start, time.time()))

    def _on_server_error(self, e: ev.ServerError) -> None:
        self.log.warning("upstream error %s: %s", e.code, e.message)
        self.record.errors.append(f"{e.code}: {e.message}")

    async def _on_upstream_lost(self, e: ev.UpstreamLost) -> None:
        self.log.warning("upstream lost: %s", e.reason)
        await self._fallback(("auth: " if e.fatal_auth else "") + e.reason)

    # ---------------------------------------------------------------- caller turns
    async def _on_speech_started(self, e: ev.SpeechStarted) -> None:
        loop_now = self.clock.time()
        self._caller_speaking = True
        self._disarm_silence()
        now = time.time()
        _put(self._speech_wall, e.item_id, now)
        start = self._audio_wall(e.audio_start_ms + self._prefix_ms, now)
        self._caller_open = (e.item_id, start)
        client = self._client
        if self.playout.playing or (client is not None and client.response_active):
            await self._barge_in(loop_now, own=False)

    def _on_speech_stopped(self, e: ev.SpeechStopped) -> None:
        now = time.time()
        opened, self._caller_open = self._caller_open, None
        if opened is not None:
            item, start = opened
            end = max(start, self._audio_wall(e.audio_end_ms - self._silence_ms, now))
            self.record.speech.append(SpeechSpan("caller", e.item_id or item, start, end))
        self._caller_speaking = False
        self._turn = _Turn(speech_stopped=self.clock.time())
        self._arm_silence()

    def _audio_wall(self, audio_ms: int, received: float) -> float:
        """Epoch time the caller said what sits at ``audio_ms`` of the session's input.

        Caller audio goes upstream in real time (gaps are filled with silence), so audio
        that many milliseconds behind the newest appended audio went up that long before
        ``received`` (when the event reached the bridge): independent of network and
        server delays. Falls back to ``received`` when the counts disagree (audio the
        client dropped while the upstream was not draining, a session switch)."""
        sent_ms = (self._up_bytes - self._up_base) / self._up_bytes_per_ms
        lag_s = (sent_ms - audio_ms) / 1000.0
        if lag_s < 0 or received - lag_s < self.record.started_at:
            return received
        return received - lag_s

    def _on_agent_span(self, item_id: str, start: float, end: float) -> None:
        # ``end``: when the last frame handed over finishes playing (the leg sends it).
        offset = self._mono_to_wall
        self.record.speech.append(SpeechSpan("agent", item_id, start + offset, end + offset))

    def _on_user_transcript(self, e: ev.UserTranscript) -> None:
        at = self._speech_wall.pop(e.item_id, time.time())
        self.record.transcript.append(TranscriptEntry("caller", e.item_id, e.transcript, at))
        self._emit("transcript", role="caller", text=e.transcript)
        self._save_soon()

    def _on_user_transcript_failed(self, e: ev.UserTranscriptFailed) -> None:
        self._speech_wall.pop(e.item_id, None)
        self.record.errors.append(f"transcription failed: {e.error}")

    async def _barge_in(self, seen_at: float, *, own: bool) -> None:
        """Stop agent audio now and tell the upstream what was heard (PROTOCOL.md §6)."""
        self.barge_in_seen.append(seen_at)
        item, heard, received, dropped = self.playout.barge_in(seen_at)
        if self._active_response:
            self._interrupted.add(self._active_response)
        if item is not None and item in self._item_response:
            self._interrupted.add(self._item_response[item])
        self._audio_response = None
        client = self._client
        truncated: int | None = None
        if item is not None and client is not None:
            # At 0 ms the client only trims its history (truncating an item with no audio
            # is an error on the wire, PROTOCOL.md §6.3), so the conversation it would
            # re-seed after a reconnect holds what the caller heard, and nothing more.
            truncated = min(heard, received) if heard > 0 else None
            try:
                await client.truncate(item, truncated or 0)
            except RealtimeError as exc:
                self.log.warning("truncate failed: %r", exc)
        if item is not None:
            self._trim_transcript(item, heard, received)
            self.record.barge_ins.append(
                BargeIn(time.time(), item, heard, received, truncated, dropped))
            self._emit("barge_in", item_id=item, heard_ms=heard)
            self._save_soon()
        if client is not None and client.response_active and (own or
                                                              not self._server_interrupts):
            try:
                await client.cancel_response()
            except RealtimeError as exc:
                self.log.warning("response.cancel failed: %r", exc)

    def _trim_transcript(self, item: str, heard: int, received: int) -> None:
        index = self._agent_entry.get(item)
        if index is not None:
            text = self.record.transcript[index].text      # already complete
        else:
            text = "".join(self._agent_text.get(item, ()))
        if not text or item in self._trimmed:
            return
        self._trimmed.add(item)
        keep = text
        if received > 0 and heard < received:
            cut = int(len(text) * heard / received)
            keep = text[:cut]
            if cut < len(text) and " " in keep:
                keep = keep[: keep.rfind(" ")]
        entry = TranscriptEntry("agent", item, keep.strip(), self._agent_at(item),
                                truncated=keep != text)
        if index is not None:
            self.record.transcript[index] = entry
        else:
            self.record.transcript.append(entry)

    def _agent_at(self, item: str) -> float:
        """When the agent started saying ``item``: its first frame to the leg, else its
        first audio from upstream, else now."""
        return self._first_frame_wall.get(item) or self._item_wall.get(item) or time.time()

    # ---------------------------------------------------------------- responses
    def _on_response_created(self, e: ev.ResponseCreated) -> None:
        self._active_response = e.response_id
        self.record.responses += 1

    def _on_audio_delta(self, e: ev.AudioDelta) -> None:
        if e.response_id in self._interrupted:
            return                      # late audio of a response the caller talked over
        if e.item_id not in self._item_response:
            _put(self._item_response, e.item_id, e.response_id)
            _put(self._item_wall, e.item_id, time.time())
            turn = self._turn
            if turn is not None and turn.response_id is None:
                turn.response_id = e.response_id
                turn.first_delta = self.clock.time()
        self._audio_response = e.response_id
        self.playout.push(e.item_id, e.audio)

    def _on_audio_done(self, e: ev.AudioDone) -> None:
        if e.response_id == self._audio_response:
            self.playout.end_of_response()
            self._audio_response = None

    def _on_transcript_delta(self, e: ev.TranscriptDelta) -> None:
        if e.item_id not in self._trimmed:
            self._agent_text.setdefault(e.item_id, []).append(e.delta)

    def _on_transcript_done(self, e: ev.TranscriptDone) -> None:
        self._agent_text.pop(e.item_id, None)
        if e.item_id in self._trimmed or e.response_id in self._interrupted:
            return
        # Kept replaceable: a barge-in later in the item's playout trims it.
        _put(self._agent_entry, e.item_id, len(self.record.transcript))
        self.record.transcript.append(
            TranscriptEntry("agent", e.item_id, e.transcript, self._agent_at(e.item_id)))
        self._emit("transcript", role="agent", text=e.transcript)

    def _on_function_call(self, e: ev.FunctionCall) -> None:
        # Collected, not run: it runs once its response is done *and* completed.
        self._tools.setdefault(e.response_id, _ResponseTools()).calls.append(e)

    async def _on_response_done(self, e: ev.ResponseDone) -> None:
        if e.response_id == self._audio_response:
            self.playout.end_of_response()
            self._audio_response = None
        if e.response_id == self._active_response:
            self._active_response = None
        self.record.add_usage(e.usage)
        if e.status == "failed":
            self.record.errors.append(f"response failed: {e.reason or e.error}")
        tools = self._tools.pop(e.response_id, None)
        interrupted = e.response_id in self._interrupted
        self._interrupted.discard(e.response_id)
        if tools is not None:
            if e.status == "completed" and not interrupted:
                self._run_tools(e.response_id, tools)
            else:
                self.log.info("not running %d tool call(s) of a %s response",
                              len(tools.calls), e.status)
        self._save_soon()

    # ---------------------------------------------------------------- tools
    def _run_tools(self, response_id: str, tools: _ResponseTools) -> None:
        tools.outputs_pending = len(tools.calls)
        self._tools_running += len(tools.calls)
        self.playout.comfort = True            # a slow webhook must not leave dead air
        for call in tools.calls:
            self._spawn(self._run_tool(call, tools), f"tool-{call.name}")

    async def _run_tool(self, call: ev.FunctionCall, tools: _ResponseTools) -> None:
        _IN_TOOL.set(True)
        started = time.time()
        self.log.info("tool call %s", call.name)
        try:
            result = await self.dialplan.tools.dispatch(call.name, call.arguments, self)
        finally:
            self._tools_running -= 1
            if self._tools_running == 0:
                self.playout.comfort = False
        self.record.tool_calls.append(ToolCallRecord(
            started, call.response_id, call.call_id, call.name, call.arguments, result.ok,
            result.output, result.error, result.duration_s))
        self._emit("tool_call", name=call.name, ok=result.ok)
        self._save_soon()
        client = self._client
        if client is not None and not self._fallback_started:
            await client.send_tool_output(call.call_id, result.output)
        tools.outputs_pending -= 1
        if self._end_requested is not None:
            self.end(*self._end_requested)
            return
        if tools.outputs_pending == 0 and client is not None and not self._fallback_started:
            # PROTOCOL.md §5.4: one response.create once all outputs of the response are in.
            await client.create_response()

    # ToolContext ------------------------------------------------------------------
    async def transfer(self, target_name: str) -> TransferOutcome:
        """Blind transfer to the dialplan target ``target_name`` (names only, never URIs)."""
        uri = self.dialplan.targets.get(target_name)
        if uri is None:
            self.log.warning("transfer to unknown target %r refused", target_name)
            return TransferOutcome(ok=False, detail=f"unknown target {target_name!r}")
        if _IN_TOOL.get():
            await self.playout.wait_drained(self.drain_timeout_s)
        return await self._transfer_uri(uri, target_name)

    async def _transfer_uri(self, uri: str, label: str) -> TransferOutcome:
        self.log.info("transferring to %s", label)
        # A REFER can take seconds (and then fail): the caller hears the comfort beep
        # rather than dead air while it is pending, whichever path asked for it.
        comfort = self.playout.comfort
        self.playout.comfort = True
        try:
            outcome = await self.leg.transfer(uri)
        finally:
            self.playout.comfort = comfort or self._tools_running > 0
        if outcome.ok:
            self.record.transferred_to = label
            self._request_end("transferred", label)
        else:
            self.log.warning("transfer to %s failed: %s %s", label, outcome.status,
                             outcome.detail)
            self.record.errors.append(f"transfer to {label} failed: {outcome.status}")
        return outcome

    async def hang_up(self, reason: str) -> None:
        """End the call once what the agent is saying has played (bounded wait)."""
        if _IN_TOOL.get():
            await self.playout.wait_drained(self.drain_timeout_s)
        self._request_end("agent_hangup", reason)

    async def send_dtmf(self, digits: str) -> None:
        await self.leg.send_dtmf(digits)
        now = time.time()
        for d in digits:
            self.record.dtmf.append(DtmfRecord(now, d, "out", "sent"))

    def _request_end(self, reason: str, detail: str) -> None:
        if _IN_TOOL.get():
            self._end_requested = (reason, detail)   # after the tool's result is recorded
        else:
            self.end(reason, detail)

    # ---------------------------------------------------------------- DTMF
    def on_leg_dtmf(self, digit: str) -> None:
        action = self.dialplan.dtmf.actions.get(digit)
        kind: str
        if action is not None:
            kind = action.kind
            self._spawn(self._dtmf_action(action), f"dtmf-{kind}")
        elif self.dialplan.dtmf.to_model and self._ready:
            kind = "model"
            self._spawn(self._dtmf_to_model(digit), "dtmf-model")
        else:
            kind = "ignored"
        self.log.info("DTMF %s -> %s", digit, kind)
        self.record.dtmf.append(DtmfRecord(time.time(), digit, "in", kind))
        self._emit("dtmf", digit=digit, action=kind)

    async def _dtmf_action(self, action: DtmfAction) -> None:
        handlers: dict[str, Callable[[DtmfAction], Awaitable[None]]] = {
            "transfer": self._dtmf_transfer, "hangup": self._dtmf_hangup,
            "say": self._dtmf_say,
        }
        await handlers[action.kind](action)

    async def _dtmf_transfer(self, action: DtmfAction) -> None:
        # The caller asked for a person: interrupt the agent (our own interruption).
        client = self._client
        if self.playout.playing or (client is not None and client.response_active):
            await self._barge_in(self.clock.time(), own=True)
        target = action.target or ""
        uri = self.dialplan.targets.get(target)
        if uri is None:
            self.log.warning("DTMF transfer target %r is not in the dialplan", target)
            return
        outcome = await self._transfer_uri(uri, target)
        client = self._client
        if not outcome.ok and client is not None and self._ready and not self.ended:
            # The agent's reply was cancelled for the transfer: without this the caller
            # would wait in silence until they spoke again.
            await client.add_user_text(
                f"The caller pressed a key to be transferred to {target}, but the transfer "
                f"failed ({outcome.status or 'no answer'}). Tell the caller and offer "
                "another way to help.")
            await client.create_response()

    async def _dtmf_hangup(self, action: DtmfAction) -> None:
        self.end("caller_dtmf_hangup")

    async def _dtmf_say(self, action: DtmfAction) -> None:
        if self._client is not None and self._ready and action.text:
            await self._client.create_response(
                instructions=f"Say exactly this to the caller: {action.text}")

    async def _dtmf_to_model(self, digit: str) -> None:
        client = self._client
        if client is None:
            return
        await client.add_user_text(f"caller pressed {digit}")
        await client.create_response()

    # ---------------------------------------------------------------- fallback
    async def _fallback(self, reason: str) -> None:
        """Announce, then transfer to the fallback target or hang up."""
        if self._fallback_started or self.ended:
            return
        self._fallback_started = True
        self._ready = False
        self.record.fallback = reason
        self.log.warning("running the fallback: %s", reason)
        fb = self.dialplan.fallback
        self.playout.barge_in()
        self.playout.comfort = False
        self.playout.push_leg_audio(self._announcement(fb.announcement, fb.tones))
        self._emit("fallback", reason=reason)
        if self._client is not None:
            try:
                async with asyncio.timeout(self.close_timeout_s):
                    await self._client.close()
            except Exception as exc:
                self.log.warning("closing the lost upstream failed: %r", exc)
        played = await self.playout.wait_drained(self.drain_timeout_s + 60.0)
        if not played:
            self.log.warning("the fallback announcement did not finish playing")
        if fb.action == "transfer" and fb.target:
            uri = self.dialplan.targets.get(fb.target, fb.target)
            outcome = await self._transfer_uri(uri, fb.target)
            if outcome.ok:
                return
        self.end("upstream_lost", reason)

    def _announcement(self, announcement: str | None, tones: str | None) -> bytes:
        rate = self.leg.sample_rate
        for spec in (announcement, tones):
            if spec:
                try:
                    return load_announcement(spec, rate)
                except (OSError, ValueError) as exc:
                    self.log.error("fallback announcement %r unusable: %r", spec, exc)
        return load_announcement(DEFAULT_FALLBACK_TONES, rate)

    # ---------------------------------------------------------------- playout hooks
    def _on_first_frame(self, item_id: str, now: float) -> None:
        _put(self._first_frame_wall, item_id, time.time())
        turn = self._turn
        if (turn is not None and turn.first_delta is not None
                and self._item_response.get(item_id) == turn.response_id):
            self.record.turns.append(TurnLatency(
                time.time(), turn.response_id or "",
                round((turn.first_delta - turn.speech_stopped) * 1000, 1),
                round((now - turn.first_delta) * 1000, 1)))
            self._turn = None

    def _on_playout_active(self, active: bool) -> None:
        if self._client is not None:
            self._client.set_playout_active(active)
        if active:
            self._disarm_silence()
        else:
            self._arm_silence()

    # ---------------------------------------------------------------- caller silence
    def _arm_silence(self) -> None:
        limit = self.dialplan.limits.caller_silence_s
        if limit is None or not self._ready or self._caller_speaking or self.playout.active:
            return
        self._disarm_silence()
        loop = asyncio.get_running_loop()
        self._silence_timer = loop.call_later(limit, self.end, "caller_silence")

    def _disarm_silence(self) -> None:
        if self._silence_timer is not None:
            self._silence_timer.cancel()
            self._silence_timer = None

    # ---------------------------------------------------------------- record, events
    def _save_soon(self) -> None:
        """Save the record in the background, coalescing bursts (at least once per turn)."""
        if self._saving:
            self._save_again = True
            return
        self._saving = True
        self._spawn(self._save_loop(), "save")

    async def _save_loop(self) -> None:
        try:
            while True:
                self._save_again = False
                self.clock.poll()       # a save can take a while on a long record
                try:
                    await self.store.save(self.record)
                except Exception:
                    self.log.exception("could not save the call record")
                if not self._save_again:
                    return
        finally:
            self._saving = False

    def _emit(self, kind: str, **fields: Any) -> None:
        if self._on_event is not None:
            try:
                self._on_event({"type": kind, "call_id": self.call_id, **fields})
            except Exception:
                self.log.exception("call event hook failed")


__all__ = ["Call", "CallLog", "EventHook", "RealtimeFactory", "RealtimeSession"]
