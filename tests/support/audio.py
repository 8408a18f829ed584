"""Synthetic audio for tests: PCM16LE mono tones, speech-like audio and silence, and the
float sine that resampler measurements compare against.

``tone`` is the one tone generator of the tests (the product's own generator,
``bridge.codecs.level.tone``, is under test in test_codecs_level.py and is what the RTP and
interop tests send as a known signal).
"""

from __future__ import annotations

import array
import math

import numpy as np

#: The peak that 0 dBFS means for ``tone``'s ``dbfs`` (the largest int16 value).
FULL_SCALE = 32767


def tone(ms: int, *, freq: float = 440.0, rate: int = 24000, amp: float | None = None,
         dbfs: float | None = None) -> bytes:
    """``ms`` milliseconds of a sine at ``freq`` as PCM16LE at ``rate`` (24 kHz: the
    Realtime API's audio), starting at phase 0.

    The peak is ``amp`` (int16 units) or ``dbfs`` (relative to ``FULL_SCALE``), -20 dBFS
    when neither is given. Sample ``i`` is ``peak * sin(2*pi*freq*i / rate)`` truncated
    toward zero, evaluated in that order, so a tone is the same bytes on every run.
    """
    if amp is not None and dbfs is not None:
        raise ValueError("give the level as amp or as dbfs, not both")
    if amp is None:
        amp = FULL_SCALE * 10 ** ((-20.0 if dbfs is None else dbfs) / 20)
    n = rate * ms // 1000
    x = amp * np.sin(2 * np.pi * freq * np.arange(n, dtype=np.float64) / rate)
    pcm: bytes = x.astype("<i2").tobytes()
    return pcm


def silence(ms: int, rate: int = 24000) -> bytes:
    """``ms`` milliseconds of digital silence, PCM16LE at ``rate``."""
    return bytes(ms * rate // 1000 * 2)


def speech(ms: int, rate: int = 8000) -> bytes:
    """Speech-like audio: a 150 Hz buzz with harmonics, syllable-modulated, ~-20 dBFS."""
    n = rate * ms // 1000
    out = array.array("h", bytes(2 * n))
    for i in range(n):
        t = i / rate
        env = 0.6 + 0.4 * math.sin(2 * math.pi * 4 * t)
        out[i] = int(3000 * env * sum(math.sin(2 * math.pi * 150 * k * t) / k
                                      for k in (1, 2, 3, 4)))
    return out.tobytes()


def sine(freq: float, n: int, rate: int, amplitude: float = 16000.0, *, phase: float = 0.0,
         delay_s: float = 0.0) -> np.ndarray:
    """``n`` float64 samples of ``amplitude * sin(2*pi*freq*t + phase)`` at
    ``t = i/rate - delay_s``: a reference to measure against, not rounded to PCM16."""
    t = np.arange(n) / rate - delay_s
    out: np.ndarray = amplitude * np.sin(2 * np.pi * freq * t + phase)
    return out
