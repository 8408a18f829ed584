"""Streaming resamplers between the leg's rate and the Realtime API's 24 kHz.

Theory of operation
-------------------
One ``StreamResampler`` per direction per call. It keeps its filter state across chunks
of any size (a one-shot resample per 20 ms frame would click at every frame boundary),
``flush()`` drains what the filter still holds (end of a response: the last syllable must
not stay inside the filter) and ``reset()`` drops it (barge-in: stale audio must not leak
into the next response).

Latency is a first-class figure. Caller audio arrives in real time, so whatever the
inbound resampler withholds delays the model's hearing, its end-of-speech detection and
barge-in. ``soxr.ResampleStream`` fed 20 ms chunks withholds 22–86 ms depending on the
preset, so the default (``"fir"``) is our own polyphase linear-phase FIR: a Kaiser-windowed
sinc designed per rate pair for ≥ 60 dB image/alias rejection with the transition band
centred on the lower rate's Nyquist frequency (3.4→4.6 kHz for 8 kHz). At 8k→24k that is
87 taps at 24 kHz: 1.8 ms of group delay and nothing withheld, computed as one small matrix
product per chunk. The soxr presets stay selectable by name (``MODES``).

All engines work on float32 arrays in int16 units, so the streamed output can be compared
exactly with a one-shot computation (soxr's own int16 path is dithered); the bytes API
rounds and saturates once at the end.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import soxr
from threadpoolctl import threadpool_limits

__all__ = [
    "API_RATE",
    "DEFAULT_MODE",
    "MODES",
    "FirDesign",
    "ResampleBatch",
    "StreamResampler",
    "fir_design",
    "inbound_resampler",
    "outbound_resampler",
]

Float32Array = npt.NDArray[np.float32]

#: The media loop is one thread. A batched product (``ResampleBatch``) is large enough for
#: OpenBLAS to hand it to its thread pool, whose threads then spin on every core for each
#: product 50 times a second (measured: 137 % of a core instead of 80 %, and the clock late
#: by 50 ms). The limit is process-wide and set once, when this module loads.
_BLAS_LIMIT = threadpool_limits(limits=1, user_api="blas")

#: The clip ufunc itself (``np.clip`` is a Python wrapper around it).
_numpy_core: Any = np._core if hasattr(np, "_core") else np.core   # numpy 2 / 1.26
_clip: Callable[..., Any] = _numpy_core.umath.clip
_LOW, _HIGH = np.array(-32768.0, dtype=np.float32), np.array(32767.0, dtype=np.float32)
_PCM16 = np.dtype("<i2")

#: The Realtime API's PCM16 rate.
API_RATE = 24000
#: What ``mode="default"`` means, both directions.
DEFAULT_MODE = "fir"
#: Stopband attenuation the FIR is designed for; the measured worst case is ≥ 65 dB.
FIR_ATTENUATION_DB = 70.0
#: Half the transition band as a fraction of the lower Nyquist frequency (0.15 × 4 kHz =
#: 600 Hz: pass to 3.4 kHz, stop from 4.6 kHz at 8 kHz).
FIR_HALF_TRANSITION = 0.15

MODES: dict[str, str] = {
    "default": f"alias of {DEFAULT_MODE!r}",
    "fir": "polyphase linear-phase Kaiser FIR, ≥ 60 dB, ~2 ms group delay, nothing withheld",
    "soxr-qq": "soxr quick stream: no anti-alias filter at all (a 5 kHz tone aliases to 3 kHz)",
    "soxr-lq": "soxr low-quality stream (withholds ~20 ms per 20 ms chunk)",
    "soxr-mq": "soxr medium-quality stream",
    "soxr-hq": "soxr high-quality stream (withholds ~45 ms on average per direction)",
    "soxr-vhq": "soxr very-high-quality stream (withholds ~85 ms on average per direction)",
}


class _Engine(Protocol):
    """A resampling engine on float32 arrays in int16 units."""

    def process(self, x: Float32Array) -> Float32Array: ...
    def flush(self) -> Float32Array: ...
    def reset(self) -> None: ...
    @property
    def latency_ms(self) -> float: ...


_EMPTY: Float32Array = np.zeros(0, dtype=np.float32)


class _Identity:
    """Equal rates: nothing to do, nothing held."""

    latency_ms = 0.0

    def process(self, x: Float32Array) -> Float32Array:
        return x

    def flush(self) -> Float32Array:
        return _EMPTY

    def reset(self) -> None:
        pass


# --------------------------------------------------------------------------- FIR engine


@dataclass(frozen=True)
class FirDesign:
    """A polyphase FIR for ``in_rate * up / down == out_rate``.

    The prototype low-pass ``taps`` runs at ``in_rate * up``. ``matrix`` (``width`` × ``up``)
    holds every phase, placed so that one window of ``width`` input samples times the matrix
    gives ``up`` consecutive outputs; successive windows are ``down`` samples apart.
    """

    in_rate: int
    out_rate: int
    up: int
    down: int
    taps: Float32Array
    matrix: Float32Array
    per_phase: int          # taps per phase (K)
    width: int              # input samples per window (K + the largest phase offset)

    @property
    def delay_out(self) -> float:
        """Group delay in output samples (linear phase: half the prototype's length)."""
        return (len(self.taps) - 1) / 2 / self.down

    @property
    def latency_ms(self) -> float:
        return 1000.0 * self.delay_out / self.out_rate


def _kaiser_taps(num: int, cutoff: float, beta: float) -> npt.NDArray[np.float64]:
    """Windowed-sinc low-pass; ``cutoff`` as a fraction of the sampling rate; DC gain 1."""
    centre = (num - 1) / 2
    n = np.arange(num) - centre
    h: npt.NDArray[np.float64] = 2 * cutoff * np.sinc(2 * cutoff * n) * np.kaiser(num, beta)
    normalised: npt.NDArray[np.float64] = h / h.sum()
    return normalised


def _kaiser_length(attenuation_db: float, transition: float) -> int:
    """Kaiser's estimate of the taps needed (``transition`` as a fraction of the rate)."""
    return math.ceil((attenuation_db - 7.95) / (2.285 * 2 * math.pi * transition)) + 1


def _kaiser_beta(attenuation_db: float) -> float:
    return 0.1102 * (attenuation_db - 8.7) if attenuation_db > 50 else 5.0


@cache
def fir_design(in_rate: int, out_rate: int,
               attenuation_db: float = FIR_ATTENUATION_DB,
               half_transition: float = FIR_HALF_TRANSITION) -> FirDesign:
    """Design (once per rate pair) the polyphase low-pass for ``in_rate -> out_rate``.

    The band edge sits on the lower rate's Nyquist frequency so that images (upsampling)
    and aliases (downsampling) of everything in the passband land in the stopband.
    """
    g = math.gcd(in_rate, out_rate)
    up, down = out_rate // g, in_rate // g
    fast = in_rate * up
    nyquist = min(in_rate, out_rate) / 2
    num = _kaiser_length(attenuation_db, 2 * half_transition * nyquist / fast)
    per_phase = -(-num // up)
    taps = _kaiser_taps(per_phase * up, nyquist / fast, _kaiser_beta(attenuation_db))
    # Output r of a period reads input base + (r*down)//up - j with phase (r*down) % up.
    offsets = [(r * down) // up for r in range(up)]
    width = per_phase + max(offsets)
    matrix = np.zeros((width, up), dtype=np.float64)
    for r, base in enumerate(offsets):
        phase = taps[(r * down) % up::up] * up
        matrix[per_phase - 1 + base - np.arange(per_phase), r] = phase
    return FirDesign(in_rate, out_rate, up, down, taps.astype(np.float32),
                     matrix.astype(np.float32), per_phase, width)


#: Frame plans kept per stream (one per chunk size and history length seen repeatedly).
_MAX_PLANS = 4
#: Output periods per row of the grouped product (see ``_FramePlan``).
_GROUP = 16
_block_matrices: dict[tuple[int, int], tuple[FirDesign, Float32Array]] = {}


def _block_matrix(d: FirDesign, group: int) -> Float32Array:
    """``group`` copies of the polyphase matrix on a staircase, so that one window of
    ``width + (group - 1) * down`` inputs gives ``group * up`` consecutive outputs. Shared
    by every stream of the same design (designs are cached, so ``id`` is stable)."""
    key = (id(d), group)
    hit = _block_matrices.get(key)
    if hit is None:
        m = np.zeros((d.width + (group - 1) * d.down, group * d.up), dtype=np.float32)
        for g in range(group):
            m[g * d.down:g * d.down + d.width, g * d.up:(g + 1) * d.up] = d.matrix
        hit = _block_matrices[key] = (d, m)
    return hit[1]


class _FramePlan:
    """Preallocated arrays for a steady stream of ``n``-sample chunks (the 20 ms frames of
    a call), so that a chunk costs a handful of numpy calls and no allocation.

    ``raw`` (a bytearray) holds the ``hist`` samples of history followed by the chunk as
    PCM16, and ``buf16`` is an int16 view of it: the chunk goes in and the history moves
    up with plain bytearray slice assignments, no numpy call. ``windows16`` is a fixed
    strided view of it, ``group`` output periods per row: a 160-row product of width 30
    (what the general path does at 8k->24k) becomes 10 rows of width 45 against a 45x48
    staircase matrix. The rows overlap, which BLAS cannot take directly (numpy would
    allocate a contiguous copy per call), so they are copied -- and converted to float32
    in the same pass -- into the preallocated ``windows``. The plan applies when a chunk
    leaves exactly ``hist`` samples of history again (``n`` a multiple of ``down``),
    which is every chunk of a steady frame size.
    """

    __slots__ = ("n", "hist", "raw", "buf16", "head", "windows16", "windows", "matrix",
                 "y", "out16", "body_at", "tail_at", "end")

    def __init__(self, d: FirDesign, hist: int, n: int) -> None:
        periods = n // d.down
        group = math.gcd(periods, _GROUP)
        self.n, self.hist = n, hist
        self.raw = bytearray(2 * (hist + n))
        self.buf16: npt.NDArray[np.int16] = np.frombuffer(self.raw, _PCM16)
        self.head = self.buf16[:hist]
        # Byte offsets: where the chunk goes, where the next chunk's history starts.
        self.body_at, self.tail_at, self.end = 2 * hist, 2 * n, 2 * (hist + n)
        self.matrix = _block_matrix(d, group)
        rows = periods // group
        self.windows16: npt.NDArray[np.int16] = np.lib.stride_tricks.as_strided(
            self.buf16, (rows, self.matrix.shape[0]), (group * d.down * 2, 2),
            writeable=False)
        self.windows: Float32Array = np.empty(self.windows16.shape, dtype=np.float32)
        self.y: Float32Array = np.empty((rows, group * d.up), dtype=np.float32)
        self.out16 = np.empty((rows, group * d.up), dtype="<i2")

    @staticmethod
    def fits(d: FirDesign, hist: int, n: int) -> bool:
        return n > 0 and n % d.down == 0 and hist + n >= d.width and \
            hist == (hist + n - d.width) % d.down + d.width - d.down


class _Fir:
    """Streaming polyphase FIR: a window per output period, one matrix product per chunk.

    ``_buf[0]`` is always the first input sample of the next period's window, so the
    history the filter needs is simply the unconsumed front of the buffer.
    """

    def __init__(self, design: FirDesign) -> None:
        self._d = design
        self._plan: _FramePlan | None = None
        self._plans: dict[tuple[int, int], _FramePlan] = {}
        self._last_n = -1
        self.reset()

    @property
    def latency_ms(self) -> float:
        return self._d.latency_ms

    def reset(self) -> None:
        # float32, or the frame plan's int16 history (exact PCM16 values) while it runs
        self._buf: npt.NDArray[Any] = np.zeros(self._d.per_phase - 1, dtype=np.float32)
        #: the history as PCM16 bytes while the stream runs in a ``ResampleBatch``
        #: (authoritative then: ``_buf`` is stale until ``_unbatch``)
        self._hb: bytes | None = None
        self._in = 0      # input samples since reset (for the flush length)
        self._out = 0     # output samples since reset

    def _unbatch(self) -> None:
        """Leave batch mode: the bytes history becomes the array history again."""
        hb = self._hb
        if hb is not None:
            self._hb = None
            self._buf = np.frombuffer(hb, _PCM16)

    def history_pcm(self) -> bytes | None:
        """The filter history as PCM16 bytes, or None when it is not exact PCM16 (history
        left by ``process_float``, or the ring-out of a flush)."""
        hb = self._hb
        if hb is not None:
            return hb
        buf = self._buf
        if buf.dtype == np.int16:
            return bytes(buf.tobytes())
        if not np.array_equal(buf, np.rint(buf)) or (len(buf) and (
                buf.min() < -32768 or buf.max() > 32767)):
            return None
        return bytes(buf.astype(_PCM16).tobytes())

    def _run(self, x: Float32Array) -> Float32Array:
        self._unbatch()
        d = self._d
        buf = np.concatenate((self._buf, x)) if len(self._buf) else np.ascontiguousarray(x)
        periods = (len(buf) - d.width) // d.down + 1 if len(buf) >= d.width else 0
        if periods <= 0:
            self._buf = buf
            return _EMPTY
        windows = np.ndarray((periods, d.width), dtype=np.float32, buffer=buf,
                             strides=(d.down * 4, 4))
        self._buf = buf[periods * d.down:]
        y: Float32Array = np.dot(windows, d.matrix).ravel()
        return y

    def process(self, x: Float32Array) -> Float32Array:
        self._in += len(x)
        y = self._run(x)
        self._out += len(y)
        return y

    def process_pcm(self, pcm: bytes, n: int) -> bytes | None:
        """``n`` whole samples of PCM16LE in, PCM16LE out, through the frame plan; None
        when the plan does not apply (the caller takes the general path)."""
        self._unbatch()
        plan = self._plan
        buf = self._buf
        hist = len(buf)
        if plan is None or plan.n != n or plan.hist != hist:
            # Plans are kept per (size, history) -- outbound deltas alternate between a
            # few sizes -- and built only for a size seen twice running: deltas of
            # varying sizes stay on the general path instead of churning plans.
            plans = self._plans
            plan = plans.get((n, hist))
            if plan is None:
                repeat, self._last_n = self._last_n == n, n
                if not repeat or not _FramePlan.fits(self._d, hist, n):
                    return None
                plan = _FramePlan(self._d, hist, n)
                if len(plans) >= _MAX_PLANS:
                    del plans[next(iter(plans))]
                plans[(n, hist)] = plan
            self._plan = plan
        head = plan.head
        if buf is not head:
            # History last left by the general path (float32): the plan holds int16,
            # exact for history that came from PCM16 (process_float's may not have).
            if buf.dtype != np.int16 and not np.array_equal(buf, np.rint(buf)):
                return None
            np.copyto(head, buf, casting="unsafe")
            self._buf = head
        raw = plan.raw
        raw[plan.body_at:plan.end] = pcm if len(pcm) == 2 * n else pcm[:2 * n]
        windows, y, out16 = plan.windows, plan.y, plan.out16
        np.copyto(windows, plan.windows16)      # int16 -> float32, rows made contiguous
        raw[:plan.body_at] = raw[plan.tail_at:plan.end]   # the history for the next chunk
        np.dot(windows, plan.matrix, out=y)
        self._in += n
        self._out += out16.size
        # Saturate, then round and convert in one pass (the bounds are integers, so this
        # is the same as rounding first): the ufuncs themselves, in place.
        _clip(y, _LOW, _HIGH, out=y)
        np.rint(y, out=out16, casting="unsafe")
        return out16.tobytes()

    def flush(self) -> Float32Array:
        """Everything the last input still contributes to (the whole convolution tail)."""
        d = self._d
        if self._in == 0:
            self.reset()
            return _EMPTY
        self._unbatch()
        last = (d.up * (self._in - 1) + len(d.taps) - 1) // d.down
        remaining = last + 1 - self._out
        zeros = np.zeros(-(-remaining * d.down // d.up) + d.width, dtype=np.float32)
        tail = self._run(zeros)[:remaining]
        self.reset()
        return tail


# -------------------------------------------------------------------------- soxr engines


@cache
def _measured_lag_ms(in_rate: int, out_rate: int, quality: str) -> float:
    """Worst lag of a soxr stream fed 20 ms chunks: input time minus output time covered.

    soxr's output is time-aligned with its input but withholds samples; what it withholds
    depends on the chunk size, so it is measured (once per process) rather than computed.
    """
    stream = soxr.ResampleStream(in_rate, out_rate, 1, dtype="float32", quality=quality)
    chunk = np.zeros(in_rate // 50, dtype=np.float32)
    produced, worst = 0, 0.0
    for i in range(1, 51):
        produced += len(stream.resample_chunk(chunk))
        worst = max(worst, i * 20.0 - 1000.0 * produced / out_rate)
    return worst


class _Soxr:
    """``soxr.ResampleStream`` in float32 (deterministic: no dither)."""

    def __init__(self, in_rate: int, out_rate: int, quality: str) -> None:
        self._rates = (in_rate, out_rate)
        self._quality = quality
        self._stream = soxr.ResampleStream(in_rate, out_rate, 1, dtype="float32",
                                           quality=quality)

    @property
    def latency_ms(self) -> float:
        return _measured_lag_ms(*self._rates, self._quality)

    def process(self, x: Float32Array) -> Float32Array:
        y: Float32Array = self._stream.resample_chunk(x)
        return y

    def flush(self) -> Float32Array:
        tail: Float32Array = self._stream.resample_chunk(_EMPTY, last=True)
        self._stream.clear()
        return tail

    def reset(self) -> None:
        self._stream.clear()


def _soxr_factory(quality: str) -> Callable[[int, int], _Engine]:
    return lambda in_rate, out_rate: _Soxr(in_rate, out_rate, quality)


#: mode name -> engine factory (``"default"`` is resolved to ``DEFAULT_MODE`` first).
_ENGINES: dict[str, Callable[[int, int], _Engine]] = {
    "fir": lambda in_rate, out_rate: _Fir(fir_design(in_rate, out_rate)),
    "soxr-qq": _soxr_factory("QQ"),
    "soxr-lq": _soxr_factory("LQ"),
    "soxr-mq": _soxr_factory("MQ"),
    "soxr-hq": _soxr_factory("HQ"),
    "soxr-vhq": _soxr_factory("VHQ"),
}


# ----------------------------------------------------------------------------- public API


def _to_pcm16(y: Float32Array) -> bytes:
    """Round and saturate float samples in int16 units to PCM16LE."""
    out = np.rint(y)
    # Two in-place ufuncs cost ~40 % less than np.clip's wrapper at this size.
    np.maximum(out, -32768, out=out)
    np.minimum(out, 32767, out=out)
    return out.astype("<i2").tobytes()


class StreamResampler:
    """Resample a PCM16LE mono stream from ``in_rate`` to ``out_rate``, state kept.

    ``mode`` is a key of ``MODES``. Chunks may have any length, odd byte counts included
    (the odd byte is carried to the next chunk).
    """

    def __init__(self, in_rate: int, out_rate: int, mode: str = "default") -> None:
        if in_rate <= 0 or out_rate <= 0:
            raise ValueError(f"sample rates must be positive, got {in_rate} -> {out_rate}")
        name = DEFAULT_MODE if mode == "default" else mode
        if name not in _ENGINES:
            raise ValueError(f"unknown resampler mode {mode!r}; one of {sorted(MODES)}")
        self.in_rate = in_rate
        self.out_rate = out_rate
        self.mode = name
        self._identity = in_rate == out_rate
        self._engine: _Engine = (_Identity() if self._identity
                                 else _ENGINES[name](in_rate, out_rate))
        self._odd = b""
        # Steady frame sizes take the FIR's preallocated path (the inbound per-frame cost
        # of every call: docs/architecture.md, "Where the time goes").
        engine = self._engine
        self._fast = engine.process_pcm if isinstance(engine, _Fir) else None
        #: the ``ResampleBatch`` holding this stream's next chunk, if any
        self._batch: ResampleBatch | None = None

    def __repr__(self) -> str:
        return f"StreamResampler({self.in_rate}, {self.out_rate}, mode={self.mode!r})"

    @property
    def latency_ms(self) -> float:
        """What this resampler delays the stream by when fed 20 ms chunks."""
        return self._engine.latency_ms

    def process(self, pcm: bytes) -> bytes:
        """Resample the next chunk; returns what is ready (possibly nothing)."""
        if self._batch is not None:
            self._batch.run()       # a chunk submitted earlier comes first
        if self._odd:
            pcm = self._odd + pcm
        whole = len(pcm) & ~1
        self._odd = pcm[whole:]
        if self._identity:   # no float round trip for a leg already at the API's rate
            return bytes(pcm[:whole]) if self._odd else bytes(pcm)
        fast = self._fast
        if fast is not None:
            out = fast(pcm, whole // 2)
            if out is not None:
                return out
        x = np.frombuffer(pcm, dtype="<i2", count=whole // 2).astype(np.float32)
        return _to_pcm16(self._engine.process(x))

    def process_float(self, x: Float32Array) -> Float32Array:
        """As ``process`` on float32 samples in int16 units (no rounding, no saturation)."""
        if self._batch is not None:
            self._batch.run()
        return self._engine.process(np.asarray(x, dtype=np.float32))

    def flush(self) -> bytes:
        """Drain the tail still inside the filter (end of a response) and start afresh."""
        if self._batch is not None:
            self._batch.run()
        self._odd = b""
        return _to_pcm16(self._engine.flush())

    def flush_float(self) -> Float32Array:
        """As ``flush`` in float32."""
        if self._batch is not None:
            self._batch.run()
        self._odd = b""
        return self._engine.flush()

    def reset(self) -> None:
        """Drop everything held (barge-in): the next chunk starts a new stream."""
        if self._batch is not None:
            self._batch.run()
        self._odd = b""
        self._engine.reset()


class _Group:
    """The queued chunks of one batch group: same design, chunk size and history."""

    __slots__ = ("design", "n", "hist", "rows", "streams", "delivers")

    def __init__(self, design: FirDesign, n: int, hist: int) -> None:
        self.design, self.n, self.hist = design, n, hist
        self.rows: list[bytes] = []                 # history + chunk, PCM16
        self.streams: list[StreamResampler] = []
        self.delivers: list[Callable[[bytes], object]] = []


class ResampleBatch:
    """The next chunk of many FIR streams resampled in one matrix product (sans-I/O).

    Per call, a 20 ms frame costs the FIR path a handful of numpy calls and one small BLAS
    product: microseconds of fixed overhead each, for 160 samples of work. A process
    serving hundreds of calls pays that overhead hundreds of times per 20 ms. A batch
    takes every stream's chunk as it comes (``submit``), and ``run`` stacks them -- each
    row the stream's history followed by its chunk -- into one strided window array, one
    product, one rounding pass, and hands each stream its slice (``deliver``), in submit
    order. The output is the one ``process`` would have given, sample for sample.

    Who calls ``run`` and when is the owner's business (the call engine: once per event
    loop pass). A stream with a chunk queued runs the batch first whenever it is used
    directly (``process``, ``flush``, ``reset``), and a second chunk for the same stream
    runs the batch before it is queued: a stream's chunks always stay in order.

    ``submit`` returns False, queueing nothing, when the stream cannot take part (not the
    FIR engine, an odd byte carried, a history that is not exact PCM16, a chunk size
    that does not keep the history length steady): the caller then uses ``process``.
    """

    def __init__(self) -> None:
        self._groups: dict[tuple[int, int, int], _Group] = {}
        self.pending = 0        # chunks queued
        self.runs = 0           # products computed (for statistics)

    def submit(self, rs: StreamResampler, pcm: bytes,
               deliver: Callable[[bytes], object]) -> bool:
        engine = rs._engine
        if not isinstance(engine, _Fir) or rs._odd or len(pcm) & 1 or not pcm:
            return False
        if rs._batch is not None:
            rs._batch.run()
        hist_pcm = engine.history_pcm()
        if hist_pcm is None:
            return False
        d = engine._d
        n, hist = len(pcm) >> 1, len(hist_pcm) >> 1
        key = (id(d), n, hist)
        group = self._groups.get(key)
        if group is None:
            if not _FramePlan.fits(d, hist, n):
                return False
            group = self._groups[key] = _Group(d, n, hist)
        engine._hb = hist_pcm
        group.rows.append(hist_pcm + pcm)
        group.streams.append(rs)
        group.delivers.append(deliver)
        rs._batch = self
        self.pending += 1
        return True

    def run(self) -> int:
        """Resample everything queued and deliver it; returns the chunks delivered.

        A ``deliver`` that raises does not stop the others: the first exception is
        raised again once every stream has had its output."""
        if not self.pending:
            return 0
        groups = [g for g in self._groups.values() if g.rows]
        self.pending = 0
        outputs: list[tuple[Callable[[bytes], object], bytes]] = []
        for g in groups:
            rows, streams, delivers = g.rows, g.streams, g.delivers
            g.rows, g.streams, g.delivers = [], [], []
            out = _batch_product(g.design, g.n, g.hist, rows)
            size = len(out) // len(rows)
            tail = 2 * g.hist
            for i, rs in enumerate(streams):
                engine = rs._engine
                assert isinstance(engine, _Fir)
                rs._batch = None
                engine._hb = rows[i][-tail:] if tail else b""
                engine._in += g.n
                engine._out += size >> 1
                outputs.append((delivers[i], out[i * size:(i + 1) * size]))
        self.runs += 1
        error: Exception | None = None
        for deliver, data in outputs:
            try:
                deliver(data)
            except Exception as exc:   # one call's failure must not starve the others
                if error is None:
                    error = exc
        if error is not None:
            raise error
        return len(outputs)


def _batch_product(d: FirDesign, n: int, hist: int, rows: list[bytes]) -> bytes:
    """``rows`` (each ``hist + n`` PCM16 samples) through the FIR: PCM16 out, row by row."""
    count = len(rows)
    width = hist + n
    raw = np.frombuffer(b"".join(rows), _PCM16)
    periods = n // d.down
    group = math.gcd(periods, _GROUP)
    matrix = _block_matrix(d, group)
    per_row = periods // group
    span = matrix.shape[0]
    windows16 = np.lib.stride_tricks.as_strided(
        raw, (count, per_row, span), (2 * width, group * d.down * 2, 2), writeable=False)
    windows = np.empty((count, per_row, span), dtype=np.float32)
    np.copyto(windows, windows16)
    y = np.dot(windows.reshape(count * per_row, span), matrix)
    _clip(y, _LOW, _HIGH, out=y)
    out16 = np.empty(y.shape, dtype=_PCM16)
    np.rint(y, out=out16, casting="unsafe")
    return bytes(out16.tobytes())


def inbound_resampler(in_rate: int, mode: str = "default") -> StreamResampler:
    """Leg rate -> 24 kHz; the default is the low-latency FIR (caller audio is real time)."""
    return StreamResampler(in_rate, API_RATE, mode)


def outbound_resampler(out_rate: int, mode: str = "default") -> StreamResampler:
    """24 kHz -> leg rate. Call ``flush()`` at the end of each response, ``reset()`` on
    barge-in."""
    return StreamResampler(API_RATE, out_rate, mode)
