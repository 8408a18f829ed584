"""The FIR resampling engine: a polyphase linear-phase Kaiser low-pass, streamed.

Theory of operation
-------------------
``fir_design`` designs, once per rate pair, a Kaiser-windowed sinc whose band edge sits on
the lower rate's Nyquist frequency, laid out as a polyphase matrix (``FirDesign``): one
window of ``width`` input samples times the matrix gives ``up`` consecutive outputs, and
successive windows are ``down`` samples apart. ``FirEngine`` streams it: the unconsumed
front of its buffer is the history the next window needs, so a chunk of any size is one
strided view and one matrix product, and nothing is withheld beyond the filter's own
group delay (1.8 ms at 8k->24k).

Steady chunk sizes (a call's 20 ms frames) take a ``FramePlan``: preallocated arrays and a
grouped "staircase" matrix (``block_matrix``), so a frame costs a handful of numpy calls
and no allocation. ``batch_product`` is the same computation for the next chunk of many
streams at once (``ResampleBatch`` in ``resample.py``). Every path gives the same samples.

Samples are float32 in int16 units; the PCM16 paths round and saturate once at the end.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = [
    "EMPTY",
    "FIR_ATTENUATION_DB",
    "FIR_HALF_TRANSITION",
    "PCM16",
    "FirDesign",
    "FirEngine",
    "Float32Array",
    "FramePlan",
    "batch_product",
    "block_matrix",
    "fir_design",
]

Float32Array = npt.NDArray[np.float32]

#: The clip ufunc itself (``np.clip`` is a Python wrapper around it).
_numpy_core: Any = np._core if hasattr(np, "_core") else np.core   # numpy 2 / 1.26
_clip: Callable[..., Any] = _numpy_core.umath.clip
_LOW, _HIGH = np.array(-32768.0, dtype=np.float32), np.array(32767.0, dtype=np.float32)
#: PCM16LE samples.
PCM16 = np.dtype("<i2")
#: No samples.
EMPTY: Float32Array = np.zeros(0, dtype=np.float32)

#: Stopband attenuation the FIR is designed for; the measured worst case is ≥ 65 dB.
FIR_ATTENUATION_DB = 70.0
#: Half the transition band as a fraction of the lower Nyquist frequency (0.15 × 4 kHz =
#: 600 Hz: pass to 3.4 kHz, stop from 4.6 kHz at 8 kHz).
FIR_HALF_TRANSITION = 0.15


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
#: Output periods per row of the grouped product (see ``FramePlan``).
_GROUP = 16
_block_matrices: dict[tuple[int, int], tuple[FirDesign, Float32Array]] = {}


def block_matrix(d: FirDesign, group: int) -> Float32Array:
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


class FramePlan:
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
        self.buf16: npt.NDArray[np.int16] = np.frombuffer(self.raw, PCM16)
        self.head = self.buf16[:hist]
        # Byte offsets: where the chunk goes, where the next chunk's history starts.
        self.body_at, self.tail_at, self.end = 2 * hist, 2 * n, 2 * (hist + n)
        self.matrix = block_matrix(d, group)
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


class FirEngine:
    """Streaming polyphase FIR: a window per output period, one matrix product per chunk.

    ``_buf[0]`` is always the first input sample of the next period's window, so the
    history the filter needs is simply the unconsumed front of the buffer.
    """

    def __init__(self, design: FirDesign) -> None:
        self._d = design
        self._plan: FramePlan | None = None
        self._plans: dict[tuple[int, int], FramePlan] = {}
        self._last_n = -1
        self.reset()

    @property
    def design(self) -> FirDesign:
        return self._d

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
            self._buf = np.frombuffer(hb, PCM16)

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
        return bytes(buf.astype(PCM16).tobytes())

    def hold_history(self, history: bytes) -> None:
        """Enter batch mode: ``history`` (from ``history_pcm``) is queued with a chunk."""
        self._hb = history

    def has_plan(self, n: int) -> bool:
        """The next chunk of ``n`` samples would go through a frame plan (the batch takes
        only those: the same block product, so the same rounding, as ``process_pcm``)."""
        plan = self._plans.get((n, len(self._buf) if self._hb is None else
                                len(self._hb) >> 1))
        return plan is not None

    def batched(self, history: bytes, n_in: int, n_out: int) -> None:
        """A batch ran this stream's chunk: ``n_in`` samples in, ``n_out`` out, and
        ``history`` (PCM16) is what the next chunk needs."""
        self._hb = history
        self._in += n_in
        self._out += n_out

    def _run(self, x: Float32Array) -> Float32Array:
        self._unbatch()
        d = self._d
        buf = np.concatenate((self._buf, x)) if len(self._buf) else np.ascontiguousarray(x)
        periods = (len(buf) - d.width) // d.down + 1 if len(buf) >= d.width else 0
        if periods <= 0:
            self._buf = buf
            return EMPTY
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
                if not repeat or not FramePlan.fits(self._d, hist, n):
                    return None
                plan = FramePlan(self._d, hist, n)
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
            return EMPTY
        self._unbatch()
        last = (d.up * (self._in - 1) + len(d.taps) - 1) // d.down
        remaining = last + 1 - self._out
        zeros = np.zeros(-(-remaining * d.down // d.up) + d.width, dtype=np.float32)
        tail = self._run(zeros)[:remaining]
        self.reset()
        return tail


def batch_product(d: FirDesign, n: int, hist: int, rows: list[bytes]) -> bytes:
    """``rows`` (each ``hist + n`` PCM16 samples) through the FIR: PCM16 out, row by row."""
    count = len(rows)
    width = hist + n
    raw = np.frombuffer(b"".join(rows), PCM16)
    periods = n // d.down
    group = math.gcd(periods, _GROUP)
    matrix = block_matrix(d, group)
    per_row = periods // group
    span = matrix.shape[0]
    windows16 = np.lib.stride_tricks.as_strided(
        raw, (count, per_row, span), (2 * width, group * d.down * 2, 2), writeable=False)
    windows = np.empty((count, per_row, span), dtype=np.float32)
    np.copyto(windows, windows16)
    # One product per stream, looped in C: every stream's rows go through the same BLAS
    # kernel as ``process`` gives them (a kernel chosen by the whole batch's row count
    # rounds differently on some CPUs), at the cost of one BLAS call per stream.
    y = np.matmul(windows, matrix)
    _clip(y, _LOW, _HIGH, out=y)
    out16 = np.empty(y.shape, dtype=PCM16)
    np.rint(y, out=out16, casting="unsafe")
    return bytes(out16.tobytes())
