"""``voicebridge bench call`` runs end to end and prints every figure it promises.

A tiny run (2 calls, a 1.5 s window, the emulator in another process): what is checked is
that each figure is there and well formed, not its value (figures are for the benchmark's
reader; this machine's load would make any threshold flaky).
"""

from __future__ import annotations

import math
import os

import pytest

from bridge.bench import cpus
from bridge.cli import main
from tests.support.bench_output import figure


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
    assert figure(out, r"drift\s+(\d+) clock ticks") > 0
    assert figure(out, r"at the end minus at the start: max ([\d.]+) ms") >= 0
    assert figure(out, r"memory\s+(-?\d+) KiB RSS per call") is not None
    assert figure(out, r"barge-ins\s+(\d+) in the window") >= 0
    assert figure(out, r"stopped at the leg: p50 ([\d.]+) ms") >= 0


def test_bench_call_on_a_g711_session_feeds_the_carried_law_and_gets_replies(
        capsys: pytest.CaptureFixture[str]) -> None:
    """On a G.711 session the legs carry µ-law: the bench's callers must speak µ-law too,
    or the emulator hears noise-shaped bytes and no turn (it once measured nothing)."""
    assert main(["bench", "call", "--calls", "2", "--seconds", "6", "--warmup", "0.3",
                 "--audio-format", "g711"]) == 0
    out = capsys.readouterr().out
    assert "g711" in out and "2/2 calls connected" in out
    assert figure(out, r"turn latency\s+(\d+) replies") >= 2


def test_bench_call_pins_itself_and_the_emulator_and_restores_its_affinity(
        capsys: pytest.CaptureFixture[str]) -> None:
    before = os.sched_getaffinity(0)
    assert main(["bench", "call", "--calls", "1", "--seconds", "0.5", "--warmup", "0.2"]) == 0
    out = capsys.readouterr().out
    if len(before) >= 2:
        first = min(before)
        assert f"placement              bridge on CPU {first}, emulator on CPU" in out
    else:
        assert "placement              not pinned" in out
    assert "hypervisor steal on this process's CPUs" in out
    assert os.sched_getaffinity(0) == before          # the caller is not left pinned


def test_cpu_plan_and_steal_counter() -> None:
    assert cpus.plan("off") is None
    placement = cpus.plan("auto")
    mine = sorted(os.sched_getaffinity(0))
    if len(mine) >= 2:
        assert placement == ({mine[0]}, set(mine[1:]))
    else:
        assert placement is None
    stolen = cpus.stolen_s(None)
    assert math.isnan(stolen) or stolen >= 0.0


def test_bench_call_with_analysis_analyses_every_turn(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "call", "--calls", "2", "--seconds", "6", "--warmup", "0.3",
                 "--analysis"]) == 0
    out = capsys.readouterr().out
    replies = figure(out, r"turn latency\s+(\d+) replies")
    analysed = figure(out, r"analysis\s+(\d+) turns analysed")
    assert replies >= 2 and analysed >= 2, out
    assert figure(out, r"analysis .* ok (\d+)") == analysed
    assert figure(out, r"asked -> result p50 (\d+) ms") >= 0
