"""ResampleBatch: many streams' next chunk in one product, sample for sample as process()."""

from __future__ import annotations

import asyncio
import random

import numpy as np
import pytest

from bridge.call.batch import UpstreamBatch
from bridge.codecs.resample import ResampleBatch, StreamResampler, inbound_resampler


def _speechy(rng: random.Random, n: int) -> bytes:
    x = np.array([rng.randint(-32768, 32767) for _ in range(n)], dtype="<i2")
    return x.tobytes()


@pytest.mark.parametrize("rate", [8000, 16000])
def test_batched_output_equals_process_per_stream(rate: int) -> None:
    rng = random.Random(rate)
    streams = 12
    ref = [inbound_resampler(rate) for _ in range(streams)]
    dut = [inbound_resampler(rate) for _ in range(streams)]
    batch = ResampleBatch()
    got: list[list[bytes]] = [[] for _ in range(streams)]
    want: list[list[bytes]] = [[] for _ in range(streams)]
    frame = rate // 50
    for step in range(25):
        order = list(range(streams))
        rng.shuffle(order)
        for i in order:
            chunk = _speechy(rng, frame)
            want[i].append(ref[i].process(chunk))
            if not batch.submit(dut[i], chunk, got[i].append):
                got[i].append(dut[i].process(chunk))
        assert batch.run() == streams or step < 2     # the first chunks may take process()
    assert got == want
    assert batch.runs >= 23
    # The streams go on correctly outside the batch too (history handed back).
    for i in range(streams):
        chunk = _speechy(rng, frame)
        assert dut[i].process(chunk) == ref[i].process(chunk)
        assert dut[i].flush() == ref[i].flush()


def test_a_stream_used_directly_runs_its_queued_chunk_first() -> None:
    rng = random.Random(3)
    ref, dut = inbound_resampler(8000), inbound_resampler(8000)
    batch = ResampleBatch()
    out: list[bytes] = []
    a, b, c = (_speechy(rng, 160) for _ in range(3))
    for chunk in (a, a):                               # warm: plans built
        ref.process(chunk)
        dut.process(chunk)
    assert batch.submit(dut, a, out.append)
    assert batch.pending == 1 and out == []
    # A second chunk for the same stream: the first is resampled before it is queued.
    assert batch.submit(dut, b, out.append)
    assert len(out) == 1 and batch.pending == 1
    # Used directly (the gap filler's ring-out frame): the queued chunk comes first.
    direct = dut.process(c)
    assert len(out) == 2 and batch.pending == 0
    assert out == [ref.process(a), ref.process(b)] and direct == ref.process(c)
    # reset() and flush() settle the batch as well.
    assert batch.submit(dut, a, out.append)
    dut.reset()
    assert len(out) == 3 and batch.pending == 0


def test_streams_that_cannot_be_batched_are_refused() -> None:
    batch = ResampleBatch()
    sink: list[bytes] = []
    assert not batch.submit(StreamResampler(8000, 24000, "soxr-hq"), bytes(320), sink.append)
    assert not batch.submit(StreamResampler(24000, 24000), bytes(960), sink.append)
    rs = inbound_resampler(8000)
    assert not batch.submit(rs, bytes(319), sink.append)          # odd byte count
    rs.process(bytes(3))                                           # carries an odd byte
    assert not batch.submit(rs, bytes(320), sink.append)
    floaty = inbound_resampler(8000)
    floaty.process_float(np.full(160, 0.25, dtype=np.float32))     # history not PCM16
    assert not batch.submit(floaty, bytes(320), sink.append)
    assert batch.pending == 0 and sink == []


def warmed(rate: int = 8000) -> StreamResampler:
    """A stream past its first two frames: its frame plan is built (what the batch takes)."""
    rs = inbound_resampler(rate)
    for _ in range(2):
        rs.process(bytes(rate // 25))
    return rs


def test_a_fresh_stream_is_left_to_process_until_its_frame_plan_exists() -> None:
    """The first chunks take process()'s general path: batching them would round
    differently (another product shape), so the batch refuses them."""
    batch = ResampleBatch()
    rs = inbound_resampler(8000)
    assert not batch.submit(rs, bytes(320), lambda d: None)
    rs.process(bytes(320))
    assert not batch.submit(rs, bytes(320), lambda d: None)
    rs.process(bytes(320))                       # the same size twice: a plan now exists
    assert batch.submit(rs, bytes(320), lambda d: None)


def test_a_failing_delivery_does_not_starve_the_others() -> None:
    batch = ResampleBatch()
    got: list[bytes] = []

    def broken(data: bytes) -> None:
        raise RuntimeError("boom")

    streams = [warmed() for _ in range(3)]
    assert batch.submit(streams[0], bytes(320), broken)
    assert batch.submit(streams[1], bytes(320), got.append)
    assert batch.submit(streams[2], bytes(320), got.append)
    with pytest.raises(RuntimeError):
        batch.run()
    assert len(got) == 2 and batch.pending == 0


async def test_upstream_batch_runs_once_per_loop_pass() -> None:
    up = UpstreamBatch()
    streams = [warmed() for _ in range(5)]
    got: list[tuple[int, int]] = []
    for i, rs in enumerate(streams):
        assert up.submit(rs, bytes(320), lambda d, i=i: got.append((i, len(d))))
    assert got == []                                   # nothing until the loop runs it
    await asyncio.sleep(0)
    assert got == [(i, 960) for i in range(5)]
    assert up.batch.runs == 1


def test_upstream_batch_outside_a_loop_leaves_the_frame_to_the_caller() -> None:
    up = UpstreamBatch()
    rs = inbound_resampler(8000)
    assert up.submit(rs, bytes(320), lambda d: None) is False
    assert up.batch.pending == 0 and rs._batch is None
