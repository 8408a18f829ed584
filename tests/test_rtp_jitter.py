"""Jitter buffer unit tests on a virtual clock."""

from __future__ import annotations

from bridge.rtp.jitter import JitterBuffer

SIL = b"\xff" * 160


def frame(i: int) -> bytes:
    return bytes([i & 0x7F]) * 160


def drain(jb: JitterBuffer, now: float) -> list[bytes]:
    out = []
    while (p := jb.pop(now)) is not None:
        out.append(p)
    return out


def test_in_order_packets_pass_straight_through() -> None:
    jb = JitterBuffer()
    for i in range(50):
        jb.push(1000 + i, 160 * i, frame(i), i * 0.02)
        # released in the same callback: zero added delay, no timer armed
        assert drain(jb, i * 0.02) == [frame(i)]
        assert jb.get_timer() is None
    assert (jb.lost, jb.late, jb.duplicates, jb.reordered) == (0, 0, 0, 0)


def test_reordered_packet_within_wait_is_put_back_in_order() -> None:
    jb = JitterBuffer(depth_ms=40)
    jb.push(1, 0, frame(1), 0.00)
    assert drain(jb, 0.00) == [frame(1)]
    jb.push(3, 320, frame(3), 0.04)             # 2 is missing: hold 3
    assert drain(jb, 0.04) == []
    assert jb.get_timer() == 0.04 + 0.04
    jb.push(2, 160, frame(2), 0.05)             # 2 arrives 10 ms later
    assert drain(jb, 0.05) == [frame(2), frame(3)]
    assert jb.get_timer() is None
    assert (jb.lost, jb.reordered) == (0, 1)


def test_loss_is_concealed_with_silence_at_the_deadline() -> None:
    jb = JitterBuffer(depth_ms=40, adaptive=False)
    jb.push(10, 1600, frame(10), 0.0)
    drain(jb, 0.0)
    jb.push(13, 1600 + 3 * 160, frame(13), 0.06)          # 11 and 12 lost
    assert drain(jb, 0.099) == []
    deadline = jb.get_timer()
    assert deadline is not None and abs(deadline - 0.10) < 1e-9
    assert drain(jb, deadline) == [SIL, SIL, frame(13)]
    assert (jb.lost, jb.concealed_samples) == (2, 320)
    jb.push(11, 1760, frame(11), 0.2)                     # too late now
    assert drain(jb, 0.2) == []
    assert jb.late == 1


def test_concealment_follows_the_timestamp_gap_size() -> None:
    jb = JitterBuffer(depth_ms=20, adaptive=False)
    jb.push(1, 0, b"\x01" * 240, 0.0)                     # 30 ms packets
    drain(jb, 0.0)
    jb.push(3, 480, b"\x03" * 240, 0.06)
    assert drain(jb, 1.0) == [b"\xff" * 240, b"\x03" * 240]


def test_concealment_uses_the_codec_silence_byte() -> None:
    jb = JitterBuffer(silence_byte=0xD5, depth_ms=20)
    jb.push(1, 0, frame(1), 0)
    jb.push(3, 320, frame(3), 0)
    assert drain(jb, 1.0) == [frame(1), b"\xd5" * 160, frame(3)]


def test_duplicates_dropped_before_and_after_delivery() -> None:
    jb = JitterBuffer()
    jb.push(1, 0, frame(1), 0)
    jb.push(1, 0, frame(1), 0.001)                         # already delivered
    jb.push(3, 320, frame(3), 0.04)
    jb.push(3, 320, frame(3), 0.041)                       # held twice
    jb.push(2, 160, frame(2), 0.05)
    assert drain(jb, 0.05) == [frame(1), frame(2), frame(3)]
    assert jb.duplicates == 2


def test_sequence_and_timestamp_wrap_around() -> None:
    jb = JitterBuffer(depth_ms=40, adaptive=False)
    seqs = [(0xFFFD + i) & 0xFFFF for i in range(8)]
    tss = [(0xFFFFFF00 + 160 * i) & 0xFFFFFFFF for i in range(8)]
    order = [0, 1, 3, 2, 4, 6, 7]                          # 2/3 swapped across the wrap, 5 lost
    out: list[bytes] = []
    for k, i in enumerate(order):
        jb.push(seqs[i], tss[i], frame(i), k * 0.02)
        out += drain(jb, k * 0.02)
    out += drain(jb, 10.0)
    assert out == [frame(0), frame(1), frame(2), frame(3), frame(4), SIL, frame(6), frame(7)]
    assert (jb.lost, jb.late, jb.reordered, jb.resyncs) == (1, 0, 1, 0)


