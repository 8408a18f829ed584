"""Energy-based voice activity detection, sans-I/O.

Theory of operation
-------------------
PCM16LE samples go in through :meth:`EnergyVad.feed`; :class:`VadStart` / :class:`VadStop`
events come out, positioned in *audio time*: milliseconds counted from the samples fed,
never from a clock. A caller may therefore push audio faster than real time (tests do) and
get exactly the positions a real-time stream would get.

The audio is cut into fixed frames (``frame_ms``, 10 ms by default: the resolution of every
position reported). A frame is *voiced* when its RMS level reaches the threshold:

- ``threshold`` (0..1, the protocol's ``turn_detection.threshold``) maps linearly onto
  -70..-10 dBFS, so the protocol default 0.5 is -40 dBFS: well above a quiet phone line
  (-60 dBFS and below) and well below speech (-30..-15 dBFS). A higher threshold needs
  louder audio, as the protocol says.
- Speech starts after ``min_speech_ms`` of consecutive voiced frames (a click is not
  speech); the onset reported is the start of the first of those frames.
- Inside speech the threshold drops by ``hysteresis_db`` so that the quiet valleys of real
  speech do not end the turn.
- Speech stops once ``silence_duration_ms`` of unvoiced frames follow the last voiced one;
  ``speech_end_ms`` is the end of that last voiced frame and ``audio_end_ms`` the position
  where the stop was decided (``speech_end_ms`` + the silence, as the real service reports:
  its ``audio_end_ms`` "includes the min_silence_duration_ms").

``prefix_padding_ms`` is not the detector's business: the session subtracts it from the
onset to report ``audio_start_ms``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from bridge.realtime.emulator.audio import audioop

__all__ = ["EnergyVad", "VadSettings", "VadStart", "VadStop", "threshold_dbfs"]


def threshold_dbfs(threshold: float) -> float:
    """The energy threshold (dBFS) that protocol ``threshold`` (0..1) stands for."""
    return -70.0 + 60.0 * min(1.0, max(0.0, threshold))


@dataclass(frozen=True)
class VadSettings:
    threshold: float = 0.5
    silence_duration_ms: int = 500
    frame_ms: int = 10
    min_speech_ms: int = 20
    hysteresis_db: float = 6.0


@dataclass(frozen=True)
class VadStart:
    """Speech began at ``onset_ms`` (audio time of the first voiced frame)."""

    onset_ms: int


@dataclass(frozen=True)
class VadStop:
    """Speech ended at ``speech_end_ms``; the stop was decided at ``audio_end_ms``."""

    speech_end_ms: int
    audio_end_ms: int


VadEvent = VadStart | VadStop


def _rms_for(dbfs: float) -> float:
    return 32768.0 * math.pow(10.0, dbfs / 20.0)


class EnergyVad:
    """Frame-energy VAD over PCM16LE mono at ``sample_rate``.

    ``start_ms`` is the audio time of the first sample fed (a detector created when the
    session's settings change mid-stream keeps the session's time line).
    """

    def __init__(self, settings: VadSettings, sample_rate: int, start_ms: int = 0) -> None:
        if settings.frame_ms <= 0 or sample_rate * settings.frame_ms % 1000:
            raise ValueError("frame_ms must give a whole number of samples")
        self.settings = settings
        self.sample_rate = sample_rate
        self._frame_samples = sample_rate * settings.frame_ms // 1000
        self._frame_bytes = self._frame_samples * 2
        self._on_rms = _rms_for(threshold_dbfs(settings.threshold))
        self._hold_rms = _rms_for(threshold_dbfs(settings.threshold) - settings.hysteresis_db)
        self._min_speech_frames = max(1, -(-settings.min_speech_ms // settings.frame_ms))
        self._silence_frames = max(1, -(-settings.silence_duration_ms // settings.frame_ms))
        self._pending = bytearray()
        self._frame_index = 0  # frames consumed since start_ms
        self._start_ms = start_ms
        self.in_speech = False
        self._run = 0  # voiced frames in a row (before speech) / unvoiced (during speech)
        self._last_voiced_end = 0  # frame index after the last voiced frame

    @property
    def position_ms(self) -> int:
        """Audio time up to which frames have been judged."""
        return self._start_ms + self._frame_index * self.settings.frame_ms

    def _ms(self, frame_index: int) -> int:
        return self._start_ms + frame_index * self.settings.frame_ms

    def reset(self) -> None:
        """Forget any speech in progress (the input buffer was cleared); time goes on."""
        self.in_speech = False
        self._run = 0

    def feed(self, pcm: bytes) -> list[VadEvent]:
        """Judge the complete frames now available; return the events they cause."""
        buf = self._pending
        buf += pcm
        fb = self._frame_bytes
        usable = len(buf) - len(buf) % fb
        if not usable:
            return []
        events: list[VadEvent] = []
        view = memoryview(buf)
        rms = audioop.rms
        try:
            for off in range(0, usable, fb):
                level = rms(view[off:off + fb], 2)
                self._frame_index += 1
                if self.in_speech:
                    self._speech_frame(level, events)
                else:
                    self._silence_frame(level, events)
        finally:
            view.release()
        del buf[:usable]
        return events

    def _silence_frame(self, level: float, events: list[VadEvent]) -> None:
        if level < self._on_rms:
            self._run = 0
            return
        self._run += 1
        if self._run >= self._min_speech_frames:
            self.in_speech = True
            onset = self._frame_index - self._run
            self._run = 0
            self._last_voiced_end = self._frame_index
            events.append(VadStart(self._ms(onset)))

    def _speech_frame(self, level: float, events: list[VadEvent]) -> None:
        if level >= self._hold_rms:
            self._run = 0
            self._last_voiced_end = self._frame_index
            return
        self._run += 1
        if self._run >= self._silence_frames:
            self.in_speech = False
            self._run = 0
            events.append(VadStop(self._ms(self._last_voiced_end), self.position_ms))
