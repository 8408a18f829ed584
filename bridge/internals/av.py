"""The one private name of PyAV (``av``) the bridge relies on, in one place.

Theory of operation
-------------------
G.722 calls encode with FFmpeg's codec through PyAV (:mod:`bridge.codecs.g722`). PyAV's
public ``CodecContext.encode`` first passes every audio frame through an
``AudioResampler``, and for an encoder with a fixed frame size (G.722 takes 320 samples)
that resampler is an FFmpeg filter graph (buffer, format, a frame-size sink) even though
nothing needs converting. Each graph starts FFmpeg worker threads of its own: measured,
two threads per G.722 encoder, so 400 idle threads for 200 calls, and about 25 µs per
20 ms frame, half of what encoding costs. The bridge's frames already are exactly what
the encoder takes (packed s16, mono, 16 kHz, 320 samples: the codec module checks), so it
hands them to the codec directly with ``CodecContext._send_frame_and_recv``, the step
``encode`` ends with: no graph, no threads, the same packets (a test compares them).

:func:`missing_names` looks the name up on the class. Unlike the other libraries here a
PyAV without it is not refused: :func:`frame_encoder` then returns the public ``encode``,
which is correct, only dearer. So nothing can fail in the middle of a call either way.
"""

from __future__ import annotations

import types
from collections.abc import Callable, Iterable
from typing import Any, TypeAlias

import av
from av.codec.context import CodecContext

from bridge.internals import missing_names as _missing

#: class name (an attribute of the library object) -> the private names used
REQUIRED: dict[str, tuple[str, ...]] = {"CodecContext": ("_send_frame_and_recv",)}

#: The real library, as :func:`missing_names` sees it.
LIBRARY = types.SimpleNamespace(CodecContext=CodecContext)

Encode: TypeAlias = "Callable[[av.AudioFrame], Iterable[av.Packet[Any]]]"


def missing_names(library: object) -> list[str]:
    """``Class.name`` for every required private name ``library`` lacks."""
    return _missing(library, REQUIRED)


#: Whether the installed PyAV has the direct path (checked once, at import).
DIRECT = not missing_names(LIBRARY)


def frame_encoder(ctx: av.AudioCodecContext, *, direct: bool = DIRECT) -> Encode:
    """Frame -> packets for the opened encoder ``ctx``: the direct path when this PyAV has
    it, else the public ``encode``. Frames must already be in the encoder's format and
    frame size."""
    if direct:
        send: Encode = getattr(ctx, "_send_frame_and_recv")  # noqa: B009 (not in the stubs)
        return send
    return ctx.encode


__all__ = ["DIRECT", "LIBRARY", "REQUIRED", "Encode", "frame_encoder", "missing_names"]
