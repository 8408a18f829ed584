"""The process-wide batch for caller audio going upstream.

Every call's inbound frame is resampled to 24 kHz before ``input_audio_buffer.append``.
Done frame by frame, each call pays the FIR's fixed numpy overhead 50 times a second;
``ResampleBatch`` (codecs) does all the frames queued so far in one product. This is the
thin asyncio part: the first frame queued in a pass of the event loop schedules one
``call_soon``, which runs the batch right after the callbacks of that pass -- the media
clock's slice that delivered a few dozen memory legs' frames, or the RTP datagrams that
arrived together. A frame waits for the rest of its loop pass, nothing more: no timer,
no added latency worth naming, and under load the batches grow by themselves.

A call whose stream has a frame queued that uses the stream directly (the gap filler's
ring-out frame, a reset) runs the batch first, so a stream's frames stay in order.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from bridge.codecs.resample import ResampleBatch, StreamResampler

log = logging.getLogger(__name__)


class UpstreamBatch:
    """Queue frames from any call on this loop; run once per loop pass."""

    def __init__(self) -> None:
        self.batch = ResampleBatch()
        self._scheduled: asyncio.AbstractEventLoop | None = None
        self._poll: Callable[[], object] | None = None

    def submit(self, rs: StreamResampler, pcm: bytes, deliver: Callable[[bytes], object],
               poll: Callable[[], object] | None = None) -> bool:
        """Queue ``pcm`` for ``rs``; ``deliver`` gets the resampled bytes later in this
        loop pass. False when the stream cannot be batched (use ``rs.process``).

        ``poll`` (the media clock's) runs after the delivery: the batch delivers every
        call's frame in one callback, each a socket write, and a tick due meanwhile goes
        out between two of them rather than after the whole batch."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return False        # no loop to run the batch: the caller resamples now
        if poll is not None:
            self._poll = poll           # one clock per process: the last one given
        if not self.batch.submit(rs, pcm, deliver):
            return False
        if self._scheduled is not loop:
            # A loop that went away with a run pending (tests) must not block this one.
            self._scheduled = loop
            loop.call_soon(self._run)
        return True

    def _run(self) -> None:
        self._scheduled = None
        try:
            self.batch.run(self._poll)
        except Exception:
            log.exception("delivering resampled caller audio failed")


_shared: UpstreamBatch | None = None


def upstream_batch() -> UpstreamBatch:
    """The process's batch (created on first use)."""
    global _shared
    if _shared is None:
        _shared = UpstreamBatch()
    return _shared


__all__ = ["UpstreamBatch", "upstream_batch"]
