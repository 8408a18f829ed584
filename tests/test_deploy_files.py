"""The deployment files beside the compose file: Kamailio's node list command and the
systemd template unit for one node per core."""

from __future__ import annotations

import configparser
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bridge.bench.sip import clean_env
from bridge.errors import ConfigError
from bridge.kamailio_list import parse_nodes, render

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "deploy" / "systemd" / "voicebridge@.service"


def test_node_list_from_the_environment(tmp_path: Path) -> None:
    out = tmp_path / "dispatcher.list"
    out.write_text("stale\n")
    subprocess.run([sys.executable, "-m", "bridge", "kamailio-list", "--out", str(out)],
                   env=clean_env({"VOICEBRIDGE_NODES": "a=10.0.0.1:5060, 10.0.0.2:5062"}),
                   check=True, timeout=60)
    lines = [x for x in out.read_text().splitlines() if not x.startswith("#")]
    assert lines == ["1 sip:10.0.0.1:5060 0 0 duid=a;node=a",
                     "1 sip:10.0.0.2:5062 0 0 duid=node2;node=node2"]
    assert not (tmp_path / "dispatcher.list.tmp").exists()


@pytest.mark.parametrize("spec", ["", "10.0.0.1", "a=10.0.0.1:0", "a=h:5060,a=g:5060",
                                  "a b=10.0.0.1:5060", "x=bad host:5060", "a;b=h:1"])
def test_node_list_refuses_what_kamailio_would_misread(spec: str) -> None:
    with pytest.raises(ConfigError):
        parse_nodes(spec)


def test_ipv6_and_names() -> None:
    text = render(parse_nodes("v6=[2001:db8::1]:5060,bridge-2:5070"))
    assert "sip:[2001:db8::1]:5060" in text and "sip:bridge-2:5070" in text


def _instance_env(n: int) -> dict[str, str]:
    """What instance ``n`` of the unit would start ``voicebridge serve`` with."""
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read_string(UNIT.read_text())
    command = unit["Service"]["ExecStart"].replace("\\\n", " ")
    script = re.fullmatch(r"/bin/sh -c '(.*)'", command.strip(), re.DOTALL)
    assert script is not None, command
    body = script.group(1).replace("%i", str(n)).replace("$$", "$")
    body = re.sub(r"taskset -c (.+?) /opt/voicebridge/bin/voicebridge serve$",
                  r"CPU=\1 printenv", body.strip())
    run = subprocess.run(["sh", "-c", body], capture_output=True, text=True, check=True)
    return dict(line.split("=", 1) for line in run.stdout.splitlines() if "=" in line)


def test_systemd_instances_get_ports_cpus_and_ids_of_their_own() -> None:
    envs = [_instance_env(n) for n in range(1, 9)]
    for key in ("VOICEBRIDGE_SIP_PORT", "VOICEBRIDGE_HTTP_PORT", "VOICEBRIDGE_CLUSTER_NODE_ID",
                "CPU"):
        assert len({e[key] for e in envs}) == 8, key
    ranges = [range(int(e["VOICEBRIDGE_RTP_PORT_LOW"]), int(e["VOICEBRIDGE_RTP_PORT_HIGH"]) + 1)
              for e in envs]
    assert all(len(r) == 1000 for r in ranges)
    assert all(a.stop <= b.start for a, b in zip(ranges, ranges[1:], strict=False))
    assert envs[0]["VOICEBRIDGE_SIP_PORT"] == "5061" and envs[0]["CPU"] == "0"
    assert "5060" not in {e["VOICEBRIDGE_SIP_PORT"] for e in envs}      # Kamailio's
