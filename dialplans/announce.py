"""Announcements the bridge plays by itself: bundled WAV files and tone sequences.

``load_announcement(spec, rate)`` returns PCM16 little-endian mono at ``rate`` for:

* a bundled sound name (a file of ``dialplans/sounds/``, e.g. ``"unavailable-transfer"``);
* a path to a WAV file (PCM, 8/16-bit, any rate, mono or stereo);
* a tone spec: comma-separated ``FREQ:MS`` steps, ``0`` for silence and ``F1+F2`` for a
  dual tone, e.g. ``"440:200,0:100,440:200"`` or ``"440+480:2000,0:4000"`` (ringback).

The bundled sounds are 8 kHz mono 16-bit, made once with::

    espeak-ng -v en-us -s 150 -w /tmp/a.wav "We're sorry, our assistant is unavailable. \\
        Please hold while we transfer you."
    sox /tmp/a.wav -r 8000 -c 1 -b 16 dialplans/sounds/unavailable-transfer.wav \\
        silence 1 0.02 0.5% reverse silence 1 0.02 0.5% reverse \\
        norm -3 highpass 200 lowpass 3400 pad 0 0.3

(``unavailable-goodbye``: "... Please call again later. Goodbye."). The leading silence is
trimmed so that the announcement starts the moment the fallback runs.
"""

from __future__ import annotations

import functools
import math
import re
import wave
from pathlib import Path

import numpy as np

SOUNDS_DIR = Path(__file__).resolve().parent / "sounds"
TONE_SPEC = re.compile(r"^\s*\d{1,5}(\+\d{1,5})?:\d{1,6}(\s*,\s*\d{1,5}(\+\d{1,5})?:\d{1,6})*\s*$")
TONE_LEVEL_DBFS = -12.0
_FADE_MS = 5
MAX_TONE_MS = 60_000


def bundled_sounds() -> list[str]:
    """Names of the bundled announcements."""
    return sorted(path.stem for path in SOUNDS_DIR.glob("*.wav"))


def is_tone_spec(spec: str) -> bool:
    return TONE_SPEC.match(spec) is not None


def parse_tones(spec: str) -> list[tuple[tuple[int, ...], int]]:
    """``[((freqs...), ms), ...]``; ValueError if the spec is malformed or too long."""
    if not is_tone_spec(spec):
        raise ValueError(f"{spec!r} is not a tone spec like \"440:200,0:100,440:200\"")
    steps = []
    for step in spec.split(","):
        freqs, _, ms = step.strip().partition(":")
        tones = tuple(int(f) for f in freqs.split("+") if int(f) > 0)
        steps.append((tones, int(ms)))
    total = sum(ms for _, ms in steps)
    if total > MAX_TONE_MS:
        raise ValueError(f"tone spec lasts {total} ms; at most {MAX_TONE_MS}")
    return steps


def is_bundled_name(spec: str) -> bool:
    """Whether ``spec`` is written as a bundled sound name (not a path, not a file name)."""
    return "/" not in spec and "\\" not in spec and not spec.endswith(".wav")


def resolve_sound(spec: str, base: Path | None = None) -> Path | None:
    """The WAV file ``spec`` names (bundled name, or a path relative to ``base``), or None."""
    if is_bundled_name(spec):
        bundled = SOUNDS_DIR / f"{spec}.wav"
        return bundled if bundled.is_file() else None
    path = Path(spec)
    if not path.is_absolute() and base is not None:
        path = base / path
    return path if path.is_file() else None


def tones_pcm(spec: str, rate: int) -> bytes:
    """Render a tone spec to PCM16 at ``rate``, with short fades so steps do not click."""
    amplitude = 32767 * 10 ** (TONE_LEVEL_DBFS / 20)
    out = []
    for freqs, ms in parse_tones(spec):
        n = rate * ms // 1000
        if not freqs:
            out.append(np.zeros(n, dtype=np.float64))
            continue
        t = np.arange(n) / rate
        wave_ = np.zeros(n, dtype=np.float64)
        for freq in freqs:
            wave_ += np.sin(2 * math.pi * freq * t) / len(freqs)
        fade = min(n // 2, rate * _FADE_MS // 1000)
        if fade:
            ramp = np.linspace(0.0, 1.0, fade)
            wave_[:fade] *= ramp
            wave_[-fade:] *= ramp[::-1]
        out.append(wave_ * amplitude)
    samples = np.concatenate(out) if out else np.zeros(0)
    return samples.round().astype("<i2").tobytes()


def _read_wav(path: Path) -> tuple[bytes, int]:
    """PCM16 mono and the file's rate."""
    with wave.open(str(path), "rb") as wav:
        channels, width, rate = wav.getnchannels(), wav.getsampwidth(), wav.getframerate()
        frames = wav.readframes(wav.getnframes())
    if width == 1:
        data = ((np.frombuffer(frames, dtype=np.uint8).astype(np.int16) - 128) << 8)
    elif width == 2:
        data = np.frombuffer(frames, dtype="<i2")
    else:
        raise ValueError(f"{path.name}: {8 * width}-bit samples; use 8- or 16-bit PCM")
    if channels > 1:
        data = data.reshape(-1, channels).mean(axis=1).round().astype(np.int16)
    return data.astype("<i2").tobytes(), rate


def _resample(pcm: bytes, in_rate: int, out_rate: int) -> bytes:
    if in_rate == out_rate or not pcm:
        return pcm
    try:
        from bridge.codecs.resample import StreamResampler  # noqa: PLC0415
    except ImportError:
        import soxr  # noqa: PLC0415

        samples = np.frombuffer(pcm, dtype="<i2")
        out = soxr.resample(samples, in_rate, out_rate, quality="HQ")
        return np.asarray(out, dtype="<i2").tobytes()
    resampler = StreamResampler(in_rate, out_rate)
    return resampler.process(pcm) + resampler.flush()


@functools.lru_cache(maxsize=32)
def load_announcement(spec: str, rate: int) -> bytes:
    """PCM16 mono at ``rate`` for a bundled name, a WAV path or a tone spec.

    Raises ``FileNotFoundError`` for an unknown sound, ``ValueError`` for a bad spec.
    """
    if is_tone_spec(spec):
        return tones_pcm(spec, rate)
    path = resolve_sound(spec)
    if path is None:
        raise FileNotFoundError(f"no announcement {spec!r}; bundled: "
                                f"{', '.join(bundled_sounds()) or 'none'}")
    pcm, file_rate = _read_wav(path)
    return _resample(pcm, file_rate, rate)
