"""Audio formats of the Realtime protocol, and the few conversions the emulator needs.

The protocol knows three formats (docs/realtime-protocol.md §7): ``audio/pcm`` (PCM16LE mono 24 kHz,
48 bytes per ms) and G.711 ``audio/pcmu`` / ``audio/pcma`` (8 kHz, one byte per sample).
The emulator decodes G.711 with the standard library's ``audioop`` (C, fast) for its VAD
and converts between formats through PCM16, resampling with ``soxr`` when rates differ.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import soxr

with warnings.catch_warnings():
    # audioop is deprecated in 3.11/3.12 and comes back as audioop-lts from 3.13 on
    # (a runtime dependency there); the warning says nothing we can act on.
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

__all__ = [
    "AUDIO_FORMATS",
    "AudioFormat",
    "audioop",
    "convert",
    "pcm16_to_format",
    "silence",
    "to_pcm16",
    "tone",
]


@dataclass(frozen=True)
class AudioFormat:
    """One wire format: its GA name, preview name, sample rate and bytes per sample."""

    ga_type: str
    preview_name: str
    rate: int
    sample_width: int

    @property
    def bytes_per_ms(self) -> int:
        return self.rate * self.sample_width // 1000

    def ms(self, nbytes: int) -> float:
        """Duration of ``nbytes`` of this format, in milliseconds."""
        return nbytes / self.bytes_per_ms

    def ga_dict(self) -> dict[str, object]:
        if self.ga_type == "audio/pcm":
            return {"type": "audio/pcm", "rate": self.rate}
        return {"type": self.ga_type}


PCM16 = AudioFormat("audio/pcm", "pcm16", 24000, 2)
PCMU = AudioFormat("audio/pcmu", "g711_ulaw", 8000, 1)
PCMA = AudioFormat("audio/pcma", "g711_alaw", 8000, 1)

AUDIO_FORMATS: dict[str, AudioFormat] = {f.ga_type: f for f in (PCM16, PCMU, PCMA)}
PREVIEW_FORMATS: dict[str, AudioFormat] = {f.preview_name: f for f in (PCM16, PCMU, PCMA)}


def to_pcm16(fmt: AudioFormat, data: bytes) -> bytes:
    """Decode ``data`` of ``fmt`` to PCM16LE at the format's own rate."""
    if fmt is PCMU:
        return audioop.ulaw2lin(data, 2)
    if fmt is PCMA:
        return audioop.alaw2lin(data, 2)
    return data


def pcm16_to_format(fmt: AudioFormat, pcm: bytes) -> bytes:
    """Encode PCM16LE (already at ``fmt.rate``) into ``fmt``."""
    if fmt is PCMU:
        return audioop.lin2ulaw(pcm, 2)
    if fmt is PCMA:
        return audioop.lin2alaw(pcm, 2)
    return pcm


def resample(pcm: bytes, in_rate: int, out_rate: int) -> bytes:
    """Resample a whole PCM16LE utterance (not a stream: the emulator has it all at once)."""
    if in_rate == out_rate or not pcm:
        return pcm
    samples = np.frombuffer(pcm, dtype=np.int16)
    out = soxr.resample(samples, in_rate, out_rate, quality="HQ")
    # soxr may return a sample more or less than the exact ratio; keep durations exact.
    want = len(samples) * out_rate // in_rate
    out = np.asarray(out, dtype=np.int16)
    if len(out) < want:
        out = np.concatenate([out, np.zeros(want - len(out), dtype=np.int16)])
    return out[:want].tobytes()


def convert(src: AudioFormat, data: bytes, dst: AudioFormat) -> bytes:
    """Convert a whole utterance from one wire format to another."""
    if src is dst:
        return data
    pcm = resample(to_pcm16(src, data), src.rate, dst.rate)
    return pcm16_to_format(dst, pcm)


def silence(fmt: AudioFormat, ms: int) -> bytes:
    return pcm16_to_format(fmt, bytes(ms * fmt.rate // 1000 * 2))


def tone(fmt: AudioFormat, ms: int, freqs: tuple[float, ...] = (440.0, 660.0),
         dbfs: float = -18.0) -> bytes:
    """A chord of ``freqs`` lasting ``ms`` in ``fmt``, with 10 ms fades (no clicks)."""
    n = ms * fmt.rate // 1000
    t = np.arange(n, dtype=np.float64) / fmt.rate
    wave = np.zeros(n, dtype=np.float64)
    for f in freqs:
        wave += np.sin(2 * math.pi * f * t)
    peak = 32767.0 * 10 ** (dbfs / 20) / max(1, len(freqs))
    wave *= peak
    fade = min(n // 2, fmt.rate // 100)
    if fade:
        ramp = np.linspace(0.0, 1.0, fade)
        wave[:fade] *= ramp
        wave[n - fade:] *= ramp[::-1]
    pcm = wave.astype(np.int16).tobytes()
    return pcm16_to_format(fmt, pcm)
