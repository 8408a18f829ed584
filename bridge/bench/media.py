"""``voicebridge bench media``: what the media conversions cost per 20 ms frame.

Inbound, per frame: µ-law 160 B -> PCM16 8 kHz -> 24 kHz -> base64 -> the
``input_audio_buffer.append`` JSON text. Outbound, per response delta: base64 -> 24 kHz
PCM16 -> leg rate -> playout buffer; then per frame: pop -> µ-law -> 12-byte RTP header.
``--codec g722`` measures the wideband SIP path instead (G.722 160 B <-> PCM16 16 kHz,
the call's stateful PyAV codec), and prints the codec's own cost each way.
Each resampler mode is timed in both directions, with its latency, its image/alias
rejection and the calls per core the conversion alone would allow. Figures drift between
runs on shared machines: the best of ``--repeat`` runs is shown.
"""

from __future__ import annotations

import argparse
import base64
import importlib
import math
import struct
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import soxr

from bridge.codecs import g711
from bridge.codecs.framing import PlayoutBuffer
from bridge.codecs.g722 import G722Decoder, G722Encoder
from bridge.codecs.resample import (
    API_RATE,
    DEFAULT_MODE,
    MODES,
    StreamResampler,
    inbound_resampler,
    outbound_resampler,
)

FRAME_MS = 20
_RTP = struct.Struct("!BBHII")
_APPEND_HEAD = '{"type":"input_audio_buffer.append","audio":"'
_APPEND_TAIL = '"}'


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--frames", type=int, default=2000,
                        help="20 ms frames per direction per run (default 2000 = 40 s)")
    parser.add_argument("--repeat", type=int, default=5, help="runs per figure; best is shown")
    parser.add_argument("--delta-ms", type=int, default=100,
                        help="size of one outbound response delta in ms (default 100)")
    parser.add_argument("--rate", type=int, default=8000, choices=(8000, 16000, 48000),
                        help="leg sample rate (default 8000; G.711 is encoded at 8000 only)")
    parser.add_argument("--codec", default="pcmu", choices=[*sorted(g711.CODECS), "g722"],
                        help="the leg's codec (g722: the leg runs at 16000)")
    parser.add_argument("--modes", default=",".join(m for m in MODES if m != "default"),
                        help="comma-separated resampler modes to measure")
    parser.add_argument("--no-quality", action="store_true",
                        help="skip the latency/rejection table (CPU figures only)")


# ---------------------------------------------------------------------------- signals


def _speechlike(seconds: float, rate: int, seed: int = 7) -> bytes:
    """Band-limited noise with a syllable-rate envelope at about -20 dBFS: busy enough
    that no code path is short-circuited by silence."""
    rng = np.random.default_rng(seed)
    n = int(seconds * rate)
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1 / rate)
    spectrum[(freqs < 200) | (freqs > 3400)] = 0
    x = np.fft.irfft(spectrum, n)
    x *= 0.6 + 0.4 * np.sin(2 * np.pi * 4 * np.arange(n) / rate)
    x *= 3300 / max(float(np.std(x)), 1e-9)
    pcm: bytes = np.clip(np.rint(x), -32768, 32767).astype("<i2").tobytes()
    return pcm


def _best_us_per_frame(run: Callable[[], int], repeat: int) -> float:
    """CPU µs per frame, best of ``repeat`` runs; ``run`` returns the frames it handled.

    Process CPU time, not wall time: on a shared 2-core machine wall time counts the
    moments other processes held the core.
    """
    best = math.inf
    for _ in range(repeat):
        t0 = time.process_time_ns()
        frames = run()
        best = min(best, (time.process_time_ns() - t0) / 1000 / max(frames, 1))
    return best


# --------------------------------------------------------------------------- the paths


Convert = Callable[[bytes], bytes]


def _leg_codec(codec: str, rate: int) -> tuple[Convert, Convert]:
    """(encode, decode) of the leg: G.722's are new streams (they have state), G.711's
    are functions, and a PCM16 leg (16/48 kHz) converts nothing."""
    if codec == "g722":
        return G722Encoder().encode, G722Decoder().decode
    if rate == 8000:
        return g711.CODECS[codec]
    return bytes, bytes


