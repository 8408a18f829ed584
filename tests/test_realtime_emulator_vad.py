"""The emulator's energy VAD, sans-I/O: exact positions on synthetic audio."""

from __future__ import annotations

import pytest

from bridge.realtime.emulator.audio import audioop
from bridge.realtime.emulator.vad import EnergyVad, VadSettings, VadStart, VadStop, threshold_dbfs
from tests.support.audio import silence, tone


def feed_all(vad: EnergyVad, pcm: bytes, chunk: int) -> list[VadStart | VadStop]:
    events: list[VadStart | VadStop] = []
    for off in range(0, len(pcm), chunk):
        events += vad.feed(pcm[off:off + chunk])
    return events


@pytest.mark.parametrize("chunk_bytes", [960, 7, 4800, 1])
def test_bursts_at_known_offsets(chunk_bytes: int) -> None:
    # 500 ms silence, 800 ms tone, 700 ms silence, 300 ms tone, 1 s silence; fed in
    # appends of any size (even odd byte counts) the positions are the same.
    audio = silence(500) + tone(800) + silence(700) + tone(300) + silence(1000)
    vad = EnergyVad(VadSettings(silence_duration_ms=400), 24000)
    events = feed_all(vad, audio, chunk_bytes)
    assert events == [VadStart(500), VadStop(1300, 1700), VadStart(2000), VadStop(2300, 2700)]


def test_positions_off_the_frame_grid_are_within_one_frame() -> None:
    audio = silence(503) + tone(777) + silence(600)
    vad = EnergyVad(VadSettings(silence_duration_ms=500, frame_ms=10), 24000)
    start, stop = vad.feed(audio)
    assert isinstance(start, VadStart) and isinstance(stop, VadStop)
    assert abs(start.onset_ms - 503) <= 10
    assert abs(stop.speech_end_ms - 1280) <= 10
    assert stop.audio_end_ms == stop.speech_end_ms + 500


def test_start_offset_keeps_the_session_time_line() -> None:
    vad = EnergyVad(VadSettings(silence_duration_ms=200), 24000, start_ms=10_000)
    events = vad.feed(silence(100) + tone(300) + silence(300))
    assert events == [VadStart(10_100), VadStop(10_400, 10_600)]


def test_g711_at_8khz() -> None:
    pcm = silence(200, 8000) + tone(400, rate=8000, dbfs=-15) + silence(400, 8000)
    ulaw = audioop.lin2ulaw(pcm, 2)
    vad = EnergyVad(VadSettings(silence_duration_ms=300), 8000)
    assert vad.feed(audioop.ulaw2lin(ulaw, 2)) == [VadStart(200), VadStop(600, 900)]


def test_threshold_maps_to_energy() -> None:
    assert threshold_dbfs(0.5) == pytest.approx(-40.0)
    quiet = silence(100) + tone(500, dbfs=-45) + silence(600)
    # -45 dBFS RMS-ish tone (peak -45 dBFS: RMS -48): speech at a low threshold only
    assert EnergyVad(VadSettings(threshold=0.5), 24000).feed(quiet) == []
    low = EnergyVad(VadSettings(threshold=0.2, silence_duration_ms=300), 24000).feed(quiet)
    assert low == [VadStart(100), VadStop(600, 900)]
    loud_only = EnergyVad(VadSettings(threshold=0.9), 24000)
    assert loud_only.feed(silence(100) + tone(300, dbfs=-20) + silence(600)) == []


def test_a_click_is_not_speech() -> None:
    vad = EnergyVad(VadSettings(min_speech_ms=20), 24000)
    assert vad.feed(silence(100) + tone(10) + silence(800)) == []


def test_short_gap_inside_speech_does_not_end_the_turn() -> None:
    audio = silence(100) + tone(400) + silence(200) + tone(400) + silence(600)
    vad = EnergyVad(VadSettings(silence_duration_ms=500), 24000)
    assert vad.feed(audio) == [VadStart(100), VadStop(1100, 1600)]


def test_hysteresis_holds_a_fading_voice() -> None:
    # Speech starts loud and fades 4 dB below the start threshold: still one turn.
    audio = silence(100) + tone(300, dbfs=-30) + tone(300, dbfs=-41) + silence(600)
    vad = EnergyVad(VadSettings(threshold=0.5, silence_duration_ms=500), 24000)
    assert vad.feed(audio) == [VadStart(100), VadStop(700, 1200)]


def test_reset_forgets_speech_in_progress() -> None:
    vad = EnergyVad(VadSettings(silence_duration_ms=200), 24000)
    assert vad.feed(silence(100) + tone(300)) == [VadStart(100)]
    assert vad.in_speech
    vad.reset()
    assert not vad.in_speech
    assert vad.feed(silence(500)) == []
    assert vad.position_ms == 900


def test_frame_must_hold_whole_samples() -> None:
    with pytest.raises(ValueError):
        EnergyVad(VadSettings(frame_ms=10), 22_050)
