"""``voicebridge bench sip --srtp`` runs both rounds (plain RTP, then SRTP) against a real
serve and prints the bridge's CPU per call for each, with every call up, every packet
unprotected by the callers and no SRTP drop on the bridge (a tiny run)."""

from __future__ import annotations

import pytest

from bridge.cli import main
from tests.support.bench_output import figure


def test_bench_sip_srtp_reports_cpu_per_call_plain_and_srtp(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "sip", "--srtp", "--calls", "2", "--seconds", "2",
                 "--pin", "off"]) == 0
    out = capsys.readouterr().out
    for label in ("plain", "srtp"):
        line = next(li for li in out.splitlines() if li.strip().startswith(label + ":"))
        assert "2/2 calls up" in line and "could not unprotect 0" in line, out
        assert figure(line, r"([\d.]+) % per call") > 0
        assert figure(line, r"sent ([\d.]+) and") > 30, out
        assert figure(line, r"received ([\d.]+) packets/s") > 30, out   # the echo, 50/s
        assert "bridge SRTP drops 0" in line
    assert figure(out, r"SRTP costs the bridge ([-+][\d.]+) %") > -100