def _inbound_run(frames: list[bytes], codec: str, rate: int, mode: str) -> Callable[[], int]:
    """G.711 or G.722 frames (or PCM16 frames at 16/48 kHz) -> append JSON text."""
    b64 = base64.b64encode

    def run() -> int:
        decode = _leg_codec(codec, rate)[1]
        r = inbound_resampler(rate, mode)
        last = ""
        for payload in frames:
            last = _APPEND_HEAD + b64(r.process(decode(payload))).decode("ascii") + _APPEND_TAIL
        return len(frames) if last else 0

    return run


def _outbound_run(deltas: list[str], codec: str, rate: int, mode: str) -> Callable[[], int]:
    """base64 response deltas -> leg-rate frames -> G.711/G.722 (or PCM16) RTP packets."""
    pt = {"pcmu": 0, "pcma": 8, "g722": 9}[codec]
    samples = 8000 * FRAME_MS // 1000 if codec == "g722" else rate * FRAME_MS // 1000

    def run() -> int:
        encode = _leg_codec(codec, rate)[0]
        r = outbound_resampler(rate, mode)
        playout = PlayoutBuffer(rate, FRAME_MS)
        seq = ts = 0
        packet = b""
        for delta in deltas:
            playout.push(r.process(base64.b64decode(delta)))
            while (frame := playout.pop_frame()) is not None:
                packet = _RTP.pack(0x80, pt, seq, ts, 0x1234ABCD) + encode(frame)
                seq, ts = (seq + 1) & 0xFFFF, ts + samples
        return seq if packet else 0

    return run


def _inputs(args: argparse.Namespace) -> tuple[list[bytes], list[str]]:
    seconds = args.frames * FRAME_MS / 1000
    leg_pcm = _speechlike(seconds, args.rate)
    step = args.rate * FRAME_MS // 1000 * 2
    leg_frames = [leg_pcm[i:i + step] for i in range(0, len(leg_pcm), step)]
    if args.codec == "g722":
        encode = G722Encoder().encode
        leg_frames = [encode(f) for f in leg_frames if len(f) == step]
    elif args.rate == 8000:
        leg_frames = [g711.encode(args.codec, f) for f in leg_frames]
    api_pcm = _speechlike(seconds, API_RATE, seed=8)
    dstep = API_RATE * args.delta_ms // 1000 * 2
    deltas = [base64.b64encode(api_pcm[i:i + dstep]).decode("ascii")
              for i in range(0, len(api_pcm), dstep)]
    return leg_frames, deltas


# ------------------------------------------------------------------- quality figures


@dataclass(frozen=True)
class Quality:
    """How one mode behaves at ``rate`` <-> 24 kHz."""

    in_latency_ms: float
    out_latency_ms: float
    first_delta_withheld_ms: float
    image_db: float          # worst image, inbound, of passband tones (dB re the tone)
    alias_db: float          # worst alias, outbound, of tones above 1.15 x Nyquist
    ripple_db: float         # worst passband deviation 300 Hz .. 0.85 x Nyquist, both ways


def _latency_ms(r: StreamResampler) -> float:
    """Pulse in 20 ms chunks: stream delay of its peak plus the worst withheld lag.

    The pulse is a band-limited (3 kHz) windowed sinc rather than a single sample, so
    that even a filterless decimator (soxr QQ) cannot step over it.
    """
    step = r.in_rate * FRAME_MS // 1000
    x = np.zeros(r.in_rate, dtype=np.float32)
    at = 5 * step + step // 3
    n = np.arange(-40, 41)
    x[at - 40:at + 41] = 20000.0 * np.sinc(2 * 3000 / r.in_rate * n) * np.hanning(81)
    outs, lag = [], 0.0
    for i in range(0, len(x), step):
        outs.append(r.process_float(x[i:i + step]))
        produced = sum(len(o) for o in outs)
        lag = max(lag, (i + step) / r.in_rate - produced / r.out_rate)
    y = np.concatenate(outs)
    return 1000.0 * (int(np.argmax(np.abs(y))) / r.out_rate - at / r.in_rate + lag)


