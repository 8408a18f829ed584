"""The bridge-side turn detector (``bridge.call.turnvad``) on real speech, silence and
noise: a spoken espeak-ng phrase starts speech within its first words and ends the turn
``end_silence_ms`` after its last; digital silence and steady low noise never start one.
Time is the frame count (virtual: 20 ms per frame), so nothing here depends on load."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import pytest

from bridge.call.turnvad import SpeechBegan, TurnDetector, TurnEnded, TurnEvent
from tests.support.baresip import phrase_wav

FRAME_MS = 20


def frames(pcm: bytes, rate: int) -> list[bytes]:
    size = 2 * rate * FRAME_MS // 1000
    return [pcm[i:i + size] for i in range(0, len(pcm) - size + 1, size)]


def run(detector: TurnDetector, pcm: bytes, rate: int) -> list[tuple[int, TurnEvent]]:
    """Feed ``pcm`` frame by frame at 20 ms virtual steps; (frame index, event) pairs."""
    out = []
    for index, frame in enumerate(frames(pcm, rate)):
        event = detector.feed(frame, (index + 1) * FRAME_MS / 1000)   # its arrival
        if event is not None:
            out.append((index, event))
    return out


def spoken(tmp_path: Path, rate: int) -> tuple[bytes, float, float]:
    """The phrase at ``rate``; its PCM and where its speech starts and ends (s), from the
    energy of the padded recording (0.3 s of silence first)."""
    with wave.open(str(phrase_wav(tmp_path, rate)), "rb") as wav:
        pcm = wav.readframes(wav.getnframes())
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
    size = rate * FRAME_MS // 1000
    rms = [float(np.sqrt(np.mean(samples[i:i + size] ** 2)))
           for i in range(0, len(samples) - size + 1, size)]
    loud = [i for i, level in enumerate(rms) if level > 300]
    return pcm, loud[0] * FRAME_MS / 1000, (loud[-1] + 1) * FRAME_MS / 1000


@pytest.mark.parametrize("rate", [8000, 16000])
def test_a_spoken_phrase_is_one_turn_ended_after_the_silence(tmp_path: Path,
                                                               rate: int) -> None:
    pcm, start, end = spoken(tmp_path, rate)
    detector = TurnDetector(rate, aggressiveness=2, min_speech_ms=200, end_silence_ms=800)
    events = run(detector, pcm, rate)
    kinds = [type(e) for _, e in events]
    assert kinds == [SpeechBegan, TurnEnded], events
    began, ended = events[0][1], events[1][1]
    assert isinstance(began, SpeechBegan) and isinstance(ended, TurnEnded)
    # speech is decided within its first half second, and not before it starts
    assert start + 0.1 <= began.at <= start + 0.5
    # the turn ends the end-of-turn silence after the last word (a frame or two of tail)
    assert end + 0.8 - 0.1 <= ended.at <= end + 0.8 + 0.25
    assert ended.speech_ms >= (end - start) * 1000 * 0.8


def test_pauses_shorter_than_the_end_silence_stay_in_one_turn(tmp_path: Path) -> None:
    pcm, start, end = spoken(tmp_path, 8000)
    words = pcm[int(start * 16000):int(end * 16000)]
    pause = bytes(2 * 8000 * 500 // 1000)                       # 500 ms mid-sentence
    twice = words + pause + words + bytes(2 * 8000 * 2)
    short = run(TurnDetector(8000, end_silence_ms=800), twice, 8000)
    assert [type(e) for _, e in short] == [SpeechBegan, TurnEnded]
    split = run(TurnDetector(8000, end_silence_ms=300), twice, 8000)
    assert len([e for _, e in split if isinstance(e, TurnEnded)]) >= 2


def test_silence_and_steady_noise_start_no_turn() -> None:
    rate = 8000
    rng = np.random.default_rng(7)
    silence = bytes(2 * rate * 5)
    hiss = (rng.normal(0, 60, rate * 5)).astype("<i2").tobytes()      # line hiss, ~-55 dBFS
    for pcm in (silence, hiss):
        detector = TurnDetector(rate, aggressiveness=3, min_speech_ms=200, end_silence_ms=700)
        assert run(detector, pcm, rate) == []
        assert detector.frames == 250


def test_rejects_what_the_vad_cannot_take() -> None:
    with pytest.raises(ValueError, match="Hz"):
        TurnDetector(24000)
    with pytest.raises(ValueError, match="aggressiveness"):
        TurnDetector(8000, aggressiveness=4)
    detector = TurnDetector(8000)
    assert detector.feed(b"\x00" * 10, 0.0) is None and detector.frames == 0
