"""bridge.internals.av: PyAV's direct encode path for G.722, checked and compared."""

from __future__ import annotations

import os
import types

import av

from bridge.codecs.g722 import FRAME_BYTES, G722Encoder
from bridge.codecs.level import tone
from bridge.internals import av as internals


def test_the_installed_pyav_has_the_direct_path() -> None:
    assert internals.missing_names(internals.LIBRARY) == []
    assert internals.DIRECT


def test_a_pyav_without_it_is_named_and_falls_back_to_encode() -> None:
    library = types.SimpleNamespace(CodecContext=type("CodecContext", (), {}))
    assert internals.missing_names(library) == ["CodecContext._send_frame_and_recv"]
    ctx = av.CodecContext.create("g722", "w")
    assert internals.frame_encoder(ctx, direct=False) == ctx.encode


def _frame(pcm: bytes) -> av.AudioFrame:
    frame = av.AudioFrame(format="s16", layout="mono", samples=len(pcm) // 2)
    frame.planes[0].update(pcm)
    frame.sample_rate = 16000
    return frame


def _open() -> av.AudioCodecContext:
    ctx = av.CodecContext.create("g722", "w")
    ctx.sample_rate, ctx.layout, ctx.format = 16000, "mono", "s16"
    ctx.open()
    return ctx


def test_both_paths_make_the_same_packets() -> None:
    pcm = tone(1200, 400, 16000)
    frames = [pcm[i:i + FRAME_BYTES] for i in range(0, len(pcm), FRAME_BYTES)]
    public, direct = _open(), _open()
    send = internals.frame_encoder(direct)
    for f in frames:
        assert [bytes(p) for p in public.encode(_frame(f))] == \
            [bytes(p) for p in send(_frame(f))]


def test_g722_encoders_start_no_threads() -> None:
    """PyAV's public path builds a filter graph per encoder, and FFmpeg starts threads
    for each; 50 calls' encoders must not add 100 threads to the process."""
    before = len(os.listdir("/proc/self/task"))
    encoders = [G722Encoder() for _ in range(50)]
    for enc in encoders:
        enc.encode(bytes(FRAME_BYTES))
    assert len(os.listdir("/proc/self/task")) - before < 5