def _bins_db(r: StreamResampler, freq: float, probes: list[float]) -> list[float]:
    """Levels (dB re the input amplitude) at ``probes`` after resampling a 1.3 s tone.

    The analysed second is whole, so whole-Hz tones sit exactly on FFT bins: no window.
    """
    n = r.in_rate * 13 // 10
    x = (16000.0 * np.sin(2 * np.pi * freq * np.arange(n) / r.in_rate)).astype(np.float32)
    step = r.in_rate * FRAME_MS // 1000
    y = np.concatenate([r.process_float(x[i:i + step]) for i in range(0, n, step)])
    seg = y[len(y) - r.out_rate - r.out_rate // 10: len(y) - r.out_rate // 10]
    spectrum = np.abs(np.fft.rfft(seg)) * 2 / len(seg)
    return [20 * math.log10(max(float(spectrum[round(p)]), 1e-9) / 16000.0) for p in probes]


def _images(low: int, high: int, f: float) -> list[float]:
    found = {abs(k * low + s * f) for k in range(1, 4) for s in (-1, 1)}
    return sorted(i for i in found if i < high / 2 and i != f)


def _quality(mode: str, rate: int, delta_ms: int) -> Quality:
    """Images are measured on the upsampling direction, aliases on the downsampling one
    (inbound and outbound respectively at 8/16 kHz, the other way round at 48 kHz)."""
    low, high = sorted((rate, API_RATE))
    up, down = StreamResampler(low, high, mode), StreamResampler(high, low, mode)
    passband = [300.0, 1000.0, 2000.0, float(round(0.85 * low / 2))]
    stopband = [f for f in (float(round(1.15 * low / 2)), 0.75 * low, 1.125 * low, 11500.0)
                if 1.15 * low / 2 <= f < high / 2]
    ripple, image, alias = 0.0, -math.inf, -math.inf
    for f in passband:
        up.reset()
        levels = _bins_db(up, f, [f, *_images(low, high, f)])
        ripple = max(ripple, abs(levels[0]))
        image = max([image, *levels[1:]])
        down.reset()
        ripple = max(ripple, abs(_bins_db(down, f, [f])[0]))
    for f in stopband:
        down.reset()
        alias = max(alias, _bins_db(down, f, [abs(f - low * round(f / low))])[0])
    first = outbound_resampler(rate, mode).process(bytes(API_RATE * delta_ms // 1000 * 2))
    withheld = delta_ms - len(first) / 2 / rate * 1000
    return Quality(_latency_ms(inbound_resampler(rate, mode)),
                   _latency_ms(outbound_resampler(rate, mode)), withheld, image, alias, ripple)


# --------------------------------------------------------------------------- printing


def _window_oneshot_us(rate: int, repeat: int) -> float:
    """The rejected alternative: soxr one-shot over ~10 ms context + 20 ms + 4 ms look-ahead
    per frame (≈ 4 ms latency, but a one-shot call's set-up cost every frame)."""
    window = np.zeros(rate * 34 // 1000, dtype=np.float32)

    def run() -> int:
        for _ in range(500):
            soxr.resample(window, rate, API_RATE, quality="HQ")
        return 500

    return _best_us_per_frame(run, repeat)


def _g711_lines(codec: str, repeat: int) -> Iterator[str]:
    frame = _speechlike(0.02, 8000)
    big = _speechlike(0.1, 8000)
    table = g711._table_encode
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        audioop = importlib.import_module("audioop")
    lin2 = audioop.lin2ulaw if codec == "pcmu" else audioop.lin2alaw
    for label, pcm in (("20 ms", frame), ("100 ms", big)):
        def via_table(pcm: bytes = pcm) -> int:
            for _ in range(2000):
                table(codec, pcm)
            return 2000

        def via_audioop(pcm: bytes = pcm) -> int:
            for _ in range(2000):
                lin2(pcm, 2)
            return 2000

        yield (f"  {codec} encode {label:>6}: 64k table "
               f"{_best_us_per_frame(via_table, repeat):6.2f} µs, audioop "
               f"{_best_us_per_frame(via_audioop, repeat):6.2f} µs")


def _g722_lines(repeat: int) -> Iterator[str]:
    """The G.722 codec alone, each way, per 20 ms frame (a call's own stream)."""
    frames = [f for f in _frames(_speechlike(2.0, 16000), 640) if len(f) == 640]
    enc = G722Encoder()
    payloads = [enc.encode(f) for f in frames]

    def encode() -> int:
        e = G722Encoder()
        for f in frames:
            e.encode(f)
        return len(frames)

    def decode() -> int:
        d = G722Decoder()
        for p in payloads:
            d.decode(p)
        return len(payloads)

    yield (f"  g722 encode {_best_us_per_frame(encode, repeat):6.1f} µs, decode "
           f"{_best_us_per_frame(decode, repeat):6.1f} µs per 20 ms frame")


def _frames(pcm: bytes, size: int) -> list[bytes]:
    return [pcm[i:i + size] for i in range(0, len(pcm), size)]


def run(args: argparse.Namespace) -> int:
    if args.codec == "g722":
        args.rate = 16000     # G.722 is 16 kHz audio
    elif args.rate != 8000:
        args.codec = "pcmu"   # G.711 is 8 kHz only: wider legs carry PCM16 to the leg codec
    modes = [DEFAULT_MODE if m == "default" else m for m in args.modes.split(",") if m]
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        print(f"unknown mode(s) {unknown}; choose from {sorted(MODES)}")
        return 2
    leg_frames, deltas = _inputs(args)
    print(f"media conversion per {FRAME_MS} ms frame, leg {args.rate} Hz "
          f"({args.codec if args.codec == 'g722' or args.rate == 8000 else 'pcm16'}) <-> "
          f"{API_RATE} Hz, "
          f"{args.frames} frames per direction, outbound deltas of {args.delta_ms} ms, "
          f"best of {args.repeat}")
    print(f"{'mode':<10} {'inbound µs':>11} {'outbound µs':>12} {'total µs':>9} "
          f"{'calls/core':>11} {'latency in/out ms':>18}")
    for mode in modes:
        t_in = _best_us_per_frame(_inbound_run(leg_frames, args.codec, args.rate, mode),
                                  args.repeat)
        t_out = _best_us_per_frame(_outbound_run(deltas, args.codec, args.rate, mode),
                                   args.repeat)
        lat_in = inbound_resampler(args.rate, mode).latency_ms
        lat_out = outbound_resampler(args.rate, mode).latency_ms
        star = " (default)" if mode == DEFAULT_MODE else ""
        print(f"{mode:<10} {t_in:11.1f} {t_out:12.1f} {t_in + t_out:9.1f} "
              f"{FRAME_MS * 1000 / (t_in + t_out):11.0f} {lat_in:8.1f} / {lat_out:<7.1f}{star}")
    print(f"soxr one-shot over a sliding window (not offered): "
          f"{_window_oneshot_us(args.rate, args.repeat):.1f} µs per frame for the resampling alone")
    if args.codec == "g722":
        print("G.722 codec (PyAV):")
        for line in _g722_lines(args.repeat):
            print(line)
    elif args.rate == 8000:
        print("G.711 encode paths:")
        for line in _g711_lines(args.codec, args.repeat):
            print(line)
    if not args.no_quality:
        _print_quality(modes, args.rate, args.delta_ms)
    return 0


def _print_quality(modes: list[str], rate: int, delta_ms: int) -> None:
    print(f"\nquality at {rate} Hz <-> {API_RATE} Hz (latency: a pulse fed in 20 ms chunks; "
          f"levels in dB re the tone)")
    print(f"{'mode':<10} {'in ms':>6} {'out ms':>7} {'1st delta held ms':>18} "
          f"{'images dB':>10} {'aliases dB':>11} {'ripple dB':>10}")
    for mode in modes:
        q = _quality(mode, rate, delta_ms)
        print(f"{mode:<10} {q.in_latency_ms:6.1f} {q.out_latency_ms:7.1f} "
              f"{q.first_delta_withheld_ms:18.1f} {q.image_db:10.1f} {q.alias_db:11.1f} "
              f"{q.ripple_db:10.2f}")
