"""Levels, silence, and test tones for PCM16LE mono.

dBFS follows AES17: a full-scale sine reads 0 dBFS (so a full-scale square wave reads
+3 dBFS). Silence has no logarithm; ``dbfs`` floors at ``FLOOR_DBFS`` (-120) so that levels
stay finite numbers in logs, metrics and JSON.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["FLOOR_DBFS", "ToneGenerator", "dbfs", "is_silence", "peak", "rms", "tone"]

#: Level reported for digital silence (and anything quieter).
FLOOR_DBFS = -120.0
_FULL_SCALE = 32768.0
#: rms of a full-scale sine: the 0 dBFS reference of AES17.
_SINE_RMS = _FULL_SCALE / math.sqrt(2)


def _samples(pcm: bytes) -> np.ndarray[tuple[int], np.dtype[np.int16]]:
    return np.frombuffer(pcm, dtype="<i2", count=len(pcm) // 2)


def rms(pcm: bytes) -> float:
    """Root mean square of the samples, in int16 units (0.0 for an empty buffer)."""
    x = _samples(pcm)
    if not len(x):
        return 0.0
    y = x.astype(np.float64)
    return math.sqrt(float(np.dot(y, y)) / len(y))


def peak(pcm: bytes) -> int:
    """Largest absolute sample value (0 for an empty buffer)."""
    x = _samples(pcm)
    return int(np.abs(x.astype(np.int32)).max()) if len(x) else 0


def dbfs(pcm: bytes) -> float:
    """Level in dBFS (AES17), floored at ``FLOOR_DBFS`` for silence."""
    r = rms(pcm)
    if r <= 0.0:
        return FLOOR_DBFS
    return max(FLOOR_DBFS, 20.0 * math.log10(r / _SINE_RMS))


def is_silence(pcm: bytes, threshold_dbfs: float = -50.0) -> bool:
    """True when the level is below ``threshold_dbfs`` (an empty buffer is silence)."""
    return dbfs(pcm) < threshold_dbfs


class ToneGenerator:
    """A continuous sine: successive ``read`` calls join without a phase jump.

    For call-progress tones and announcements played in pieces, one frame per tick.
    """

    def __init__(self, freq_hz: float, rate: int, dbfs: float = -12.0) -> None:
        if dbfs > 0.0:
            raise ValueError(f"a sine above 0 dBFS clips (asked for {dbfs} dBFS)")
        if not 0.0 <= freq_hz < rate / 2:
            raise ValueError(f"{freq_hz} Hz is not below the Nyquist frequency of {rate} Hz")
        self.freq_hz = freq_hz
        self.rate = rate
        self._amplitude = min(32767.0, _FULL_SCALE * 10.0 ** (dbfs / 20.0))
        self._n = 0   # samples produced so far (the phase, exactly)

    def read_samples(self, count: int) -> bytes:
        """The next ``count`` samples as PCM16LE."""
        n = np.arange(self._n, self._n + count, dtype=np.float64)
        self._n += count
        x = self._amplitude * np.sin(2.0 * np.pi * self.freq_hz * n / self.rate)
        pcm: bytes = np.rint(x).astype("<i2").tobytes()
        return pcm

    def read(self, ms: float) -> bytes:
        """The next ``ms`` milliseconds as PCM16LE (rounded to whole samples)."""
        return self.read_samples(round(self.rate * ms / 1000.0))


def tone(freq_hz: float, ms: float, rate: int, dbfs: float = -12.0) -> bytes:
    """``ms`` milliseconds of a sine at ``freq_hz`` and ``dbfs`` (AES17), PCM16LE."""
    return ToneGenerator(freq_hz, rate, dbfs).read(ms)