def test_large_sequence_jump_resyncs_instead_of_concealing() -> None:
    jb = JitterBuffer()
    jb.push(100, 0, frame(1), 0)
    jb.push(100 + 20000, 999999, frame(2), 0.02)
    assert drain(jb, 0.02) == [frame(1), frame(2)]
    assert (jb.lost, jb.resyncs) == (0, 1)
    jb.push(100 + 20001, 999999 + 160, frame(3), 0.04)
    assert drain(jb, 0.04) == [frame(3)]


def test_far_backwards_sequence_is_a_restart_not_a_late_packet() -> None:
    jb = JitterBuffer()
    jb.push(5000, 0, frame(1), 0)
    jb.push(5000 - 1000, 0, frame(2), 0.02)
    assert drain(jb, 0.02) == [frame(1), frame(2)]
    assert jb.resyncs == 1 and jb.late == 0


def test_empty_payload_slot_is_consumed_without_output_or_loss() -> None:
    jb = JitterBuffer()
    jb.push(1, 0, frame(1), 0)
    jb.push(2, 160, b"", 0.02)                             # e.g. a DTMF packet's slot
    jb.push(3, 320, frame(3), 0.04)
    assert drain(jb, 0.04) == [frame(1), frame(3)]
    assert jb.lost == 0


def test_wait_adapts_to_late_packets_and_decays() -> None:
    jb = JitterBuffer(depth_ms=20, min_depth_ms=20, max_depth_ms=60, step_ms=10,
                      decay_packets=10)
    seq, now = 0, 0.0
    jb.push(seq, 0, frame(0), now)
    for _ in range(5):                                     # five gaps, each filled too late
        jb.push(seq + 2, 0, frame(2), now)
        drain(jb, now + 1.0)
        jb.push(seq + 1, 0, frame(1), now + 1.0)
        seq, now = seq + 2, now + 2.0
    assert jb.late == 5
    assert abs(jb.wait - 0.060) < 1e-9                     # capped at max_depth_ms
    for _ in range(25):
        seq += 1
        jb.push(seq, 0, frame(3), now)
        drain(jb, now)
    assert abs(jb.wait - 0.040) < 1e-9                     # two decay steps


def test_held_overflow_releases_without_waiting() -> None:
    jb = JitterBuffer(max_held=3)
    jb.push(0, 0, frame(0), 0)
    for i in range(2, 6):
        jb.push(i, 160 * i, frame(i), 0)
    assert drain(jb, 0) == [frame(0), SIL, frame(2), frame(3), frame(4), frame(5)]


def test_reset_releases_held_packets_in_order() -> None:
    jb = JitterBuffer()
    jb.push(0, 0, frame(0), 0)
    jb.push(3, 480, frame(3), 0)
    jb.push(2, 320, frame(2), 0)
    jb.reset()
    jb.push(7000, 5, frame(9), 0.1)
    assert drain(jb, 0.1) == [frame(0), frame(2), frame(3), frame(9)]


def test_release_and_ready_give_what_pop_gives_and_holding_survives_reset() -> None:
    # The endpoint's hot path drains ``ready`` after one ``release`` instead of calling
    # ``pop``; both must see the same frames, and ``holding`` must keep aliasing the held
    # packets across a reset (the adapter reads it to decide whether to arm the timer).
    jb = JitterBuffer(depth_ms=40)
    holding = jb.holding
    jb.push(1, 0, frame(1), 0.00)
    assert list(jb.ready) == [frame(1)] and not holding
    jb.ready.popleft()
    jb.push(3, 320, frame(3), 0.02)             # 2 is missing: 3 is held
    jb.push(4, 480, frame(4), 0.03)
    jb.release(0.05)
    assert not jb.ready and len(holding) == 2
    jb.release(0.06)                            # the wait for 2 ran out at 0.06
    assert list(jb.ready) == [SIL, frame(3), frame(4)] and not holding
    jb.ready.clear()
    jb.push(10, 1440, frame(10), 0.07)          # gap again, then a new stream
    assert holding
    jb.reset()
    assert jb.holding is holding and not holding and list(jb.ready) == [frame(10)]
