"""Levels (AES17 dBFS), silence and tones."""

from __future__ import annotations

import numpy as np
import pytest

from bridge.codecs.level import FLOOR_DBFS, ToneGenerator, dbfs, is_silence, peak, rms, tone
from tests.support.audio import sine as reference_sine


def test_full_scale_sine_is_0_dbfs_and_square_is_plus_3() -> None:
    t = np.arange(8000)
    sine = np.rint(reference_sine(1000, 8000, 8000, 32767, phase=0.3)).astype("<i2").tobytes()
    assert dbfs(sine) == pytest.approx(0.0, abs=0.01)
    square = np.where(t % 8 < 4, 32767, -32767).astype("<i2").tobytes()
    assert dbfs(square) == pytest.approx(3.01, abs=0.01)
    assert rms(square) == pytest.approx(32767.0)
    assert peak(np.array([3, -32768, 5], dtype="<i2").tobytes()) == 32768


def test_silence_floors_instead_of_minus_infinity() -> None:
    assert dbfs(bytes(320)) == FLOOR_DBFS
    assert dbfs(b"") == FLOOR_DBFS
    assert rms(b"") == 0.0
    assert is_silence(bytes(320))
    assert is_silence(b"")
    assert dbfs(np.array([1, -1] * 80, dtype="<i2").tobytes()) > FLOOR_DBFS


@pytest.mark.parametrize("level", [-3.0, -12.0, -30.0, -60.0])
def test_tone_has_the_asked_level(level: float) -> None:
    pcm = tone(1000.0, 100, 8000, dbfs=level)
    assert len(pcm) == 1600
    assert dbfs(pcm) == pytest.approx(level, abs=0.05)


def test_is_silence_threshold() -> None:
    assert not is_silence(tone(440.0, 20, 8000, dbfs=-40.0))
    assert is_silence(tone(440.0, 20, 8000, dbfs=-55.0))
    assert not is_silence(tone(440.0, 20, 8000, dbfs=-55.0), threshold_dbfs=-60.0)


def test_tone_generator_is_phase_continuous_across_reads() -> None:
    g = ToneGenerator(425.0, 8000, dbfs=-10.0)
    pieces = b"".join(g.read(20) for _ in range(10))
    assert pieces == tone(425.0, 200, 8000, dbfs=-10.0)


def test_tone_refuses_what_cannot_be_represented() -> None:
    with pytest.raises(ValueError):
        tone(1000.0, 20, 8000, dbfs=1.0)
    with pytest.raises(ValueError):
        tone(5000.0, 20, 8000)
