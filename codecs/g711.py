"""G.711 µ-law (PCMU) and A-law (PCMA) for buffers of any length.

Theory of operation
-------------------
PCM is 16-bit signed little-endian mono; G.711 is one byte per sample. The four
conversions use ``audioop`` (standard library on Python ≤ 3.12, the ``audioop-lts``
package under the same name on 3.13+), with one exception measured on these machines:

* Decoding: ``audioop.ulaw2lin``/``alaw2lin`` are the fastest thing we have at every size.
* Encoding: ``audioop.lin2ulaw`` wins for a 20 ms frame (160 samples), but a 65,536-entry
  lookup table indexed by the raw 16-bit sample wins from a few hundred samples up
  (≈ 2× at 960 samples, 4–6× at 4,800). Buffers of ``TABLE_MIN_SAMPLES`` or more use the
  table. The tables are built here from the G.711 segment definitions (not from
  ``audioop``), so the test comparing both paths with ``audioop`` over all 65,536 inputs
  checks two independent implementations.

Quantisation follows the classic reference implementation that ``audioop`` shares: the
16-bit sample is first truncated (arithmetic shift, i.e. floor) to the 14-bit (µ-law) or
13-bit (A-law) linear code of G.711 and then quantised on the standard's decision values.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable
from functools import cache

import numpy as np
import numpy.typing as npt

if sys.version_info >= (3, 13):  # pragma: no cover - audioop-lts provides the same module
    import audioop
else:
    with warnings.catch_warnings():
        # 3.11/3.12 warn that audioop leaves the stdlib in 3.13; audioop-lts covers that.
        warnings.simplefilter("ignore", DeprecationWarning)
        import audioop

__all__ = [
    "CODECS",
    "SILENCE_BYTE",
    "TABLE_MIN_SAMPLES",
    "alaw_decode",
    "alaw_encode",
    "decode",
    "encode",
    "silence",
    "transcode",
    "ulaw_decode",
    "ulaw_encode",
]

#: From this many samples up, encoding uses the 64k-entry table instead of ``audioop``.
TABLE_MIN_SAMPLES = 256

_U8 = npt.NDArray[np.uint8]


def _ulaw_magnitude_codes(m: npt.NDArray[np.int32]) -> npt.NDArray[np.int32]:
    """7-bit µ-law magnitude code (segment << 4 | step) of 14-bit magnitudes ``m``.

    G.711 Table 2a: adding the bias 33 makes segment ``s`` span [2^(s+5), 2^(s+6)) with
    steps of 2^(s+1); magnitudes beyond the last decision value 8158 clip to the top code.
    """
    biased = np.minimum(m, 8158) + 33
    seg = np.floor(np.log2(biased)).astype(np.int32) - 5
    step = (biased >> (seg + 1)) & 0xF
    codes: npt.NDArray[np.int32] = (seg << 4) | step
    return codes


def _alaw_magnitude_codes(m: npt.NDArray[np.int32]) -> npt.NDArray[np.int32]:
    """7-bit A-law magnitude code of 13-bit magnitudes ``m`` (G.711 Table 1a).

    Segments 0 and 1 both have steps of 2 (together the linear part of the A-law curve);
    segment ``s`` ≥ 1 spans [2^(s+4), 2^(s+5)) with steps of 2^s; the top is 4095.
    """
    m = np.minimum(m, 4095)
    seg = np.where(m < 32, 0, np.floor(np.log2(np.maximum(m, 1))).astype(np.int32) - 4)
    shift = np.maximum(seg, 1)
    return (seg << 4) | ((m >> shift) & 0xF)


@cache
def _encode_table(codec: str) -> _U8:
    """The 65,536-entry table ``uint16 sample -> code byte``, built once on first use."""
    x = np.arange(65536, dtype=np.uint16).view(np.int16).astype(np.int32)
    if codec == "pcmu":
        v = x >> 2                                   # floor to the 14-bit linear code
        neg = v < 0
        mag = _ulaw_magnitude_codes(np.where(neg, -v, v))
        # µ-law sends every bit inverted; after inversion the sign bit is 1 for positive.
        code = np.where(neg, mag | 0x80, mag) ^ 0xFF
    else:
        v = x >> 3                                   # floor to the 13-bit linear code
        neg = v < 0
        mag = _alaw_magnitude_codes(np.where(neg, -v - 1, v))
        # A-law inverts the even bits (XOR 0x55); sign bit 1 is positive.
        code = np.where(neg, mag, mag | 0x80) ^ 0x55
    return code.astype(np.uint8)


def _table_encode(codec: str, pcm: bytes) -> bytes:
    """Encode through the 64k table (fast for buffers longer than a frame)."""
    samples = np.frombuffer(pcm, dtype="<u2", count=len(pcm) // 2)
    return _encode_table(codec).take(samples).tobytes()


def _whole_samples(pcm: bytes) -> bytes:
    """Drop a trailing odd byte: audioop rejects it, and half a sample carries nothing."""
    return pcm[: len(pcm) - 1] if len(pcm) & 1 else pcm


def ulaw_decode(data: bytes) -> bytes:
    """µ-law bytes -> PCM16LE (two bytes per input byte)."""
    return audioop.ulaw2lin(data, 2)


def alaw_decode(data: bytes) -> bytes:
    """A-law bytes -> PCM16LE (two bytes per input byte)."""
    return audioop.alaw2lin(data, 2)


def ulaw_encode(pcm: bytes) -> bytes:
    """PCM16LE -> µ-law, one byte per sample (a trailing odd byte is ignored)."""
    if len(pcm) >= 2 * TABLE_MIN_SAMPLES:
        return _table_encode("pcmu", pcm)
    return audioop.lin2ulaw(_whole_samples(pcm), 2)


def alaw_encode(pcm: bytes) -> bytes:
    """PCM16LE -> A-law, one byte per sample (a trailing odd byte is ignored)."""
    if len(pcm) >= 2 * TABLE_MIN_SAMPLES:
        return _table_encode("pcma", pcm)
    return audioop.lin2alaw(_whole_samples(pcm), 2)


#: codec name (as in SDP, lower case) -> (encode, decode)
CODECS: dict[str, tuple[Callable[[bytes], bytes], Callable[[bytes], bytes]]] = {
    "pcmu": (ulaw_encode, ulaw_decode),
    "pcma": (alaw_encode, alaw_decode),
}


def _lookup(codec: str) -> tuple[Callable[[bytes], bytes], Callable[[bytes], bytes]]:
    try:
        return CODECS[codec.lower()]
    except KeyError:
        raise ValueError(f"unknown G.711 codec {codec!r} (expected 'pcmu' or 'pcma')") from None


def encode(codec: str, pcm: bytes) -> bytes:
    """PCM16LE -> G.711 ``codec`` ("pcmu" or "pcma")."""
    return _lookup(codec)[0](pcm)


def decode(codec: str, data: bytes) -> bytes:
    """G.711 ``codec`` ("pcmu" or "pcma") -> PCM16LE."""
    return _lookup(codec)[1](data)


#: Each law's code for a zero sample (its "negative zero"): what silence is on the wire.
SILENCE_BYTE: dict[str, int] = {"pcmu": 0xFF, "pcma": 0xD5}


def silence(codec: str, samples: int) -> bytes:
    """``samples`` of silence in G.711 ``codec``."""
    return bytes([SILENCE_BYTE[codec.lower()]]) * samples


def transcode(src: str, dst: str, data: bytes) -> bytes:
    """G.711 ``src`` -> G.711 ``dst`` (through PCM16; the identity when they are equal)."""
    if src == dst:
        return data
    return encode(dst, decode(src, data))
