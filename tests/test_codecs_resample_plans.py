"""The FIR's frame plans: alternating chunk sizes reuse their plans (no rebuild per chunk)."""

from __future__ import annotations

import numpy as np

from bridge.codecs.resample import StreamResampler, outbound_resampler


def test_alternating_delta_sizes_keep_their_plans_and_output() -> None:
    rng = np.random.default_rng(3)
    sizes = [4800, 4800, 2400, 2400] * 20
    pcm = rng.integers(-8000, 8000, sum(sizes) // 2).astype("<i2").tobytes()

    def stream(fast: bool) -> tuple[bytes, StreamResampler]:
        r = outbound_resampler(8000)
        if not fast:
            r._fast = None
        out, i = [], 0
        for n in sizes:
            out.append(r.process(pcm[i:i + n]))
            i += n
        return b"".join(out), r

    got, r = stream(True)
    want, _ = stream(False)
    plans = r._engine._plans  # type: ignore[attr-defined]
    assert len(plans) == 2
    a = np.frombuffer(got, "<i2").astype(int)
    b = np.frombuffer(want, "<i2").astype(int)
    assert len(a) == len(b) and np.max(np.abs(a - b)) <= 1
