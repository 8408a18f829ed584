"""``voicebridge bench realtime`` runs end to end and prints its figures (a tiny run)."""

from __future__ import annotations

import pytest

from bridge.cli import main
from tests.support.bench_output import figure


def test_bench_realtime_prints_connect_append_and_receive_figures(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "realtime", "--connects", "2", "--frames", "50", "--turns", "1",
                 "--turn-ms", "600", "--in-process"]) == 0
    out = capsys.readouterr().out
    assert figure(out, r"connect -> session\.updated: median ([\d.]+) ms") > 0
    assert figure(out, r"append 20 ms frame: ([\d.]+) µs CPU in append_audio") > 0
    assert figure(out, r"\(50 frames, (\d+) dropped\)") == 0
    assert figure(out, r"receive: ([\d.]+) µs CPU per audio delta") > 0
    assert figure(out, r"\((\d+) deltas") >= 1   # the echo turn really came back
    assert figure(out, r"mapping alone .*: ([\d.]+) µs") > 0
