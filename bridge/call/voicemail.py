"""A voicemail call: greet, record the caller's message, transcribe it, keep both.

Theory of operation
-------------------
A dialplan with ``[voicemail]`` (``bridge.dialplans.voicemail``) sends a call here instead
of to the agent (always, outside opening hours, or when the agent's upstream is down). The
driver attaches itself to the leg as its sink and drives it through the shared media clock
with its own ``Playout``:

1. a transcription session is opened (``bridge.realtime.transcription``) while the
   greeting plays (an announcement or tones; a short beep by default);
2. once the greeting has played, the caller's frames are recorded (PCM16 at the leg's
   rate, bounded by ``max_s``) and streamed into the transcription session as they come,
   resampled to 24 kHz;
3. the message ends on ``silence_s`` of caller silence after speech (or from the start),
   the ``end_digit`` key, ``max_s`` (a timer on the media clock), or the caller hanging up;
4. the audio buffer is committed, the goodbye plays (unless the caller hung up), the WAV is
   written to the plan's ``directory``, the transcript awaited, the record saved with a
   ``voicemail`` entry, the webhook posted, and the leg hung up.

A transcription that cannot be had leaves the WAV and a record with ``transcript: null``:
the message is never lost to an upstream outage. Every step is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import ssl
import time
import wave
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bridge import metrics
from bridge.call.clock import MediaClock, TimerHandle
from bridge.call.events import (
    CallEnded,
    CallEvent,
    CallStarted,
    TranscriptAdded,
    TranscriptDelta,
)
from bridge.call.leg import MediaLeg
from bridge.call.playout import Playout
from bridge.call.records import CallRecord, RecordStore, TranscriptEntry
from bridge.call.timers import wait_within
from bridge.codecs import g711
from bridge.codecs.resample import StreamResampler
from bridge.dialplans.announce import load_announcement
from bridge.dialplans.voicemail import Voicemail
from bridge.errors import RealtimeError
from bridge.logthrottle import Throttle
from bridge.realtime.auth import TokenProvider
from bridge.realtime.config import RealtimeTarget
from bridge.realtime.transcription import TranscriptionClient

__all__ = ["VoicemailCall"]

log = logging.getLogger(__name__)
_throttle = Throttle(log)

DEFAULT_GREETING = "0:300,880:400,0:200"
DEFAULT_GOODBYE = "660:250,0:100,440:350"
#: A frame louder than this RMS (of 32768) counts as the caller speaking (about -45 dBFS).
VOICE_RMS = 180.0
GREETING_EXTRA_S = 30.0
TRANSCRIPT_TIMEOUT_S = 60.0
WEBHOOK_TIMEOUT_S = 10.0


@functools.cache
def _tls() -> ssl.SSLContext:
    return httpx.create_ssl_context()


class VoicemailCall:
    """One voicemail call on ``leg``. ``await run()`` returns the record."""

    def __init__(self, leg: MediaLeg, plan_name: str, settings: Voicemail,
                 target: RealtimeTarget | None, clock: MediaClock, *, store: RecordStore,
                 record: CallRecord, on_event: Callable[[CallEvent], None] | None = None,
                 token_provider: TokenProvider | None = None) -> None:
        self.leg = leg
        self.plan_name = plan_name
        self.settings = settings
        self.target = target
        self.clock = clock
        self.store = store
        self.record = record
        self._on_event = on_event
        self._tokens = token_provider
        #: a leg the call switched to G.711 passthrough carries the law's payload both
        #: ways (a voicemail run as the fallback): decoded in, encoded out
        self._carry = leg.carry
        self.playout = Playout(leg, audio_format=leg.carry)
        self.playout.comfort = False
        self._pcm = bytearray()
        self._limit = int(settings.max_s * leg.sample_rate) * 2
        self._recording = False
        self._last_voice = 0.0
        self._sent = 0
        self._ended_by = ""
        self._done = asyncio.Event()
        self._hung_up = False
        self._max_timer: TimerHandle | None = None
        self._silence_timer: TimerHandle | None = None
        self._resampler = StreamResampler(leg.sample_rate, 24000)
        self._client: TranscriptionClient | None = None

    # --- LegSink ---------------------------------------------------------------------
    def on_leg_audio(self, pcm: bytes) -> None:
        if not self._recording or self._done.is_set():
            return
        if self._carry != "pcm16":
            pcm = g711.decode(self._carry, pcm)
        now = self.clock.time()
        room = self._limit - len(self._pcm)
        self._pcm += pcm[:max(room, 0)]
        samples = np.frombuffer(pcm, dtype="<i2").astype(np.float32)
        if samples.size and float(np.sqrt(np.mean(samples * samples))) > VOICE_RMS:
            self._last_voice = now
        self._feed()
        if room <= len(pcm):
            self._stop("max_length")
        elif now - self._last_voice >= self.settings.silence_s:
            self._stop("silence")

    def on_leg_dtmf(self, digit: str) -> None:
        if self._recording and digit == self.settings.end_digit:
            self._stop("digit")

    def on_leg_hangup(self, reason: str) -> None:
        self._hung_up = True
        self._stop("hangup")

    # --- the call --------------------------------------------------------------------
    def emit(self, event: CallEvent) -> None:
        if self._on_event is not None:
            self._on_event(event)

    def end(self, reason: str) -> None:
        """End the message from outside (the operator, a shutdown): what was recorded is
        kept, transcribed and stored as for any other end."""
        self._stop(reason)

    def _stop(self, why: str) -> None:
        if not self._done.is_set():
            self._ended_by = why
            self._recording = False
            self._done.set()

    def _feed(self) -> None:
        client = self._client
        if client is None or self._sent >= len(self._pcm):
            return
        chunk = bytes(self._pcm[self._sent:])
        self._sent = len(self._pcm)
        client.append(self._resampler.process(chunk))

    async def run(self) -> CallRecord:
        """A call that is a voicemail from the start: the whole call, record included."""
        metrics.CALLS_STARTED.labels(source=self.record.source).inc()
        self.emit(CallStarted(call_id=self.record.call_id, source=self.record.source,
                              caller=self.record.caller, called=self.record.called,
                              dialplan=self.plan_name))
        try:
            await self.take()
        finally:
            with contextlib.suppress(Exception):
                await self.leg.hang_up("voicemail")
            await self._save_final()
        return self.record

    async def take(self) -> None:
        """Take the message on the leg (attached to this driver from now on); the caller
        of this ends the call. ``hung_up`` says whether the caller hung up meanwhile."""
        self.leg.attach(self)
        self.leg.poll = self.clock.poll
        self.clock.subscribe(self.playout, first=True)
        opening = asyncio.create_task(self._open_transcription())
        try:
            await self._take_message()
            await self._finish(opening)
        except asyncio.CancelledError:
            if self._recording and self.record.voicemail is None:
                self._stop("cancelled")      # the call ended under us (a limit, shutdown)
                self._keep()
            raise
        finally:
            if not opening.done():
                opening.cancel()
            self.clock.unsubscribe(self.playout)
            if self._client is not None:
                await self._client.close()

    @property
    def hung_up(self) -> bool:
        return self._hung_up

    async def _take_message(self) -> None:
        if self.record.connected_at is None:
            self.record.connected_at = time.time()
        await self._play(self.settings.greeting, DEFAULT_GREETING)
        if self._done.is_set():           # hung up during the greeting
            return
        self._recording = True
        self._last_voice = self.clock.time()
        self._max_timer = self.clock.call_later(self.settings.max_s,
                                                lambda: self._stop("max_length"))
        self._arm_silence()
        await self._done.wait()
        for timer in (self._max_timer, self._silence_timer):
            if timer is not None:
                timer.cancel()

    def _arm_silence(self) -> None:
        """Silence is also judged on the clock: a caller whose phone sends nothing while
        quiet (no RTP at all) still ends the message."""
        if self._done.is_set():
            return
        due = self._last_voice + self.settings.silence_s - self.clock.time()
        if due <= 0:
            self._stop("silence")
            return
        self._silence_timer = self.clock.call_later(due, self._arm_silence)

    def _keep(self) -> dict[str, Any]:
        """Write the WAV and the record's entry (no transcript yet): the message is kept
        from here on, whatever happens next."""
        audio = self._write_wav()
        entry: dict[str, Any] = {
            "audio": str(audio) if audio else None, "transcript": None,
            "duration_s": round(len(self._pcm) / 2 / self.leg.sample_rate, 2),
            "ended_by": self._ended_by, "model": self.settings.model, "webhook": None}
        self.record.voicemail = entry
        metrics.VOICEMAILS.labels(ended_by=self._ended_by).inc()
        return entry

    async def _finish(self, opening: asyncio.Task[None]) -> None:
        s = self.settings
        entry = self._keep()
        goodbye = None if self._hung_up else asyncio.create_task(
            self._play(s.goodbye, DEFAULT_GOODBYE))
        entry["transcript"] = await self._transcript(opening)
        if entry["transcript"]:
            self.record.transcript.append(TranscriptEntry(
                role="caller", item_id="voicemail", text=entry["transcript"], at=time.time()))
            self.emit(TranscriptAdded(call_id=self.record.call_id, role="caller",
                                      text=entry["transcript"]))
        await self._save()
        entry["webhook"] = await self._post_webhook(entry)
        if goodbye is not None:
            await goodbye

    async def _open_transcription(self) -> None:
        if self.target is None:
            return
        client = TranscriptionClient(self.target, self.settings.model,
                                     language=self.settings.language, log=log,
                                     token_provider=self._tokens, on_delta=self._on_delta)
        try:
            await client.open()
        except RealtimeError as exc:
            metrics.VOICEMAIL_TRANSCRIPTIONS.labels(outcome="unavailable").inc()
            _throttle.log(logging.WARNING, "voicemail-open", "voicemail %s: %s",
                          self.record.call_id, exc)
            return
        self._client = client
        self._feed()                       # what was recorded while it opened

    def _on_delta(self, delta: str) -> None:
        self.emit(TranscriptDelta(call_id=self.record.call_id, item_id="voicemail",
                                  delta=delta))

    async def _transcript(self, opening: asyncio.Task[None]) -> str | None:
        await wait_within(self.clock, opening, 15.0)
        self._feed()
        client = self._client
        if client is None:
            return None
        if client.appended_bytes < 24000 * 2 // 10:    # under 100 ms: nothing to commit
            metrics.VOICEMAIL_TRANSCRIPTIONS.labels(outcome="empty").inc()
            return ""
        try:
            text = await client.finish(TRANSCRIPT_TIMEOUT_S)
        except RealtimeError as exc:
            metrics.VOICEMAIL_TRANSCRIPTIONS.labels(outcome="failed").inc()
            _throttle.log(logging.WARNING, "voicemail-fail", "voicemail %s: %s",
                          self.record.call_id, exc)
            return None
        metrics.VOICEMAIL_TRANSCRIPTIONS.labels(outcome="ok").inc()
        return text

    async def _play(self, spec: str | None, default: str) -> None:
        rate = self.leg.sample_rate
        try:
            audio = load_announcement(spec or default, rate)
        except (OSError, ValueError) as exc:
            log.error("voicemail sound %r unusable: %r", spec, exc)
            audio = load_announcement(default, rate)
        self.playout.push_leg_audio(audio)
        fut = self.playout.drained()
        if fut is not None:
            await wait_within(self.clock, fut, len(audio) / 2 / rate + GREETING_EXTRA_S)

    def _write_wav(self) -> Path | None:
        folder = self.settings.directory
        path = folder / f"{self.record.call_id}.wav"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with wave.open(str(path), "wb") as w:
                w.setnchannels(1)
                w.setsampwidth(2)
                w.setframerate(self.leg.sample_rate)
                w.writeframes(bytes(self._pcm))
        except OSError as exc:
            log.error("voicemail %s: cannot write %s: %r", self.record.call_id, path, exc)
            return None
        return path

    async def _post_webhook(self, entry: dict[str, Any]) -> int | str | None:
        url = self.settings.webhook_url
        if not url:
            return None
        r = self.record
        body = {"call_id": r.call_id, "caller": r.caller, "called": r.called,
                "dialplan": r.dialplan, **{k: v for k, v in entry.items() if k != "webhook"}}
        try:
            tls = await asyncio.to_thread(_tls)    # the CA bundle: loaded once, off the loop
            # trust_env=False: the webhook goes where the dialplan says, never via a proxy
            # the environment names (nor with credentials from ~/.netrc).
            async with httpx.AsyncClient(timeout=WEBHOOK_TIMEOUT_S, trust_env=False,
                                         verify=tls) as http:
                response = await http.post(url, json=body,
                                           headers=dict(self.settings.webhook_headers))
        except httpx.HTTPError as exc:
            metrics.VOICEMAIL_WEBHOOKS.labels(outcome="error").inc()
            _throttle.log(logging.WARNING, "voicemail-hook", "voicemail webhook failed: %s",
                          type(exc).__name__)
            return type(exc).__name__
        ok = response.is_success
        metrics.VOICEMAIL_WEBHOOKS.labels(outcome="ok" if ok else "refused").inc()
        return response.status_code

    async def _save(self) -> None:
        try:
            await self.store.save(self.record)
        except Exception:
            log.exception("could not save the voicemail record")

    async def _save_final(self) -> None:
        r = self.record
        r.ended_at = time.time()
        r.end_reason = "caller_hangup" if self._hung_up else "voicemail"
        r.end_detail = self._ended_by
        metrics.CALLS_ENDED.labels(reason=r.end_reason).inc()
        await self._save()
        self.emit(CallEnded(call_id=r.call_id, reason=r.end_reason, source=r.source))
