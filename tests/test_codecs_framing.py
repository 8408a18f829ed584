"""Framer and PlayoutBuffer: exact frames, carried remainders, honest millisecond counts."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.codecs.framing import Framer, PlayoutBuffer


@settings(deadline=None)
@given(st.lists(st.binary(max_size=700), max_size=30), st.sampled_from([160, 320, 960]))
def test_framer_cuts_any_chunking_into_exact_frames(chunks: list[bytes], size: int) -> None:
    f = Framer(size)
    frames = [fr for c in chunks for fr in f.push(c)]
    stream = b"".join(chunks)
    assert all(len(fr) == size for fr in frames)
    assert b"".join(frames) == stream[:len(frames) * size]
    assert f.pending == len(stream) % size
    assert len(frames) == len(stream) // size


def test_framer_carries_the_partial_tail_and_clear_drops_it() -> None:
    f = Framer(4)
    assert f.push(b"abc") == []
    assert f.pending == 3
    assert f.push(b"defghij") == [b"abcd", b"efgh"]
    assert f.pending == 2
    assert f.clear() == 2
    assert f.pending == 0
    assert f.push(b"wxyz") == [b"wxyz"]          # nothing of the dropped tail remains
    assert f.push(b"") == []
    with pytest.raises(ValueError):
        Framer(0)


def test_a_frame_sized_chunk_behind_a_held_remainder_is_not_taken_whole() -> None:
    # A leg that delivers 10 ms and then 20 ms: the 20 ms chunk is frame-sized but must
    # queue behind the 10 ms already held (random chunkings almost never hit this case).
    f = Framer(320)
    assert f.push(b"a" * 160) == []
    assert f.push(b"b" * 320) == [b"a" * 160 + b"b" * 160]
    assert f.pending == 160
    assert f.push(b"c" * 320) == [b"b" * 160 + b"c" * 160]


def test_framer_accepts_bytearray_and_returns_independent_bytes() -> None:
    f = Framer(2)
    data = bytearray(b"1234")
    frames = f.push(data)
    data[:] = b"xxxx"
    assert frames == [b"12", b"34"]
    assert all(type(fr) is bytes for fr in frames)


def test_playout_buffer_counts_milliseconds_in_and_out() -> None:
    b = PlayoutBuffer(8000)                       # 20 ms = 320 bytes
    assert b.frame_bytes == 320
    b.push(bytes(range(256)) * 3)                 # 768 bytes = 48 ms
    assert b.ms_in == 48.0
    assert b.buffered_ms == 48.0
    first = b.pop_frame()
    assert first == (bytes(range(256)) * 3)[:320]
    assert b.pop_frame() is not None
    assert b.pop_frame() is None                  # 8 ms left: not a whole frame
    assert b.ms_out == 40.0
    assert b.buffered_ms == 8.0


def test_partial_pop_pads_the_tail_with_silence_but_counts_only_audio() -> None:
    b = PlayoutBuffer(8000)
    b.push(b"\x01\x02" * 40)                      # 5 ms
    frame = b.pop_frame(partial=True)
    assert frame == b"\x01\x02" * 40 + bytes(240)
    assert b.ms_out == 5.0
    assert b.pop_frame(partial=True) is None      # nothing left at all


def test_clear_returns_the_dropped_milliseconds() -> None:
    b = PlayoutBuffer(24000)                      # 48 bytes per ms
    b.push(bytes(48 * 70))
    b.pop_frame()
    assert b.clear() == 50
    assert b.buffered_ms == 0.0
    assert b.ms_dropped == 50.0
    assert b.pop_frame(partial=True) is None
    assert b.clear() == 0
    b.push(bytes(48 * 20))
    assert b.pop_frame() == bytes(960)            # usable again after a clear
    assert b.ms_in == b.ms_out + b.ms_dropped + b.buffered_ms


@settings(deadline=None)
@given(st.lists(st.tuples(st.binary(max_size=2000), st.integers(0, 4), st.booleans()),
                max_size=40))
def test_playout_buffer_is_a_fifo_and_the_books_balance(ops: list[tuple[bytes, int, bool]]
                                                       ) -> None:
    b = PlayoutBuffer(8000)
    pushed, popped = bytearray(), bytearray()
    for data, pops, clear in ops:
        b.push(data)
        pushed += data
        for _ in range(pops):
            frame = b.pop_frame()
            if frame is None:
                assert b.buffered_bytes < 320
                break
            assert len(frame) == 320
            popped += frame
        if clear:
            b.clear()
            pushed = popped[:]                    # what was dropped never comes out
        assert popped == pushed[:len(popped)]
        assert b.ms_in == pytest.approx(b.ms_out + b.ms_dropped + b.buffered_ms)


def test_playout_buffer_rejects_frames_of_fractional_samples() -> None:
    with pytest.raises(ValueError):
        PlayoutBuffer(11025, 20)                  # 220.5 samples
    assert PlayoutBuffer(48000, 10).frame_bytes == 960
