"""``voicebridge bench path`` runs one real SIP call and prints the functions per frame.

Values are the benchmark's business; what is checked is that the figures are there and
that they see what they claim to: with a G.711 session the frame's path holds no G.711
decode or encode (passthrough), with a PCM16 session it does.
"""

from __future__ import annotations

import pytest

from bridge.cli import main
from tests.support.bench_output import figure
from tests.support.interop import require_binary


def run(capsys: pytest.CaptureFixture[str], fmt: str) -> str:
    require_binary("sipp", "the call bench path measures")
    assert main(["bench", "path", "--seconds", "1", "--format", fmt, "--show"]) == 0
    return capsys.readouterr().out


@pytest.mark.interop
def test_bench_path_counts_the_functions_and_sees_passthrough(
        capsys: pytest.CaptureFixture[str]) -> None:
    pcm = run(capsys, "pcm16")
    assert figure(pcm, r"inbound frame\s+python functions\s+(\d+)") > 5
    assert figure(pcm, r"outbound frame\s+python functions\s+(\d+)") > 5
    assert figure(pcm, r"frames seen: (\d+) in") >= 25          # 1 s of 20 ms frames
    inbound_pcm = pcm.split("-- inbound datagram:")[1].split("\n")[0]
    assert "ulaw_decode" in inbound_pcm
    g711 = run(capsys, "g711")
    inbound = g711.split("-- inbound datagram:")[1].split("\n")[0]
    outbound = g711.split("-- outbound tick:")[1].split("\n")[0]
    assert "InboundAudio.on_frame" in inbound and "RealtimeClient.append_audio" in inbound
    assert "ulaw" not in inbound and "ulaw" not in outbound        # nothing transcoded
    assert figure(g711, r"inbound frame\s+python functions\s+(\d+)") < figure(
        pcm, r"inbound frame\s+python functions\s+(\d+)")
