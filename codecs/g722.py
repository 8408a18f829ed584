"""G.722 wideband (ITU-T G.722 at 64 kbit/s) for SIP legs, through PyAV's FFmpeg codec.

Theory of operation
-------------------
G.722 carries 16 kHz audio (50–7000 Hz) in one octet per pair of samples: a 20 ms frame
is 320 PCM16 samples (640 bytes) one way and 160 payload bytes the other. Its RTP clock
is 8000 Hz although the audio is 16 kHz (RFC 3551 §4.5.2, an error kept for
compatibility), so a 20 ms packet advances the timestamp by 160: exactly one timestamp
unit per payload byte, as with G.711. That is why the RTP session's packetising (by
bytes), its timeline and the jitter buffer's timestamp arithmetic need no special case.

The codec is stateful (the sub-band ADPCM predictors and the QMF filter bank), so each
call has one :class:`G722Encoder` and one :class:`G722Decoder` of its own, never shared
and never reset mid-call (a reset would click). Both are FFmpeg's, opened through PyAV
(``av.CodecContext.create("g722", ...)``), which aiortc already brings, each on one
thread. Neither withholds audio: one 20 ms frame in, one 20 ms payload out, at once.
Encoding takes whole 20 ms frames only, each handed to the codec as it is (the
encoder's own format and frame size), without PyAV's per-encoder filter graph
(:mod:`bridge.internals.av` says why).

The decoder guards FFmpeg from what a peer may send. Every non-empty payload is a valid
G.722 bit stream (any octet is a code), so garbage decodes to noise of the right length,
never to an error. An *empty* payload, though, is FFmpeg's end-of-stream signal, after
which its decoder refuses everything: it is dropped and counted. Should FFmpeg still
fail, the payload is dropped, counted, and the decoder replaced.

Loss: the jitter buffer conceals a lost packet with ``FILLER_BYTE`` repeated (it knows
payloads only as octets). Decoded as such from a state in the middle of speech, that
would be a loud decaying burst, so the decoder recognises a payload made only of the
filler and returns silence of its length without decoding it: its state stays the one
of the last packet that arrived, the nearest to the far encoder's. (Measured on a tone
with one packet lost: the next packets come out at their level at once, where running
the filler through the codec costs 14 dB and 40 ms to recover, and a reset 36 dB and
80 ms.) 0xFA is also what FFmpeg's encoder makes of digital silence, so a real all-0xFA
packet is silence either way.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import av
from av.error import FFmpegError

from bridge.internals.av import frame_encoder

__all__ = [
    "FILLER_BYTE",
    "FRAME_BYTES",
    "PAYLOAD_BYTES",
    "SAMPLE_RATE",
    "G722Decoder",
    "G722Encoder",
]

#: The audio rate of G.722 (its RTP clock rate is 8000: see the module docstring).
SAMPLE_RATE = 16000
#: One 20 ms frame: PCM16 bytes, and payload bytes (= RTP timestamp units at 8000 Hz).
FRAME_BYTES = 640
PAYLOAD_BYTES = 160
#: What a concealed (lost) packet is made of; decoded as silence.
FILLER_BYTE = 0xFA
_FRAME_SAMPLES = FRAME_BYTES // 2


def _context(mode: Literal["r", "w"]) -> av.AudioCodecContext:
    ctx = av.CodecContext.create("g722", mode)
    ctx.sample_rate = SAMPLE_RATE
    ctx.layout = "mono"
    ctx.thread_count = 1
    if mode == "w":
        ctx.format = "s16"
        ctx.open()
        if ctx.frame_size != _FRAME_SAMPLES:            # pragma: no cover - FFmpeg changed
            raise RuntimeError(f"FFmpeg's G.722 encoder takes {ctx.frame_size} samples "
                               f"a frame, not {_FRAME_SAMPLES}")
    return ctx


class G722Encoder:
    """PCM16LE mono at 16 kHz -> G.722, one encoder per call (its state is the stream's)."""

    def __init__(self) -> None:
        self._ctx = _context("w")
        self._send = frame_encoder(self._ctx)
        self.frames = 0

    def encode(self, pcm: bytes) -> bytes:
        """Encode whole 20 ms frames (a multiple of 640 bytes); returns 160 bytes each."""
        if len(pcm) % FRAME_BYTES:
            raise ValueError(f"G.722 encodes whole 20 ms frames of {FRAME_BYTES} bytes "
                             f"(got {len(pcm)})")
        out: list[bytes] = []
        for at in range(0, len(pcm), FRAME_BYTES):
            frame = av.AudioFrame(format="s16", layout="mono", samples=_FRAME_SAMPLES)
            frame.planes[0].update(pcm[at:at + FRAME_BYTES])
            frame.sample_rate = SAMPLE_RATE
            out.extend(bytes(packet) for packet in self._send(frame))
            self.frames += 1
        return b"".join(out)


class G722Decoder:
    """G.722 -> PCM16LE mono at 16 kHz (two samples per payload byte), one per call.

    ``on_drop`` is called with the reason (``"codec"``) of every payload it drops; the
    RTP endpoint counts it like any other dropped packet."""

    def __init__(self, on_drop: Callable[[str], None] | None = None) -> None:
        self._ctx = _context("r")
        self.on_drop = on_drop
        self.dropped = 0
        self.concealed = 0
        self._filler = bytes((FILLER_BYTE,)) * PAYLOAD_BYTES

    def decode(self, payload: bytes) -> bytes:
        """Decode one payload; b"" when it is dropped (see the module docstring)."""
        if not payload:
            return self._drop()
        if len(payload) != len(self._filler):
            self._filler = bytes((FILLER_BYTE,)) * len(payload)
        if payload == self._filler:
            self.concealed += 1
            return bytes(4 * len(payload))
        try:
            frames = self._ctx.decode(av.Packet(payload))
        except FFmpegError:
            self._ctx = _context("r")
            return self._drop()
        if len(frames) == 1:
            frame = frames[0]
            return bytes(frame.planes[0])[:2 * frame.samples]
        return b"".join(bytes(f.planes[0])[:2 * f.samples] for f in frames)

    def reset(self) -> None:
        """Start afresh: the far end began a new stream (a new SSRC, a new encoder)."""
        self._ctx = _context("r")

    def _drop(self) -> bytes:
        self.dropped += 1
        if self.on_drop is not None:
            self.on_drop("codec")
        return b""


def _check_output_format() -> None:
    """The decoder's output must be packed signed 16-bit: ``planes[0]`` is read as such."""
    frames = _context("r").decode(av.Packet(bytes(PAYLOAD_BYTES)))
    if not frames or frames[0].format.name != "s16":   # pragma: no cover - FFmpeg changed
        raise RuntimeError("FFmpeg's G.722 decoder no longer produces packed s16")


_check_output_format()
