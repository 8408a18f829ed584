"""``voicebridge bench media`` runs and prints figures that hold up (a quick, tiny run)."""

from __future__ import annotations

import re

import pytest

from bridge.cli import main


def row(out: str, mode: str) -> list[float]:
    for line in out.splitlines():
        if line.startswith(mode + " "):
            return [float(v) for v in re.findall(r"-?\d+(?:\.\d+)?", line[len(mode):])]
    raise AssertionError(f"no row for {mode}:\n{out}")


def test_bench_media_prints_cpu_latency_and_quality_per_mode(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "media", "--frames", "50", "--repeat", "1",
                 "--modes", "default,soxr-hq"]) == 0
    out = capsys.readouterr().out
    cpu, quality = out.split("quality at")
    inbound, outbound, total, calls, lat_in, lat_out = row(cpu, "fir")
    assert inbound > 0 and outbound > 0
    assert total == pytest.approx(inbound + outbound, abs=0.11)
    assert calls == pytest.approx(20000 / total, rel=0.01)
    assert lat_in <= 10.0 and lat_out <= 10.0
    assert "(default)" in cpu.splitlines()[2]
    q_in, q_out, held, images, aliases, ripple = row(quality, "fir")
    assert q_in <= 10.0 and held < 20.0
    assert images <= -60.0 and aliases <= -60.0 and ripple <= 1.0
    assert row(quality, "soxr-hq")[0] > 20.0       # the stream preset withholds


def test_bench_media_refuses_unknown_modes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "media", "--frames", "10", "--modes", "best"]) == 2
    assert "unknown mode" in capsys.readouterr().out
