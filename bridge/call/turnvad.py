"""The bridge's own voice activity detector: caller frames in, turn events out (sans-I/O).

Theory of operation
-------------------
When a dialplan turns the server's turn handling off (``turn_detection = none``) the
upstream never hears that the caller stopped talking, and a turn would never end; and the
server's ``speech_started`` reaches the bridge a round trip (and its own smoothing) after
the caller started talking over the agent. ``TurnDetector`` decides both on the bridge,
from the caller's own frames, with the WebRTC project's VAD (``webrtcvad-wheels``, a GMM
classifier on 10/20/30 ms frames of 8/16/32/48 kHz PCM16):

* **Speech starts** once ``min_speech_ms`` of voiced frames have been seen (an unvoiced
  frame takes one frame back, so a cough or a click does not add up but a word with
  short gaps does): ``SpeechBegan``, stamped with the ``now`` of the frame that decided
  it and the estimated onset.
* **The turn ends** once ``end_silence_ms`` of unvoiced frames follow speech (a voiced
  frame resets the count): ``TurnEnded`` with the speech's length.

No clock is read here: ``feed(frame, now)`` gets the frame's arrival time, so the same
code runs on the media clock in a call and on a virtual one in tests.
"""

from __future__ import annotations

from dataclasses import dataclass

import webrtcvad

#: sample rates the WebRTC VAD accepts
VAD_RATES = frozenset({8000, 16000, 32000, 48000})


@dataclass(frozen=True, slots=True)
class SpeechBegan:
    """The caller is talking: ``at`` is when that was decided, ``onset`` when it began."""

    at: float
    onset: float


@dataclass(frozen=True, slots=True)
class TurnEnded:
    """The caller stopped talking ``end_silence_ms`` ago; ``speech_ms`` of speech before."""

    at: float
    speech_ms: int


TurnEvent = SpeechBegan | TurnEnded


class TurnDetector:
    """One caller's speech and turns (see the module docstring)."""

    def __init__(self, sample_rate: int, *, aggressiveness: int = 2, min_speech_ms: int = 200,
                 end_silence_ms: int = 700, frame_ms: int = 20) -> None:
        if sample_rate not in VAD_RATES:
            raise ValueError(f"the VAD takes {sorted(VAD_RATES)} Hz, not {sample_rate}")
        if frame_ms not in (10, 20, 30):
            raise ValueError("the VAD takes frames of 10, 20 or 30 ms")
        if not 0 <= aggressiveness <= 3:
            raise ValueError("aggressiveness is 0 (least) to 3 (most)")
        self._vad = webrtcvad.Vad(aggressiveness)
        self.sample_rate = sample_rate
        self.frame_ms = frame_ms
        self._frame_bytes = 2 * sample_rate * frame_ms // 1000
        self.min_speech_ms = min_speech_ms
        self.end_silence_ms = end_silence_ms
        self.in_speech = False
        self._voiced_ms = 0       # towards min_speech_ms, before speech
        self._silent_ms = 0       # towards end_silence_ms, in speech
        self._speech_ms = 0       # length of the current speech
        #: frames classified (and of them voiced): for tests and figures
        self.frames = 0
        self.voiced_frames = 0

    def reset(self) -> None:
        """Forget any speech in progress (the caller's audio was cleared)."""
        self.in_speech = False
        self._voiced_ms = self._silent_ms = self._speech_ms = 0

    def feed(self, pcm: bytes, now: float) -> TurnEvent | None:
        """One frame of ``frame_ms`` PCM16 at ``sample_rate`` that arrived at ``now``."""
        if len(pcm) != self._frame_bytes:
            return None                          # a short or odd frame: not classified
        voiced = self._vad.is_speech(pcm, self.sample_rate)
        self.frames += 1
        self.voiced_frames += voiced
        step = self.frame_ms
        if not self.in_speech:
            self._voiced_ms = self._voiced_ms + step if voiced else max(0, self._voiced_ms - step)
            if self._voiced_ms < self.min_speech_ms:
                return None
            self.in_speech = True
            self._speech_ms, self._silent_ms, self._voiced_ms = self.min_speech_ms, 0, 0
            return SpeechBegan(at=now, onset=now - self.min_speech_ms / 1000)
        self._speech_ms += step
        self._silent_ms = 0 if voiced else self._silent_ms + step
        if self._silent_ms < self.end_silence_ms:
            return None
        speech_ms = self._speech_ms - self._silent_ms
        self.reset()
        return TurnEnded(at=now, speech_ms=speech_ms)


__all__ = ["VAD_RATES", "SpeechBegan", "TurnDetector", "TurnEnded", "TurnEvent"]
