"""Fallback announcements: bundled WAV files and tone specs, as PCM16 at the leg's rate."""

from __future__ import annotations

import wave

import numpy as np
import pytest

from bridge.dialplans import bundled_sounds, load_announcement
from bridge.dialplans.announce import SOUNDS_DIR, parse_tones


def samples(pcm: bytes) -> np.ndarray:
    return np.frombuffer(pcm, dtype="<i2").astype(np.float64)


def peak_hz(pcm: bytes, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples(pcm)))
    return float(np.fft.rfftfreq(len(pcm) // 2, 1 / rate)[int(np.argmax(spectrum))])


def test_bundled_sounds_are_small_8k_mono_16bit() -> None:
    assert {"unavailable-transfer", "unavailable-goodbye"} <= set(bundled_sounds())
    for name in bundled_sounds():
        path = SOUNDS_DIR / f"{name}.wav"
        with wave.open(str(path)) as wav:
            assert (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) == (8000, 1, 2)
            seconds = wav.getnframes() / 8000
        assert 2.0 < seconds < 8.0
        assert path.stat().st_size < 150_000


@pytest.mark.parametrize("rate", [8000, 16000, 24000, 48000])
def test_wav_at_the_requested_rate(rate: int) -> None:
    with wave.open(str(SOUNDS_DIR / "unavailable-transfer.wav")) as wav:
        seconds = wav.getnframes() / wav.getframerate()
    pcm = load_announcement("unavailable-transfer", rate)
    assert len(pcm) % 2 == 0
    assert abs(len(pcm) / 2 / rate - seconds) < 0.02
    level = np.sqrt(np.mean(samples(pcm) ** 2))
    assert level > 1000                       # speech, not silence


def test_wav_by_path() -> None:
    path = SOUNDS_DIR / "unavailable-goodbye.wav"
    assert load_announcement(str(path), 8000) == load_announcement("unavailable-goodbye", 8000)


def test_tone_spec() -> None:
    pcm = load_announcement("440:200,0:100,1000:300", 8000)
    assert len(pcm) == 2 * 8000 * 600 // 1000
    tone1, gap, tone2 = pcm[:3200], pcm[3200:4800], pcm[4800:]
    assert abs(peak_hz(tone1, 8000) - 440) <= 5
    assert not samples(gap).any()
    assert abs(peak_hz(tone2, 8000) - 1000) <= 5
    # -12 dBFS sine: peak about 8230; with fades the edges start at zero.
    assert 7800 < np.max(np.abs(samples(tone1))) < 8300
    assert abs(samples(tone1)[0]) < 50
    dual = load_announcement("440+480:1000", 48000)
    assert len(dual) == 2 * 48000


def test_bad_specs() -> None:
    with pytest.raises(FileNotFoundError, match="no announcement 'nothing-here'"):
        load_announcement("nothing-here", 8000)
    with pytest.raises(ValueError, match="at most"):
        parse_tones("440:60001")
    with pytest.raises(ValueError, match="not a tone spec"):
        parse_tones("440:200,beep")
