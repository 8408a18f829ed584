"""Streaming resamplers: exactness across chunking, quality, latency, flush and reset."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.codecs.framing import PlayoutBuffer
from bridge.codecs.resample import (
    API_RATE,
    MODES,
    StreamResampler,
    fir_design,
    inbound_resampler,
    outbound_resampler,
)
from tests.support.audio import sine

SOXR_MODES = [m for m in MODES if m.startswith("soxr-")]
ALL_MODES = ["fir", *SOXR_MODES]
RATE_PAIRS = [(8000, 24000), (16000, 24000), (48000, 24000),
              (24000, 8000), (24000, 16000), (24000, 48000),
              # not on the bridge's paths today, but every pair of 8/16/24/48 kHz is offered
              (8000, 16000), (16000, 8000), (8000, 48000), (48000, 8000),
              (16000, 48000), (48000, 16000)]
rng = np.random.default_rng(20)


def noise(n: int, level: float = 3000.0) -> np.ndarray:
    return (rng.standard_normal(n) * level).astype(np.float32)


def chunked(r: StreamResampler, x: np.ndarray, sizes: list[int]) -> np.ndarray:
    """Feed ``x`` in pieces of ``sizes`` (cycled), then flush; float path."""
    out, i, k = [], 0, 0
    while i < len(x):
        n = sizes[k % len(sizes)]
        out.append(r.process_float(x[i:i + n]))
        i, k = i + n, k + 1
    out.append(r.flush_float())
    return np.concatenate(out)


def fir_reference(in_rate: int, out_rate: int, x: np.ndarray) -> np.ndarray:
    """The textbook definition, computed independently of the polyphase code: zero-stuff
    by L, convolve with the prototype (gain L), keep every M-th sample."""
    d = fir_design(in_rate, out_rate)
    u = np.zeros(len(x) * d.up)
    u[::d.up] = x
    full = np.convolve(u, d.taps.astype(np.float64) * d.up)
    last = (d.up * (len(x) - 1) + len(d.taps) - 1) // d.down
    return full[::d.down][:last + 1]


# ------------------------------------------------------------------------ exactness


@settings(max_examples=40, deadline=None)
@given(pair=st.sampled_from(RATE_PAIRS),
       sizes=st.lists(st.integers(min_value=1, max_value=700), min_size=1, max_size=12))
def test_fir_streamed_equals_one_shot_for_any_chunking(pair: tuple[int, int],
                                                       sizes: list[int]) -> None:
    x = noise(3001)
    got = chunked(StreamResampler(*pair, mode="fir"), x, sizes)
    want = fir_reference(*pair, x)
    assert len(got) == len(want)
    np.testing.assert_allclose(got, want, atol=0.02)   # int16 units: float32 rounding only


@settings(max_examples=25, deadline=None)
@given(mode=st.sampled_from(SOXR_MODES), pair=st.sampled_from(RATE_PAIRS),
       sizes=st.lists(st.integers(min_value=1, max_value=700), min_size=1, max_size=12))
def test_soxr_streamed_equals_one_shot_for_any_chunking(mode: str, pair: tuple[int, int],
                                                        sizes: list[int]) -> None:
    x = noise(3001)
    whole = StreamResampler(*pair, mode=mode)
    want = np.concatenate([whole.process_float(x), whole.flush_float()])
    got = chunked(StreamResampler(*pair, mode=mode), x, sizes)
    assert len(got) == len(want)
    np.testing.assert_allclose(got, want, atol=0.02)


@pytest.mark.parametrize("mode", ALL_MODES)
def test_no_discontinuity_at_chunk_boundaries_in_the_pcm16_path(mode: str) -> None:
    """A sine streamed as bytes in ragged chunks (odd byte counts too) is the one-shot sine
    to within rounding at every sample: no click where chunks meet."""
    pcm = np.rint(sine(1000.0, 8000, 8000)).astype("<i2").tobytes()
    one = StreamResampler(8000, API_RATE, mode)
    want = np.frombuffer(one.process(pcm) + one.flush(), dtype="<i2").astype(int)
    r = StreamResampler(8000, API_RATE, mode)
    parts, i, boundaries, produced = [], 0, [], 0
    for n in [1, 7, 160, 33, 320, 5, 999, 161] * 20:
        piece = r.process(pcm[i:i + n])
        parts.append(piece)
        produced += len(piece) // 2
        boundaries.append(produced)
        i += n
        if i >= len(pcm):
            break
    parts.append(r.flush())
    got = np.frombuffer(b"".join(parts), dtype="<i2").astype(int)
    assert len(got) == len(want)
    assert np.max(np.abs(got - want)) <= 1
    # And the waveform itself is smooth across each boundary: no step larger than the
    # sine's own steepest step (2π·1 kHz/24 kHz · 16000 ≈ 4190 per sample).
    steps = np.abs(np.diff(got))
    inside = [b for b in boundaries if 0 < b < len(got) - 1]
    assert steps[np.array(inside) - 1].max() <= 4300


@pytest.mark.parametrize("mode", ALL_MODES)
def test_odd_bytes_are_carried_to_the_next_chunk(mode: str) -> None:
    pcm = np.rint(sine(440.0, 800, 8000)).astype("<i2").tobytes()
    a = StreamResampler(8000, API_RATE, mode)
    b = StreamResampler(8000, API_RATE, mode)
    whole = a.process(pcm) + a.flush()
    pieces = b"".join(b.process(pcm[i:i + 3]) for i in range(0, len(pcm), 3)) + b.flush()
    assert np.max(np.abs(np.frombuffer(whole, "<i2").astype(int)
                         - np.frombuffer(pieces, "<i2").astype(int))) <= 1


# -------------------------------------------------------------------------- quality


def delay_aligned_snr_db(got: np.ndarray, freqs: list[float], amps: list[float],
                         phases: list[float], rate: int, guard: int) -> float:
    """SNR of ``got`` against the multitone at its best fractional delay: integer lag from
    the cross-correlation, then a grid over ±1 sample, then a golden-section search."""
    def reference(delay: float) -> np.ndarray:
        total = np.zeros(len(got))
        for f, a, p in zip(freqs, amps, phases, strict=True):
            total += sine(f, len(got), rate, a, phase=p, delay_s=delay)
        return total

    coarse = np.argmax(np.correlate(got[guard:guard + 4000], reference(0.0)[guard:guard + 2000],
                                    "valid"))
    def snr(lag: float) -> float:
        ref = reference(lag / rate)[guard:-guard]
        return float(10 * np.log10(np.sum(ref ** 2) / np.sum((got[guard:-guard] - ref) ** 2)))

    grid = np.linspace(coarse - 1, coarse + 1, 41)
    centre = float(grid[np.argmax([snr(g) for g in grid])])
    lo, hi = centre - 0.05, centre + 0.05
    ratio = (np.sqrt(5) - 1) / 2
    for _ in range(40):
        a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
        lo, hi = (a, hi) if snr(a) < snr(b) else (lo, b)
    return snr((lo + hi) / 2)


def test_round_trip_8k_24k_8k_of_speech_band_audio_keeps_60_db_snr() -> None:
    freqs = [310.0, 570.0, 1130.0, 1777.0, 2390.0, 2950.0, 3310.0]
    amps = [3000.0, 4000.0, 3500.0, 2500.0, 2000.0, 1500.0, 1000.0]
    phases = list(rng.uniform(0, 2 * np.pi, len(freqs)))
    n = 16000
    x = sum(sine(f, n, 8000, a, phase=p) for f, a, p in zip(freqs, amps, phases, strict=True))
    pcm = np.rint(x).astype("<i2").tobytes()
    up, down = inbound_resampler(8000), outbound_resampler(8000)
    wide = b"".join(up.process(pcm[i:i + 320]) for i in range(0, len(pcm), 320)) + up.flush()
    back = b"".join(down.process(wide[i:i + 960]) for i in range(0, len(wide), 960))
    back += down.flush()
    got = np.frombuffer(back, dtype="<i2").astype(np.float64)[:n]
    snr = delay_aligned_snr_db(got, freqs, amps, phases, 8000, guard=400)
    assert snr >= 60.0, snr


def levels_db(y: np.ndarray, rate: int, freqs: list[float]) -> dict[float, float]:
    """Amplitude (dB re 16000) at each of ``freqs`` of one second of ``y`` (1 Hz bins, so
    whole-Hz tones fall exactly on a bin: no window, no leakage)."""
    seg = y[len(y) - rate - rate // 10: len(y) - rate // 10]   # skip start-up and tail
    spectrum = np.abs(np.fft.rfft(seg)) * 2 / len(seg)
    return {f: 20 * np.log10(max(spectrum[round(f)], 1e-9) / 16000.0) for f in freqs}


def run_pcm16(r: StreamResampler, x: np.ndarray, chunk_ms: int = 20) -> np.ndarray:
    pcm = np.rint(x).astype("<i2").tobytes()
    step = r.in_rate * chunk_ms // 1000 * 2
    out = b"".join(r.process(pcm[i:i + step]) for i in range(0, len(pcm), step))
    return np.frombuffer(out, dtype="<i2").astype(np.float64)


@pytest.mark.parametrize("in_rate", [8000, 16000, 48000])
def test_inbound_default_is_flat_and_rejects_images_and_aliases_by_60_db(in_rate: int) -> None:
    nyquist = min(in_rate, API_RATE) / 2
    n = in_rate * 13 // 10
    for f in [300.0, 1000.0, float(round(0.85 * nyquist))]:    # 3.4 kHz at 8 kHz
        y = run_pcm16(inbound_resampler(in_rate), sine(f, n, in_rate))
        assert abs(levels_db(y, API_RATE, [f])[f]) <= 1.0, f
        images = {abs(k * in_rate + s * f) for k in range(1, 4) for s in (-1, 1)}
        images = {i for i in images if i < API_RATE / 2} - {f}
        if images:
            worst = max(levels_db(y, API_RATE, sorted(images)).values())
            assert worst <= -60.0, (f, worst)
    if in_rate > API_RATE:     # decimating: what lies above 1.15 x Nyquist must not fold back
        for f in [float(round(1.15 * nyquist)), 16000.0, 20000.0, 23000.0]:
            y = run_pcm16(inbound_resampler(in_rate), sine(f, n, in_rate))
            alias = API_RATE - f
            assert levels_db(y, API_RATE, [alias])[alias] <= -60.0, f


@pytest.mark.parametrize("out_rate", [8000, 16000])
def test_outbound_default_is_flat_and_rejects_aliases_by_60_db(out_rate: int) -> None:
    edge = 0.85 * out_rate / 2
    stop = 1.15 * out_rate / 2
    for f in [300.0, 1000.0, float(round(edge))]:
        y = run_pcm16(outbound_resampler(out_rate), sine(f, 31200, API_RATE))
        assert abs(levels_db(y, out_rate, [f])[f]) <= 1.0
    for f in [float(round(stop)), 6000.0, 9000.0, 11000.0]:
        if f <= stop - 1:
            continue
        y = run_pcm16(outbound_resampler(out_rate), sine(f, 31200, API_RATE))
        alias = abs(f - out_rate * round(f / out_rate))
        assert levels_db(y, out_rate, [alias])[alias] <= -60.0, f


def test_soxr_qq_really_has_no_anti_alias_filter() -> None:
    # The same measurement catches what it should: QQ lets a 5 kHz tone through as 3 kHz.
    y = run_pcm16(outbound_resampler(8000, "soxr-qq"), sine(5000.0, 31200, API_RATE))
    assert levels_db(y, 8000, [3000.0])[3000.0] > -20.0


# -------------------------------------------------------------------------- latency


def measured_latency_ms(r: StreamResampler, chunk_ms: int = 20) -> float:
    """Feed an impulse in ``chunk_ms`` chunks and find when it comes out.

    The impulse's peak sits ``d`` later in the output stream than in the input, and the
    output delivered after each chunk lags the input clock by up to ``w`` (what the filter
    withholds): whoever consumes the stream hears the impulse ``d + w`` late.
    """
    step = r.in_rate * chunk_ms // 1000
    x = np.zeros(r.in_rate, dtype=np.float32)
    at = 5 * step + step // 3
    x[at] = 20000.0
    out, lag = [], 0.0
    for i in range(0, len(x), step):
        out.append(r.process_float(x[i:i + step]))
        produced = sum(len(o) for o in out)
        lag = max(lag, (i + step) / r.in_rate - produced / r.out_rate)
    y = np.concatenate(out)
    peak = int(np.argmax(np.abs(y)))
    assert abs(y[peak]) > 1000.0, "the impulse never came out"
    d = peak / r.out_rate - at / r.in_rate
    return 1000.0 * (d + lag)


@pytest.mark.parametrize("in_rate", [8000, 16000, 48000])
def test_inbound_default_adds_at_most_10_ms(in_rate: int) -> None:
    r = inbound_resampler(in_rate)
    latency = measured_latency_ms(r)
    assert latency <= 10.0, latency
    assert latency == pytest.approx(r.latency_ms, abs=0.1)


@pytest.mark.parametrize(("mode", "at_least"), [("soxr-lq", 15.0), ("soxr-hq", 40.0),
                                                ("soxr-vhq", 60.0)])
def test_the_latency_measurement_sees_what_soxr_streams_withhold(mode: str,
                                                                 at_least: float) -> None:
    r = inbound_resampler(8000, mode)
    latency = measured_latency_ms(r)
    assert latency >= at_least
    assert latency == pytest.approx(r.latency_ms, abs=1.5)


def test_fir_design_latency_at_8k_is_about_2_ms() -> None:
    assert 1.0 < fir_design(8000, 24000).latency_ms < 2.5
    assert 1.0 < fir_design(24000, 8000).latency_ms < 2.5


# ----------------------------------------------------------------- flush and reset


@pytest.mark.parametrize("mode", ALL_MODES)
def test_flush_lets_the_last_samples_of_a_response_out(mode: str) -> None:
    """A response ending on a 1 ms burst: the burst comes out, with ``flush()``."""
    r = outbound_resampler(8000, mode)
    x = np.zeros(4800, dtype=np.float32)        # 200 ms of 24 kHz
    x[-24:] = sine(2000.0, 24, API_RATE, amplitude=20000.0)
    body = np.concatenate([r.process_float(x[i:i + 960]) for i in range(0, len(x), 960)])
    tail = r.flush_float()
    y = np.concatenate([body, tail])
    assert len(y) >= len(x) // 3 - 1             # the whole duration came out
    burst_energy = np.sum(x.astype(np.float64) ** 2) / 3
    assert np.sum(y.astype(np.float64) ** 2) == pytest.approx(burst_energy, rel=0.3)
    if mode != "soxr-qq":                        # every filter holds the burst back
        assert np.sum(tail.astype(np.float64) ** 2) > burst_energy / 2


@pytest.mark.parametrize("mode", ALL_MODES)
def test_flush_starts_a_fresh_stream(mode: str) -> None:
    pcm = np.rint(sine(700.0, 4800, API_RATE)).astype("<i2").tobytes()
    r = outbound_resampler(8000, mode)
    r.process(pcm)
    r.flush()
    again = r.process(pcm) + r.flush()
    fresh = outbound_resampler(8000, mode)
    first = fresh.process(pcm) + fresh.flush()
    assert len(again) == len(first)
    assert np.max(np.abs(np.frombuffer(again, "<i2").astype(int)
                         - np.frombuffer(first, "<i2").astype(int))) <= 1


@pytest.mark.parametrize("mode", ALL_MODES)
def test_reset_drops_what_the_filter_held(mode: str) -> None:
    loud = np.rint(sine(900.0, 481, API_RATE, amplitude=30000.0)).astype("<i2").tobytes()
    quiet = bytes(960)
    r = outbound_resampler(8000, mode)
    r.process(loud)
    r.reset()
    after = r.process(quiet) + r.flush()
    fresh = outbound_resampler(8000, mode)
    assert after == fresh.process(quiet) + fresh.flush()
    assert not any(after)                        # nothing of the loud audio leaked


# ------------------------------------------------------------------------- the API


def test_equal_rates_pass_through_and_names_are_checked() -> None:
    r = StreamResampler(24000, 24000)
    assert r.process(b"\x01\x02\x03\x04") == b"\x01\x02\x03\x04"
    assert r.process(b"\x05\x06\x07") == b"\x05\x06"
    assert r.process(b"\x08") == b"\x07\x08"
    assert r.flush() == b""
    assert r.latency_ms == 0.0
    with pytest.raises(ValueError, match="unknown resampler mode"):
        StreamResampler(8000, 24000, "sinc-best")
    with pytest.raises(ValueError, match="positive"):
        StreamResampler(0, 24000)
    assert StreamResampler(8000, 24000).mode == "fir"
    for mode in MODES:     # every advertised name works, empty chunks and flushes included
        r = StreamResampler(8000, 24000, mode)
        assert r.process(b"") == b""
        assert r.flush() == b""
        assert r.process(bytes(16000))


@pytest.mark.parametrize("delta_ms", [20, 40, 100])
def test_first_audio_of_a_response_is_playable_right_after_its_first_delta(
        delta_ms: int) -> None:
    """The default outbound path turns even a 20 ms first delta into a full 20 ms frame at
    once (nothing withheld), so playout starts on the next tick."""
    delta = np.rint(sine(500.0, API_RATE * delta_ms // 1000, API_RATE)).astype("<i2")
    playout = PlayoutBuffer(8000)
    playout.push(outbound_resampler(8000).process(delta.tobytes()))
    assert playout.buffered_ms == delta_ms
    assert playout.pop_frame() is not None
    # Whereas a soxr stream preset holds the start of the response back.
    held = outbound_resampler(8000, "soxr-hq").process(delta.tobytes())
    assert len(held) < len(delta) // 3 * 2


@pytest.mark.parametrize("pair", RATE_PAIRS)
def test_steady_frames_take_the_preallocated_path_with_the_same_output(
        pair: tuple[int, int]) -> None:
    """20 ms frames (the per-call hot path) go through the FIR's frame plan; the output is
    the general path's to within rounding, across a reset, a flush and a change of size."""
    in_rate = pair[0]
    x = np.clip(noise(in_rate * 2) * 3, -32768, 32767)
    pcm = np.rint(x).astype("<i2").tobytes()
    frame = 2 * (in_rate // 50)
    sizes = [frame] * 30 + [frame // 2] * 4 + [frame] * 30

    def stream(fast: bool) -> np.ndarray:
        r = StreamResampler(*pair, mode="fir")
        if not fast:
            r._fast = None
        out, i = [], 0
        for k, n in enumerate(sizes):
            if k == 40:
                out.append(r.flush())
            if k == 50:
                r.reset()
            out.append(r.process(pcm[i:i + n]))
            i += n
        out.append(r.flush())
        if fast:
            assert r._engine._plan is not None      # type: ignore[attr-defined]
        return np.frombuffer(b"".join(out), "<i2").astype(int)

    got, want = stream(True), stream(False)
    assert len(got) == len(want)
    assert np.max(np.abs(got - want)) <= 1
