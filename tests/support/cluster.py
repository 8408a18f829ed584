"""A cluster on loopback: the shipped Kamailio configuration in front of N real
``voicebridge serve`` nodes, for the tests that need one.

:class:`Cluster` starts the nodes first (each binds free ports and has its own node id,
RTP range, records and log), writes Kamailio's dispatcher list with
``voicebridge kamailio-list`` from their addresses, then runs ``deploy/kamailio/kamailio.cfg``
as shipped, with only its documented ``-A`` settings (listen address, list file, probe
interval, module folder); :meth:`Cluster.call` runs SIPp through it. ``env`` goes to
every node and ``node_env`` to one node each. With ``records_url`` (a PostgreSQL
database, ``tests/support/postgres.py``) every node keeps its records and the cluster's
live state there, as a deployed cluster does, with a 1 s heartbeat and a node lost after
:data:`LOST_AFTER_S`; :meth:`Node.records` then reads that node's rows from the shared
database. On a failure inside ``with Cluster(...)`` the Kamailio log and every node's log
tail are printed; everything is stopped at the end.

Node metrics carry ``node="<id>"`` (``[cluster] node_id``); :meth:`Node.metric` reads a
sample by name and label subset, whatever other labels it has.
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from bridge.bench.sip import ServeProcess, SippRun, clean_env, free_rtp_range, run_sipp
from tests.support.kamailio import Kamailio, free_port, module_dir

ROOT = Path(__file__).resolve().parents[2]
KAMAILIO_CFG = ROOT / "deploy" / "kamailio" / "kamailio.cfg"
_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$')
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')

#: What every node gets: UDP only (the dispatcher's transport), the proxy trusted for
#: the per-source limits (all of the tests' callers come through it), room for bursts.
NODE_DEFAULTS = {
    "VOICEBRIDGE_SIP_TRANSPORTS": "udp",
    "VOICEBRIDGE_SIP_TRUSTED_PROXIES": "127.0.0.1/32",
    "VOICEBRIDGE_SIP_INVITE_RATE_PER_SOURCE": "0",
    "VOICEBRIDGE_SIP_MAX_UNACKED": "100",
    "VOICEBRIDGE_SIP_MAX_UNACKED_PER_SOURCE": "100",
}
#: With a shared database: heartbeats every second, a node silent this long is lost.
LOST_AFTER_S = 6


def shared_records(url: str) -> dict[str, str]:
    """The settings of a node keeping its records in the PostgreSQL at ``url``."""
    return {"VOICEBRIDGE_RECORDS_URL": url, "VOICEBRIDGE_CLUSTER_HEARTBEAT_S": "1",
            "VOICEBRIDGE_CLUSTER_LOST_AFTER_S": str(LOST_AFTER_S)}


def pg_rows(url: str, where: str = "TRUE", params: Sequence[object] = ()
            ) -> list[dict[str, Any]]:
    """Rows of ``calls`` (columns, and ``record`` decoded) read straight from PostgreSQL."""
    import psycopg  # noqa: PLC0415
    from psycopg.rows import dict_row  # noqa: PLC0415

    with psycopg.connect(url, connect_timeout=5, row_factory=dict_row) as conn:
        cur = conn.execute("SELECT call_id, node_id, state, end_reason, ended_at, record "
                           f"FROM calls WHERE {where} ORDER BY started_at DESC", params)
        rows = [dict(row) for row in cur.fetchall()]
    for row in rows:
        if isinstance(row["record"], str):
            row["record"] = json.loads(row["record"])
    return rows


def live_and_recent(node: ServeProcess) -> dict[str, Any]:
    """``GET /calls`` of ``node`` (with the operator's token): ``live`` and ``recent``."""
    status, body = node.get("/calls", token=True)
    assert status == 200, body
    return dict(json.loads(body))


def hang_up(node: ServeProcess, call_id: str) -> tuple[int, dict[str, Any]]:
    """``POST /calls/<id>/hangup`` on ``node`` with the operator's token: status, reply."""
    request = urllib.request.Request(f"{node.http_url}/calls/{call_id}/hangup", method="POST",
                                     headers={"Authorization": f"Bearer {node.TOKEN}"})
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return int(reply.status), dict(json.loads(reply.read()))
    except urllib.error.HTTPError as exc:
        return int(exc.code), dict(json.loads(exc.read()))


class Node(ServeProcess):
    """One bridge node: a ``voicebridge serve`` with a node id."""

    def __init__(self, workdir: Path, node_id: str, env: Mapping[str, str], *,
                 records: bool = True, records_url: str | None = None) -> None:
        self.node_id = node_id
        self.records_url = records_url
        shared = shared_records(records_url) if records_url else {}
        super().__init__(workdir, env={**NODE_DEFAULTS, **shared, **env,
                                       "VOICEBRIDGE_CLUSTER_NODE_ID": node_id},
                         rtp_ports=free_rtp_range(200),
                         records=records and records_url is None)

    def records(self) -> list[dict[str, Any]]:
        """This node's call records: from the shared PostgreSQL (the rows whose
        ``node_id`` is this node's) when the cluster has one, else its own SQLite."""
        if self.records_url is None:
            return super().records()
        return [row["record"] for row in pg_rows(self.records_url, "node_id = %s",
                                                 (self.node_id,))]

    def samples(self, name: str) -> list[tuple[dict[str, str], float]]:
        """Every sample called ``name``: its labels and value."""
        _status, body = self.get("/metrics")
        out = []
        for line in body.decode().splitlines():
            m = _SAMPLE.match(line)
            if m and m.group(1) == name:
                out.append((dict(_LABEL.findall(m.group(2) or "")), float(m.group(3))))
        return out

    def metric(self, name: str, labels: str = "", **want: str) -> float:
        """The sum of ``name``'s samples whose labels include ``want`` (``labels`` in the
        exposition's own spelling, ``reason="x"``, is accepted too)."""
        want = {**dict(_LABEL.findall(labels)), **want}
        return sum(v for lab, v in self.samples(name)
                   if all(lab.get(k) == x for k, x in want.items()))

    def owns_rtp(self, port: int) -> bool:
        return self.rtp_ports[0] <= port <= self.rtp_ports[1]


class Cluster:
    """Kamailio (the shipped configuration) in front of ``n`` bridge nodes."""

    def __init__(self, folder: Path, n: int = 2, *, env: Mapping[str, str] | None = None,
                 node_env: Sequence[Mapping[str, str]] = (), ping_interval_s: int = 1,
                 records: bool = True, records_url: str | None = None) -> None:
        self.folder = Path(folder)
        self.records_url = records_url
        self.nodes = [Node(self.folder / f"node{i + 1}", f"node{i + 1}",
                           {**(env or {}), **(node_env[i] if i < len(node_env) else {})},
                           records=records, records_url=records_url) for i in range(n)]
        self.ping_interval_s = ping_interval_s
        self.sip_port = 0
        self.kamailio: Kamailio | None = None
        self.list_path = self.folder / "kamailio" / "dispatcher.list"

    def start(self) -> Cluster:
        for node in self.nodes:
            node.start()
        self.list_path.parent.mkdir(parents=True, exist_ok=True)
        spec = ",".join(f"{node.node_id}=127.0.0.1:{node.sip_port}" for node in self.nodes)
        subprocess.run([sys.executable, "-m", "bridge", "kamailio-list", "--out",
                        str(self.list_path)], env=clean_env({"VOICEBRIDGE_NODES": spec}),
                       check=True, capture_output=True, timeout=60)
        self.sip_port = free_port()
        listen = f"127.0.0.1:{self.sip_port}"
        self.kamailio = Kamailio(self.folder / "kamailio", KAMAILIO_CFG.read_text(), defines=(
            f"LISTEN_UDP=udp:{listen}", f"LISTEN_TCP=tcp:{listen}",
            f'DISPATCHER_LIST="{self.list_path}"',
            f'CTL_SOCKET="tcp:127.0.0.1:{free_port()}"', f"DS_PING_INTERVAL={self.ping_interval_s}",
            f'MPATH="{module_dir()}/"'))
        self.kamailio.start(wait_port=("127.0.0.1", self.sip_port))
        return self

    async def call(self, scenario: Path, **sipp: Any) -> SippRun:
        """SIPp calling through Kamailio (``run_sipp``'s arguments): a ``180`` Kamailio
        relays after its ``200`` is no failure (its workers run in parallel), any other
        unexpected message still is."""
        return await run_sipp(scenario, self.sip_port, late_provisional_ok=True, **sipp)

    def owner(self, rtp_port: int) -> Node | None:
        return next((n for n in self.nodes if n.owns_rtp(rtp_port)), None)

    def tries(self) -> list[tuple[str, str]]:
        """(Call-ID, node id) of each INVITE Kamailio sent to a node, first tries and
        failovers, in order (from its log)."""
        ports = {str(node.sip_port): node.node_id for node in self.nodes}
        assert self.kamailio is not None
        return [(m.group(1), ports.get(m.group(2), m.group(2))) for m in re.finditer(
            r"INVITE (\S+?):? (?:->|failed over to) sip:127\.0\.0\.1:(\d+)",
            self.kamailio.log_path.read_text(errors="replace"))]

    def routed(self) -> dict[str, str]:
        """Call-ID -> the node id Kamailio last sent its INVITE to."""
        return dict(self.tries())

    def dump(self) -> None:
        if self.kamailio is not None:
            print(f"--- kamailio log ({self.kamailio.log_path}) ---\n"
                  f"{self.kamailio.log_tail(6000)}")
        for node in self.nodes:
            print(f"=== {node.node_id} ===\n{node.log_tail(60)}")

    def stop(self) -> None:
        if self.kamailio is not None:
            self.kamailio.stop()
        for node in self.nodes:
            with contextlib.suppress(Exception):
                node.stop()

    def __enter__(self) -> Cluster:
        try:
            return self.start()
        except BaseException:
            self.dump()
            self.stop()
            raise

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc is not None:
            self.dump()
        self.stop()


__all__ = ["KAMAILIO_CFG", "LOST_AFTER_S", "NODE_DEFAULTS", "Cluster", "Node", "hang_up",
           "live_and_recent", "pg_rows", "shared_records"]
