"""bench sip's on-the-wire pacing figures: spacing variation, RFC 3550 jitter, tick offset."""

from __future__ import annotations

from bridge.bench.sip import wire_jitter


def test_constant_offsets_are_not_jitter_but_show_as_tick_offset() -> None:
    # Two streams on one 20 ms grid, the second always 3 ms into the tick.
    streams = {1: [(10.0 + 0.02 * n, 160 * n) for n in range(50)],
               2: [(10.003 + 0.02 * n, 1000 + 160 * n) for n in range(50)]}
    w = wire_jitter(streams, tick_gap_s=0.005)
    assert max(w.deviations) < 1e-6
    assert max(w.rfc3550) < 1e-6
    assert sorted(set(round(x, 6) for x in w.tick_offsets)) == [0.0, 3.0]
    # With the default burst gap (1 ms) they are two bursts: phase slots, not one tick.
    assert set(wire_jitter(streams).tick_offsets) == {0.0}


def test_alternating_spacing_is_jitter() -> None:
    times = [10.0 + 0.02 * n + (0.002 if n % 2 else 0.0) for n in range(200)]
    w = wire_jitter({1: [(t, 160 * n) for n, t in enumerate(times)]})
    assert all(abs(d - 2.0) < 1e-6 for d in w.deviations)
    assert 1.9 < w.rfc3550[0] <= 2.0 + 1e-9        # J converges on the mean |D|


def test_a_skipped_frame_is_not_rfc3550_jitter() -> None:
    pkts = [(10.0 + 0.02 * n, 160 * n) for n in range(20) if n != 7]
    w = wire_jitter({1: pkts})
    assert max(w.deviations) > 19.0                   # the receiver sees a 40 ms gap
    assert max(w.rfc3550) < 1e-6                       # ... with 40 ms of timestamps
