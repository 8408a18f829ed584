"""``voicebridge bench media --codec g722``: the wideband SIP path's figures (a tiny run)."""

from __future__ import annotations

import re

import pytest

from bridge.cli import main


def test_bench_media_g722_times_the_16khz_path_and_the_codec(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "media", "--codec", "g722", "--frames", "50", "--repeat", "1",
                 "--modes", "default"]) == 0
    out = capsys.readouterr().out
    assert "leg 16000 Hz (g722) <-> 24000 Hz" in out
    fir = next(line for line in out.splitlines() if line.startswith("fir "))
    inbound, outbound, total, _calls, lat_in, lat_out = (
        float(v) for v in re.findall(r"\d+(?:\.\d+)?", fir))
    assert inbound > 0 and outbound > 0 and total == pytest.approx(inbound + outbound, abs=0.11)
    assert lat_in < 2.0 and lat_out < 2.0              # 16 <-> 24 kHz: about 1 ms each
    found = re.search(r"g722 encode +(\d+\.\d) µs, decode +(\d+\.\d) µs", out)
    assert found is not None, out
    encode_us, decode_us = (float(v) for v in found.groups())
    assert 0 < encode_us < outbound and 0 < decode_us < inbound
    assert "quality at 16000 Hz" in out
