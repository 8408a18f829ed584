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
product per chunk (the engine and its design are in ``fir.py``). The soxr presets stay
selectable by name (``MODES``). ``ResampleBatch`` runs the next chunk of many FIR streams
in one product.

All engines work on float32 arrays in int16 units, so the streamed output can be compared
exactly with a one-shot computation (soxr's own int16 path is dithered); the bytes API
rounds and saturates once at the end.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from typing import Protocol

import numpy as np
import soxr
from threadpoolctl import threadpool_limits

from .fir import (
    EMPTY,
    FIR_ATTENUATION_DB,
    FIR_HALF_TRANSITION,
    FirDesign,
    FirEngine,
    Float32Array,
    FramePlan,
    batch_product,
    fir_design,
)

__all__ = [
    "API_RATE",
    "DEFAULT_MODE",
    "FIR_ATTENUATION_DB",
    "FIR_HALF_TRANSITION",
    "MODES",
    "FirDesign",
    "ResampleBatch",
    "StreamResampler",
    "fir_design",
    "inbound_resampler",
    "outbound_resampler",
]

#: The media loop is one thread. A batched product (``ResampleBatch``) is large enough for
#: OpenBLAS to hand it to its thread pool, whose threads then spin on every core for each
#: product 50 times a second (measured: 137 % of a core instead of 80 %, and the clock late
#: by 50 ms). The limit is process-wide and set once, when this module loads.
_BLAS_LIMIT = threadpool_limits(limits=1, user_api="blas")

#: The Realtime API's PCM16 rate.
API_RATE = 24000
#: What ``mode="default"`` means, both directions.
DEFAULT_MODE = "fir"

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


class _Identity:
    """Equal rates: nothing to do, nothing held."""

    latency_ms = 0.0

    def process(self, x: Float32Array) -> Float32Array:
        return x

    def flush(self) -> Float32Array:
        return EMPTY

    def reset(self) -> None:
        pass


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
        tail: Float32Array = self._stream.resample_chunk(EMPTY, last=True)
        self._stream.clear()
        return tail

    def reset(self) -> None:
        self._stream.clear()


def _soxr_factory(quality: str) -> Callable[[int, int], _Engine]:
    return lambda in_rate, out_rate: _Soxr(in_rate, out_rate, quality)


#: mode name -> engine factory (``"default"`` is resolved to ``DEFAULT_MODE`` first).
_ENGINES: dict[str, Callable[[int, int], _Engine]] = {
    "fir": lambda in_rate, out_rate: FirEngine(fir_design(in_rate, out_rate)),
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
        self._fast = engine.process_pcm if isinstance(engine, FirEngine) else None
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
        if not isinstance(engine, FirEngine) or rs._odd or len(pcm) & 1 or not pcm:
            return False
        if rs._batch is not None:
            rs._batch.run()
        hist_pcm = engine.history_pcm()
        if hist_pcm is None:
            return False
        d = engine.design
        n, hist = len(pcm) >> 1, len(hist_pcm) >> 1
        if not engine.has_plan(n):
            return False        # process() would take the general path: same rounding
        key = (id(d), n, hist)
        group = self._groups.get(key)
        if group is None:
            if not FramePlan.fits(d, hist, n):
                return False
            group = self._groups[key] = _Group(d, n, hist)
        engine.hold_history(hist_pcm)
        group.rows.append(hist_pcm + pcm)
        group.streams.append(rs)
        group.delivers.append(deliver)
        rs._batch = self
        self.pending += 1
        return True

    def run(self, after_each: Callable[[], object] | None = None) -> int:
        """Resample everything queued and deliver it; returns the chunks delivered.
        ``after_each`` runs after every delivery (the media clock's ``poll``).

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
            out = batch_product(g.design, g.n, g.hist, rows)
            size = len(out) // len(rows)
            tail = 2 * g.hist
            for i, rs in enumerate(streams):
                engine = rs._engine
                assert isinstance(engine, FirEngine)
                rs._batch = None
                engine.batched(rows[i][-tail:] if tail else b"", g.n, size >> 1)
                outputs.append((delivers[i], out[i * size:(i + 1) * size]))
        self.runs += 1
        error: Exception | None = None
        for deliver, data in outputs:
            try:
                deliver(data)
            except Exception as exc:   # one call's failure must not starve the others
                if error is None:
                    error = exc
            if after_each is not None:
                after_each()
        if error is not None:
            raise error
        return len(outputs)


def inbound_resampler(in_rate: int, mode: str = "default") -> StreamResampler:
    """Leg rate -> 24 kHz; the default is the low-latency FIR (caller audio is real time)."""
    return StreamResampler(in_rate, API_RATE, mode)


def outbound_resampler(out_rate: int, mode: str = "default") -> StreamResampler:
    """24 kHz -> leg rate. Call ``flush()`` at the end of each response, ``reset()`` on
    barge-in."""
    return StreamResampler(API_RATE, out_rate, mode)
