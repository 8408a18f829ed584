"""PlayoutBuffer: exact frames, carried remainders, honest millisecond counts."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.codecs.framing import PlayoutBuffer


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
