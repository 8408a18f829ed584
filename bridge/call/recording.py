"""Call recording: a stereo WAV of what each side heard (caller left, agent right).

Theory of operation
-------------------
``CallRecording`` taps the media path at the leg's seam, at the leg's own rate (8 kHz for
G.711, 16 kHz for G.722):

* left: every frame the leg hands the call (``caller``), decoded from G.711 when the leg
  carries the payload as is;
* right: every frame the playout hands the leg (``agent``): the agent's audio as it was
  played, the comfort beep, announcements, the hold signal. Audio flushed at a barge-in
  was never handed to the leg, so it is not in the recording: the right channel is silent
  from the truncation point on, exactly as the caller heard it.

The playout's tap calls ``agent`` once every tick it runs, so each tick writes one stereo
frame: the agent frame handed over in that tick (or silence) beside the oldest caller
frame waiting (or silence). (Driven by the playout's own tick, not a clock subscription of
its own: the clock may run other subscribers later in a catch-up, which would pair frames
of different ticks.) Caller frames wait in a queue of at most ``_MAX_WAITING`` frames
(jitter; a faster far-end clock drops its oldest), and the stereo samples are written to
the file once a second: memory stays bounded whatever the call's length. ``close()``
writes the rest and the WAV header's sizes.

Files are named ``<call id>.keep<days>d.wav`` in ``[records] recordings_path``: the
retention is in the name, so ``sweep`` (at start and daily, ``bridge/serve.py``) needs
nothing but the folder to delete what has expired.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
import wave
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from bridge import metrics
from bridge.codecs import g711

if TYPE_CHECKING:
    from bridge.call.call import Call

log = logging.getLogger(__name__)

_MAX_WAITING = 15                # caller frames queued for the next ticks (300 ms: a burst
                                 # after the loop was held up; more is a faster far-end clock)
_FLUSH_TICKS = 50                # one write a second
_NAME = re.compile(r"^[A-Za-z0-9_.-]+\.keep(\d{1,4})d\.wav$")
SWEEP_EVERY_S = 86400.0


def recording_name(call_id: str, retention_days: int) -> str:
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", call_id)
    return f"{safe}.keep{retention_days}d.wav"


class CallRecording:
    """The stereo WAV of one call (see the module docstring)."""

    def __init__(self, path: Path, rate: int, frame_samples: int, law: str = "") -> None:
        self.path = path
        self.rate = rate
        self._n = frame_samples
        self._law = law
        path.parent.mkdir(parents=True, exist_ok=True)
        self._wav: wave.Wave_write | None = wave.open(str(path), "wb")  # noqa: SIM115
        self._wav.setnchannels(2)
        self._wav.setsampwidth(2)
        self._wav.setframerate(rate)
        self._waiting: deque[bytes] = deque(maxlen=_MAX_WAITING)
        # One second of interleaved stereo samples, filled in place and written at once.
        self._buf = np.zeros(2 * frame_samples * _FLUSH_TICKS, dtype="<i2")
        self._fill = 0                          # ticks in the buffer
        self.frames = 0
        self.failed = False

    def caller(self, frame: bytes) -> None:
        """A frame from the leg (the call's inbound tap)."""
        if self._wav is not None:
            self._waiting.append(frame)

    def agent(self, frame: bytes | None) -> None:
        """The playout's tick: the frame it handed to the leg (None: nothing). Writes one
        stereo frame, beside the oldest caller frame waiting."""
        if self._wav is None:
            return
        at = 2 * self._n * self._fill
        out = self._buf[at:at + 2 * self._n]
        self._put(self._waiting.popleft() if self._waiting else None, out[0::2])
        self._put(frame, out[1::2])
        self._fill += 1
        self.frames += 1
        if self._fill >= _FLUSH_TICKS:
            self._flush()

    def _put(self, frame: bytes | None, view: np.ndarray) -> None:
        """One side's frame into its channel of the buffer (silence when there is none)."""
        if not frame:
            view[:] = 0
            return
        if self._law and len(frame) == self._n:
            frame = g711.decode(self._law, frame)
        pcm = np.frombuffer(frame, dtype="<i2")
        if len(pcm) == self._n:
            view[:] = pcm
        else:                                   # a short frame: padded with silence
            view[:] = 0
            view[:min(len(pcm), self._n)] = pcm[:self._n]

    def _flush(self) -> None:
        if self._wav is None or not self._fill:
            return
        data = self._buf[:2 * self._n * self._fill].tobytes()
        self._fill = 0
        try:
            self._wav.writeframesraw(data)
        except OSError as exc:
            log.warning("recording %s: write failed (%s); recording stopped",
                        self.path.name, exc)
            self.failed = True
            metrics.RECORDINGS.labels(event="failed").inc()
            self._abandon()

    def _abandon(self) -> None:
        wav, self._wav = self._wav, None
        if wav is not None:
            try:
                wav.close()
            except OSError:
                pass

    def close(self) -> float:
        """Write what is left and the header; the seconds recorded."""
        if self._wav is None:
            return 0.0
        self._flush()
        if self._wav is not None:
            try:
                self._wav.close()
            except OSError as exc:
                log.warning("recording %s: close failed (%s)", self.path.name, exc)
                metrics.RECORDINGS.labels(event="failed").inc()
                self.failed = True
            else:
                metrics.RECORDINGS.labels(event="written").inc()
            self._wav = None
        return self.frames * self._n / self.rate


def start(call: Call, folder: str) -> CallRecording | None:
    """Begin recording ``call`` if its plan asks for it: the recording tapped into the
    call's inbound path and playout and subscribed to its clock; the path in the record."""
    policy = call.dialplan.recording
    if not policy.enabled:
        return None
    if not folder:
        metrics.RECORDINGS.labels(event="no_folder").inc()
        call.log.warning("dialplan %s records calls, but [records] recordings_path is "
                         "empty: not recorded", call.dialplan.name)
        return None
    leg = call.leg
    path = Path(folder) / recording_name(call.call_id, policy.retention_days)
    law = leg.carry if leg.carry in g711.SILENCE_BYTE else ""
    try:
        rec = CallRecording(path, leg.sample_rate, leg.frame_samples, law)
    except OSError as exc:
        metrics.RECORDINGS.labels(event="failed").inc()
        call.log.warning("could not open the recording %s: %s", path, exc)
        return None
    metrics.RECORDINGS.labels(event="started").inc()
    inbound = call.inbound.on_frame

    def tapped(frame: bytes) -> None:
        rec.caller(frame)
        inbound(frame)

    call.on_leg_audio = tapped
    call.playout.tap = rec.agent
    call.record.recording = str(path.resolve())
    return rec


def stop(call: Call, rec: CallRecording | None) -> None:
    if rec is None:
        return
    call.playout.tap = None
    seconds = rec.close()
    call.log.info("recording closed: %.1f s", seconds)


async def play_consent(call: Call, limit_s: float = 60.0) -> None:
    """The plan's consent announcement, played to the caller before the agent speaks
    (the wait is bounded on the call's clock)."""
    from bridge.call.timers import clock_timeout  # noqa: PLC0415
    from bridge.dialplans.announce import load_announcement  # noqa: PLC0415

    spec = call.dialplan.recording.consent
    if not call.dialplan.recording.enabled or spec is None:
        return
    call.playout.push_leg_audio(load_announcement(spec, call.leg.sample_rate))
    drained = call.playout.drained()
    if drained is not None:
        try:
            async with clock_timeout(call.clock, limit_s):
                await drained
        except TimeoutError:
            call.log.warning("consent announcement still playing after %.0f s", limit_s)


def consent_greeting(call: Call, greeting: str | None) -> str | None:
    """The greeting's instructions with the plan's ``consent_text`` said first."""
    policy = call.dialplan.recording
    if not policy.enabled or not policy.consent_text:
        return greeting
    first = f'Before anything else, say exactly: "{policy.consent_text}"'
    return f"{first}\nThen: {greeting}" if greeting else first


def sweep(folder: str, now: float | None = None) -> int:
    """Delete the recordings in ``folder`` older than the retention in their names; the
    number deleted."""
    if not folder or not os.path.isdir(folder):
        return 0
    now = time.time() if now is None else now
    deleted = 0
    with os.scandir(folder) as entries:
        for entry in entries:
            m = _NAME.match(entry.name)
            if m is None or not entry.is_file():
                continue
            try:
                if now - entry.stat().st_mtime > int(m.group(1)) * 86400:
                    os.unlink(entry.path)
                    deleted += 1
            except OSError as exc:
                log.warning("retention: could not delete %s: %s", entry.name, exc)
    if deleted:
        metrics.RECORDINGS.labels(event="expired").inc(deleted)
        log.info("retention: %d recording(s) deleted from %s", deleted, folder)
    return deleted


async def sweep_daily(folder: str) -> None:
    """``sweep`` now and once a day (run as a task by ``voicebridge serve``)."""
    while True:
        try:
            await asyncio.to_thread(sweep, folder)
        except OSError as exc:        # the folder unreadable: tried again tomorrow
            log.warning("retention: could not sweep %s: %s", folder, exc)
        await asyncio.sleep(SWEEP_EVERY_S)


__all__ = ["CallRecording", "consent_greeting", "play_consent", "recording_name", "start",
           "stop", "sweep", "sweep_daily"]
