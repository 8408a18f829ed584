"""``voicebridge bench call`` runs end to end and prints every figure it promises.

A tiny run (2 calls, a 1.5 s window, the emulator in another process): what is checked is
that each figure is there and well formed, not its value (figures are for the benchmark's
reader; this machine's load would make any threshold flaky).
"""

from __future__ import annotations

import pytest

from bridge.cli import main
from tests.test_realtime_bench import figure


def test_bench_call_prints_cpu_pacing_late_frames_memory_and_barge_in(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "call", "--calls", "2", "--seconds", "1.5", "--warmup", "0.3"]) == 0
    out = capsys.readouterr().out
    assert "2/2 calls connected" in out
    assert figure(out, r"calls\s+(\d+) concurrent") == 2
    assert figure(out, r"([\d.]+) ms CPU per call per second") > 0
    assert figure(out, r"pacing \|hand-off-grid\| p50 ([\d.]+) ms") >= 0
    assert figure(out, r"pacing .* p99 ([\d.]+) ms") >= 0
    assert figure(out, r"pacing .*\((\d+) frames\)") > 0
    assert figure(out, r"late frames\s+(\d+) late ticks") >= 0
    assert figure(out, r"memory\s+(-?\d+) KiB RSS per call") is not None
    assert figure(out, r"barge-ins\s+(\d+) in the window") >= 0
    assert figure(out, r"stopped at the leg: p50 ([\d.]+) ms") >= 0
