"""``CallManager``: admission, the live-calls registry, and the calls' event stream.

SIP and WebRTC hand every new leg to ``handle(leg)`` (awaited for the whole call). The
manager picks the dialplan from the leg's info, builds the call with a Realtime client of
its own, runs it, and keeps it in the registry while it runs. SIP asks for that client
earlier, while the INVITE is being answered (``open_early``; ``drop_early`` if the call
does not happen), so the session is ready when the call starts (``bridge.call.early``).
``can_admit()`` is what the signalling asks before answering (SIP then says 503 +
Retry-After when it is False).

Events of every call (started, transcript, barge-in, tool call, DTMF, fallback, ended) go
to subscribers: ``subscribe()`` gives an async iterator per subscriber (the dashboard's
SSE), each with a bounded queue so a slow reader loses its oldest events, never stalls a
call. Plain callbacks can be added with ``add_listener``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

from bridge.call.call import Call, CallLog, RealtimeFactory, RealtimeSession
from bridge.call.clock import MediaClock, shared_clock
from bridge.call.early import EarlyOpens, new_call_id
from bridge.call.events import CallEvent
from bridge.call.leg import LegInfo, MediaLeg
from bridge.call.records import CallRecord, RecordStore
from bridge.call.voicemail import VoicemailCall
from bridge.dialplans.plan import Dialplan, DialplanSet
from bridge.errors import CallRejected
from bridge.realtime.auth import TokenProvider
from bridge.realtime.client import RealtimeClient
from bridge.realtime.config import RealtimeTarget
from bridge.realtime.profile import SessionProfile

log = logging.getLogger(__name__)

Listener = Callable[[CallEvent], None]


#: Options of every call's client. The recovery policy is ``RecoveryPolicy()``: a hung or
#: dropped upstream is noticed within about 2 s and reconnected for up to 10 s (a
#: dialplan's ``[fallback] reconnect_budget_s`` overrides it) while the caller hears the
#: hold signal; then the fallback announcement starts at once.
DEFAULT_CLIENT_OPTIONS: dict[str, Any] = {}


def client_factory(target: RealtimeTarget, **client_options: Any) -> RealtimeFactory:
    """A ``RealtimeFactory`` making a ``RealtimeClient`` to ``target`` for each call
    (``client_options`` override ``DEFAULT_CLIENT_OPTIONS``)."""
    options = {**DEFAULT_CLIENT_OPTIONS, **client_options}

    def make(profile: SessionProfile, call_log: logging.LoggerAdapter[Any]) -> RealtimeSession:
        return RealtimeClient(target, profile, log=call_log, **options)

    return make




class CallManager:
    """All calls of the process."""

    def __init__(self, dialplans: DialplanSet, realtime: RealtimeFactory | RealtimeTarget,
                 store: RecordStore, clock: MediaClock | None = None, max_calls: int = 200,
                 *, call_options: dict[str, Any] | None = None,
                 subscriber_queue: int = 1000) -> None:
        """``realtime``: a ``RealtimeTarget`` (each call gets a ``RealtimeClient`` to it with
        ``DEFAULT_CLIENT_OPTIONS``) or any ``RealtimeFactory``. ``call_options`` go to every
        ``Call`` (e.g. ``append_ms``, ``connect_timeout_s``)."""
        self.dialplans = dialplans
        self.realtime_factory: RealtimeFactory = (
            client_factory(realtime) if isinstance(realtime, RealtimeTarget) else realtime)
        self.store = store
        self.clock = clock or shared_clock()
        store.poll = self.clock.poll       # the store's preemption point (RecordStore)
        self.max_calls = max_calls
        self.call_options = dict(call_options or {})
        self.calls: dict[str, Call] = {}
        #: live voicemail calls (bridge.call.voicemail), counted against ``max_calls``
        self.voicemails: dict[str, VoicemailCall] = {}
        self._tasks: dict[str, asyncio.Task[Any]] = {}
        self._listeners: list[Listener] = []
        #: called with each ended call's record and dialplan (e.g. post-call summaries)
        self.after_call: list[Callable[[CallRecord, Dialplan], None]] = []
        self._queues: set[asyncio.Queue[CallEvent | None]] = set()
        self._queue_size = subscriber_queue
        self._closing = False
        self.started = 0
        self.rejected = 0
        self.ended = 0
        #: where voicemail transcription sessions go (and their Entra tokens)
        self.transcription: tuple[RealtimeTarget | None, TokenProvider | None] = (
            (realtime, None) if isinstance(realtime, RealtimeTarget) else (None, None))
        self.early = EarlyOpens(self.realtime_factory,
                                lambda call_id: CallLog(log, {"call_id": call_id}),
                                max_open=max(1, max_calls // 4), poll=self.clock.poll)

    # -- admission -----------------------------------------------------------------------
    def can_admit(self) -> bool:
        return not self._closing and self.live < self.max_calls

    def stop_admitting(self) -> None:
        """Refuse new calls from now on (draining); the live ones go on."""
        self._closing = True

    @property
    def live(self) -> int:
        return len(self.calls) + len(self.voicemails)

    # -- calls ---------------------------------------------------------------------------
    def open_early(self, info: LegInfo, g711: str | None) -> asyncio.Future[None] | None:
        """Start opening the upstream of a call being set up (its INVITE accepted, not yet
        answered): a future done once it is ready (or failed). None when the manager is
        full or at its bound of early opens."""
        if not self.can_admit() or len(self.calls) + len(self.early) >= self.max_calls:
            return None
        plan = self.plan_for(info)
        if plan.voicemail is not None and plan.voicemail.takes_call(
                datetime.datetime.now(datetime.UTC)):
            return None                      # a voicemail call opens no agent session
        try:
            return self.early.open(info.call_id, plan, g711)
        except Exception:
            log.exception("could not open an early upstream on dialplan %s", plan.name)
            return None

    def drop_early(self, leg_call_id: str) -> None:
        """The call set up as ``leg_call_id`` will not happen: close its early upstream."""
        self.early.drop(leg_call_id)

    def plan_for(self, info: LegInfo) -> Dialplan:
        """The dialplan the leg's signalling named (a SIP account's or trunk's
        ``dialplan``, in ``extra``), else the one matching the call."""
        named = info.extra.get("dialplan")
        if named and named in self.dialplans:
            return self.dialplans[named]
        if named:
            log.warning("call %s: no dialplan named %r; matching by number", info.call_id,
                        named)
        return self.dialplans.match(called=info.called, caller=info.caller,
                                    source=info.source.value)

    async def handle(self, leg: MediaLeg) -> CallRecord:
        """Run the call on ``leg`` to its end; raises ``CallRejected`` when full."""
        if not self.can_admit():
            self.rejected += 1
            await leg.hang_up("busy")
            raise CallRejected("busy" if not self._closing else "shutting down")
        info = leg.info
        plan = self.plan_for(info)
        if plan.voicemail is not None and plan.voicemail.takes_call(
                datetime.datetime.now(datetime.UTC)):
            return await self._voicemail(leg, plan)
        early = self.early.take(info.call_id)
        if early is not None and (early.plan is not plan or early.profile
                                  != plan.session_profile(leg_g711=leg.g711)):
            self.early.discard(early)            # the media settled otherwise: start afresh
            early = None
        try:
            call = Call(leg, plan, self.realtime_factory, self.clock, self.store,
                        on_event=self._publish, early=early, **self.call_options)
        except Exception as exc:
            # Not even a call could be built (e.g. a profile the dialplan cannot make):
            # the leg is released and the attempt still leaves a record.
            log.exception("cannot start a call on dialplan %s", plan.name)
            if early is not None:
                self.early.discard(early)
            return await self._record_failed(leg, plan.name, exc)
        call.fallback.transcription = self.transcription
        self.calls[call.call_id] = call
        task = asyncio.current_task()
        if task is not None:
            self._tasks[call.call_id] = task
        self.started += 1
        try:
            record = await call.run()
        finally:
            self.calls.pop(call.call_id, None)
            self._tasks.pop(call.call_id, None)
            self.ended += 1
        for hook in self.after_call:
            try:
                hook(record, plan)
            except Exception:
                log.exception("after-call hook failed")
        return record

    async def _voicemail(self, leg: MediaLeg, plan: Dialplan) -> CallRecord:
        """A call the plan's ``[voicemail]`` takes (bridge.call.voicemail)."""
        assert plan.voicemail is not None
        self.early.drop(leg.info.call_id)
        info = leg.info
        record = CallRecord(call_id=new_call_id(), leg_call_id=info.call_id,
                            source=info.source.value, caller=info.caller, called=info.called,
                            dialplan=plan.name, started_at=time.time())
        target, tokens = self.transcription
        call = VoicemailCall(leg, plan.name, plan.voicemail, target, self.clock, store=self.store,
                             record=record, on_event=self._publish, token_provider=tokens)
        self.voicemails[record.call_id] = call
        task = asyncio.current_task()
        if task is not None:
            self._tasks[record.call_id] = task
        self.started += 1
        try:
            return await call.run()
        finally:
            self.voicemails.pop(record.call_id, None)
            self._tasks.pop(record.call_id, None)
            self.ended += 1

    async def _record_failed(self, leg: MediaLeg, plan: str, exc: Exception) -> CallRecord:
        info = leg.info
        now = time.time()
        record = CallRecord(call_id="c_" + uuid.uuid4().hex[:16], leg_call_id=info.call_id,
                            source=info.source.value, caller=info.caller, called=info.called,
                            dialplan=plan, started_at=now, ended_at=now, end_reason="error",
                            end_detail=type(exc).__name__)
        with contextlib.suppress(Exception):
            await leg.hang_up("error")
        try:
            await self.store.save(record)
        except Exception:
            log.exception("could not save the call record")
        return record

    def hang_up(self, call_id: str, reason: str = "operator") -> bool:
        """End a live call from outside (dashboard, API). False if there is no such call."""
        call = self.calls.get(call_id)
        if call is None:
            voicemail = self.voicemails.get(call_id)
            if voicemail is not None:
                voicemail.end(reason)
            return voicemail is not None
        call.end(reason)
        return True

    def snapshot(self) -> list[dict[str, Any]]:
        """The live calls, for a dashboard's first render."""
        now = time.time()
        return [{"call_id": c.call_id, "caller": c.caller, "called": c.called,
                 "dialplan": c.dialplan.name, "source": c.record.source,
                 "duration_s": round(now - c.record.started_at, 1)}
                for c in self.calls.values()]

    async def shutdown(self, reason: str = "shutdown", grace_s: float = 5.0) -> None:
        """Stop admitting, end every live call, wait (bounded) for their records."""
        self._closing = True
        await self.early.close_all()
        calls = list(self.calls.values())
        for call in calls:
            call.end(reason)
        for voicemail in list(self.voicemails.values()):
            voicemail.end(reason)
        tasks = [t for t in self._tasks.values() if t is not asyncio.current_task()]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=grace_s)
            for t in pending:
                t.cancel()
        # A cancelled call still finishes writing its record in the background: wait for
        # that too, so the store is not closed under it.
        waits = [asyncio.ensure_future(c.finished.wait()) for c in calls
                 if not c.finished.is_set()]
        if waits:
            _, pending_waits = await asyncio.wait(waits, timeout=grace_s)
            for w in pending_waits:
                w.cancel()
        for q in list(self._queues):
            with contextlib.suppress(asyncio.QueueFull):
                q.put_nowait(None)

    # -- events --------------------------------------------------------------------------
    def add_listener(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def remove_listener(self, listener: Listener) -> None:
        with contextlib.suppress(ValueError):
            self._listeners.remove(listener)

    async def subscribe(self) -> AsyncIterator[CallEvent]:
        """Every call event from now on, until the manager shuts down."""
        q: asyncio.Queue[CallEvent | None] = asyncio.Queue(self._queue_size)
        self._queues.add(q)
        try:
            while True:
                item = await q.get()
                if item is None:                   # the manager shut down
                    return
                yield item
        finally:
            self._queues.discard(q)

    def publish(self, event: CallEvent) -> None:
        """Hand an event of a call (live or ended) to every listener and subscriber."""
        self._publish(event)

    def _publish(self, event: CallEvent) -> None:
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:
                log.exception("call event listener failed")
        for q in self._queues:
            if q.full():
                # A slow reader loses its oldest event rather than stalling a call.
                with contextlib.suppress(asyncio.QueueEmpty):
                    q.get_nowait()
            q.put_nowait(event)


__all__ = ["DEFAULT_CLIENT_OPTIONS", "CallManager", "CallRejected", "Listener", "client_factory"]
