"""docker-compose.yml against the Compose Specification schema, and the image's hygiene.

No container engine here: the compose file is validated with ``jsonschema`` against the
specification's JSON schema (tests/vectors/compose/), and the Dockerfile is read as text.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = json.loads((ROOT / "tests/vectors/compose/compose_spec.json").read_text())
SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|CREDENTIAL", re.IGNORECASE)


def compose() -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert isinstance(data, dict)
    return data


def validate(data: dict[str, Any]) -> None:
    # The file names draft 2019-09 with a URL jsonschema does not recognise: say it plainly.
    cls = jsonschema.Draft201909Validator
    cls.check_schema(SCHEMA)
    cls(SCHEMA).validate(data)


def test_compose_file_follows_the_specification() -> None:
    validate(compose())


@pytest.mark.parametrize("breakage", [
    lambda d: d["services"]["bridge-1"].update(ports={"sip": 5060}),
    lambda d: d["services"]["bridge-2"].update(restart_policy="always"),
    lambda d: d.update(service={}),
])
def test_the_schema_catches_mistakes(breakage: Any) -> None:
    data = compose()
    breakage(data)
    with pytest.raises(jsonschema.ValidationError):
        validate(data)


def published(service: dict[str, Any]) -> set[str]:
    return {str(p) for p in service.get("ports", [])}


BRIDGES = ("bridge-1", "bridge-2")


def test_the_cluster_topology_is_all_there() -> None:
    services = compose()["services"]
    assert set(services) >= {"kamailio", *BRIDGES, "postgres", "prometheus", "emulator"}


def test_each_bridge_node_is_wired_to_the_emulator_postgres_and_its_own_ports() -> None:
    services = compose()["services"]
    emulator, postgres = services["emulator"], services["postgres"]
    ids, ranges, http = set(), set(), set()
    for name in BRIDGES:
        bridge = services[name]
        env = bridge["environment"]
        ports = published(bridge)
        low, high = env["VOICEBRIDGE_RTP_PORT_LOW"], env["VOICEBRIDGE_RTP_PORT_HIGH"]
        assert f"{low}-{high}:{low}-{high}/udp" in ports           # the RTP range, as configured
        ranges.add(range(int(low), int(high) + 1))
        assert env["VOICEBRIDGE_HTTP_PORT"] == "8080" and env["VOICEBRIDGE_SIP_PORT"] == "5060"
        http.update(p.split(":")[0] for p in ports if p.endswith(":8080/tcp"))
        assert not any(":5060/" in p for p in ports)               # SIP only through Kamailio
        ids.add(env["VOICEBRIDGE_CLUSTER_NODE_ID"])
        mounts = {v["target"]: v for v in bridge["volumes"] if isinstance(v, dict)}
        plans = mounts[env["VOICEBRIDGE_DIALPLANS_PATH"]]
        assert plans["read_only"] is True and (ROOT / plans["source"]).is_dir()
        assert any((ROOT / plans["source"]).glob("*.toml"))
        url = env["VOICEBRIDGE_REALTIME_EMULATOR_URL"]
        command = emulator["command"]
        assert url == f"ws://emulator:{command[command.index('--port') + 1]}"
        assert command[command.index("--host") + 1] == "0.0.0.0"
        assert {"emulator", "postgres"} <= set(bridge["depends_on"])
        pg = postgres["environment"]
        assert env["VOICEBRIDGE_RECORDS_URL"] == \
            f"postgresql://{pg['POSTGRES_USER']}@postgres/{pg['POSTGRES_DB']}"
        assert env["PGPASSWORD"] == pg["POSTGRES_PASSWORD"]
        # No default: the postgres image will not start with an empty password.
        assert ":?" in pg["POSTGRES_PASSWORD"], pg["POSTGRES_PASSWORD"]
        assert bridge["depends_on"]["postgres"]["condition"] == "service_healthy"
        assert postgres["healthcheck"]["test"][:2] == ["CMD", "pg_isready"]
    assert len(ids) == len(http) == len(BRIDGES)
    a, b = ranges
    assert not set(a) & set(b)                                    # RTP ranges apart


def test_kamailio_fronts_the_nodes_and_the_nodes_trust_only_it() -> None:
    from bridge.kamailio_list import parse_nodes  # noqa: PLC0415

    data = compose()
    services = data["services"]
    kamailio = services["kamailio"]
    assert {"5060:5060/udp", "5060:5060/tcp"} <= published(kamailio)
    context = ROOT / kamailio["build"]["context"]
    assert (context / "kamailio.cfg").is_file() and (context / "Dockerfile").is_file()
    address = kamailio["networks"]["voice"]["ipv4_address"]
    for name in BRIDGES:
        env = services[name]["environment"]
        assert env["VOICEBRIDGE_SIP_ALLOW_FROM"] == f"{address}/32"
        assert env["VOICEBRIDGE_SIP_TRUSTED_PROXIES"] == f"{address}/32"
    # The node list is generated from VOICEBRIDGE_NODES into the volume Kamailio reads.
    lister = services["nodes-list"]
    nodes = parse_nodes(lister["environment"]["VOICEBRIDGE_NODES"])
    assert {(n.node_id, n.host, n.port) for n in nodes} == {
        (services[b]["environment"]["VOICEBRIDGE_CLUSTER_NODE_ID"], b, 5060) for b in BRIDGES}
    out = lister["command"][lister["command"].index("--out") + 1]
    assert any(f'DISPATCHER_LIST="{out}"' in arg for arg in kamailio["command"])
    shared = {v["target"] for v in kamailio["volumes"]} & {v["target"] for v in lister["volumes"]}
    assert str(Path(out).parent) in shared
    assert kamailio["depends_on"]["nodes-list"]["condition"] == "service_completed_successfully"


def test_prometheus_scrapes_every_node() -> None:
    services = compose()["services"]
    prometheus = services["prometheus"]
    mount = next(v for v in prometheus["volumes"] if v["target"].endswith("prometheus.yml"))
    config = yaml.safe_load((ROOT / mount["source"]).read_text())
    targets = {t for job in config["scrape_configs"] if job.get("metrics_path", "/metrics")
               == "/metrics" for group in job["static_configs"] for t in group["targets"]}
    assert targets == {f"{b}:{services[b]['environment']['VOICEBRIDGE_HTTP_PORT']}"
                       for b in BRIDGES}


def test_no_secret_is_written_into_the_compose_file() -> None:
    for service in compose()["services"].values():
        for name, value in (service.get("environment") or {}).items():
            if SECRET_NAME.search(name):
                assert re.fullmatch(r"\$\{[A-Z0-9_]+(:-|:\?[^}$]*)?\}", str(value)), name


def dockerfile_stages() -> list[list[str]]:
    lines: list[str] = []
    pending = ""
    for raw in (ROOT / "Dockerfile").read_text().splitlines():
        if raw.lstrip().startswith("#") or not raw.strip():
            continue
        pending += raw.rstrip("\\").strip() + " "
        if not raw.rstrip().endswith("\\"):
            lines.append(pending.strip())
            pending = ""
    stages: list[list[str]] = []
    for line in lines:
        if line.upper().startswith("FROM "):
            stages.append([])
        if stages:
            stages[-1].append(line)
    return stages


def test_dockerfile_is_multi_stage_slim_and_non_root() -> None:
    stages = dockerfile_stages()
    assert len(stages) >= 2
    final = stages[-1]
    assert re.match(r"FROM python:\$\{PYTHON_VERSION\}-slim\b|FROM python:[\d.]+-slim\b",
                    final[0])
    users = [line.split()[1] for line in final if line.upper().startswith("USER ")]
    assert users and users[-1] not in ("root", "0")
    entry = next(i for i, line in enumerate(final) if line.upper().startswith("ENTRYPOINT"))
    assert max(i for i, line in enumerate(final) if line.upper().startswith("USER ")) < entry
    text = " ".join(final)
    for tool in ("build-essential", "gcc", "g++", "make ", "git ", "curl", "wget"):
        assert tool not in text, f"{tool} in the final image"
    # the final stage takes the built environment only, not the source tree
    copies = [line for line in final if line.upper().startswith("COPY")]
    assert copies and all("--from=" in line for line in copies)
    assert any(line.upper().startswith("HEALTHCHECK") for line in final)


def test_dockerfile_and_context_carry_no_secrets() -> None:
    for stage in dockerfile_stages():
        for line in stage:
            word = line.split()[0].upper()
            if word in ("ENV", "ARG"):
                for name in re.findall(r"([A-Za-z_][A-Za-z0-9_]*)=", line):
                    assert not SECRET_NAME.search(name), line
            if word in ("COPY", "ADD"):
                assert ".env" not in line and ".pem" not in line and ".key" not in line
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".git", ".env", "*.pem", "*.key", "tests", "var", "*.db"} <= ignored


def test_the_image_can_reach_the_records_url_compose_sets() -> None:
    """The nodes get a postgresql:// records URL: the image needs the postgres extra
    (without it a node refuses to start)."""
    assert compose()["services"]["bridge-1"]["environment"]["VOICEBRIDGE_RECORDS_URL"] \
        .startswith("postgresql://")
    build = " ".join(dockerfile_stages()[0])
    assert re.search(r"pip install '?\.\[postgres\]'?", build), build


def test_image_exposes_what_compose_publishes() -> None:
    final = dockerfile_stages()[-1]
    exposed = set(next(line for line in final if line.upper().startswith("EXPOSE")).split()[1:])
    assert {"8080/tcp", "5060/udp", "5060/tcp"} <= exposed
    assert any(re.fullmatch(r"\d+-\d+/udp", p) for p in exposed)
