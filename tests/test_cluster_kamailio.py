"""A real Kamailio running the shipped ``deploy/kamailio/kamailio.cfg`` in front of two
real ``voicebridge serve`` nodes keeping their records in one real PostgreSQL, called by
SIPp (issue 12's "Must show"):

* 40 calls through Kamailio all succeed with the node's RTP back, sent straight from the
  node to the caller (Kamailio never sees media); each node takes at least a third; each
  call's ACKs, re-INVITEs (hold, resume), INFO key press and BYE from SIPp reach, through
  Kamailio, the node Kamailio sent its INVITE to, and the BYE ends that very call there;
  the 40 records are all in the one database, each with the id of the node that took it.

* a transfer (a key that sends the caller elsewhere): the node's REFER and BYE reach the
  caller, and the caller's NOTIFY reaches the node, all through Kamailio.

The drain and the kill -9 of a node are in ``test_cluster_failover.py``.
"""

from __future__ import annotations

import math
import re
import struct
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest

from bridge.bench.cluster import RoutedScenario
from bridge.bench.sip import PT_PCMU, Datagram, LoopbackCapture, free_udp_port
from bridge.codecs.g711 import ulaw_encode
from tests.support.cluster import Cluster, pg_rows
from tests.support.interop import require, require_binary
from tests.support.postgres import pg_url, postgres_server
from tests.support.waiting import until

__all__ = ["pg_url", "postgres_server"]   # fixtures, used by name

CALLS = 40
DIALPLANS = Path(__file__).parent / "data" / "cluster" / "dialplans"


def caller_audio(seconds: float = 2.0) -> bytes:
    """µ-law: half a second of a 300 Hz tone (speech-like energy), then silence."""
    rate = 8000
    tone = [int(6000 * math.sin(2 * math.pi * 300 * i / rate)) for i in range(rate // 2)]
    pcm = struct.pack(f"<{len(tone)}h", *tone) + bytes(2 * int(rate * (seconds - 0.5)))
    return ulaw_encode(pcm)


@pytest.mark.interop
async def test_forty_calls_through_kamailio_spread_over_two_nodes(tmp_path: Path,
                                                                   pg_url: str) -> None:
    sipp = require_binary("sipp", "callers through Kamailio")
    why = LoopbackCapture.unavailable()
    require(why is None, f"loopback capture of the nodes' RTP: {why}")
    audio = tmp_path / "caller.ulaw"
    audio.write_bytes(caller_audio())
    # Hold and resume (re-INVITEs) and a key press (INFO) in the middle.
    scenario = (RoutedScenario("through", service="agent").invite(r"m=audio [0-9]+ RTP/AVP 0")
                .rtp_stream(audio, loops=-1, payload_type=PT_PCMU).pause(1500)
                .reinvite("sendonly", r"a=recvonly").reinvite("sendrecv", r"a=sendrecv")
                .info("5").pause(1500).bye().write(tmp_path))
    media_port = free_udp_port(pair=True)
    with Cluster(tmp_path / "cluster", records_url=pg_url) as cluster:
        async with AsyncExitStack() as stack:
            capture = await stack.enter_async_context(
                LoopbackCapture(dst_ports=(media_port,), keep_payload=False))
            signalling = await stack.enter_async_context(
                LoopbackCapture(dst_ports=[n.sip_port for n in cluster.nodes]))
            run = await cluster.call(scenario, workdir=tmp_path, calls=CALLS,
                                     rate=10, limit=CALLS, media_port=media_port, limit_s=90,
                                     call_id_prefix="c", sipp=sipp)
        assert run.returncode == 0 and run.successful == CALLS and run.failed == 0, \
            run.explain()
        # Calls per node, from each node's own metrics (labelled with its node id).
        started = {n.node_id: n.metric("voicebridge_calls_started_total", source="sip",
                                       node=n.node_id) for n in cluster.nodes}
        assert sum(started.values()) == CALLS, started
        for n in cluster.nodes:                     # each node names itself in its logs
            log = n.log_path.read_text(errors="replace")
            assert re.search(rf"INFO +bridge\.sip\.ua: \[node {n.node_id}\] call ", log)
            assert n.metric("voicebridge_node_info", node=n.node_id) == 1
        assert all(count >= CALLS / 3 for count in started.values()), started
        # RTP back: one stream per call, each from a port of the node that took the call,
        # straight to SIPp (not through Kamailio), at least a second of packets each.
        streams: dict[int, int] = {}
        for d in capture.datagrams:
            streams[d.src[1]] = streams.get(d.src[1], 0) + 1
        per_node = {n.node_id: sorted(p for p in streams if n.owns_rtp(p))
                    for n in cluster.nodes}
        assert sum(len(p) for p in per_node.values()) == len(streams) == CALLS, streams
        assert {k: len(v) for k, v in per_node.items()} == started, (per_node, started)
        assert min(streams.values()) >= 50, streams
        # In-dialog requests reached the owner: each node got, from Kamailio, the ACKs,
        # the re-INVITEs, the INFO and the BYE of exactly the calls whose INVITE Kamailio
        # sent it; every call's record is in the shared PostgreSQL with that node's id,
        # with the key, ended by the caller.
        routed = cluster.routed()
        rows = await _ended_rows(pg_url, CALLS)
        by_node = {n.node_id: {r["record"]["leg_call_id"] for r in rows
                               if r["node_id"] == n.node_id} for n in cluster.nodes}
        assert sum(len(v) for v in by_node.values()) == CALLS, by_node   # no other node id
        assert all(len(v) >= CALLS / 3 for v in by_node.values()), by_node
        for node in cluster.nodes:
            mine = {cid for cid, owner in routed.items() if owner == node.node_id}
            assert len(mine) == started[node.node_id]
            for method in ("ACK", "BYE", "INVITE", "INFO"):
                got = _requests(signalling.between(dst_port=node.sip_port), method)
                assert {cid for cid, _src in got} == mine, (node.node_id, method)
                assert {src for _cid, src in got} == {cluster.sip_port}   # via Kamailio
            assert by_node[node.node_id] == mine, node.node_id
        assert {(r["state"], r["end_reason"]) for r in rows} == {("ended", "caller_hangup")}
        assert all(r["record"]["node"] == r["node_id"] for r in rows), rows
        assert all([d["digit"] for d in r["record"]["dtmf"]] == ["5"] for r in rows), rows
        print(f"40 calls through Kamailio: per node {started}; RTP streams per node "
              f"{ {k: len(v) for k, v in per_node.items()} }, fewest packets in a stream "
              f"{min(streams.values())}; records in PostgreSQL per node "
              f"{ {k: len(v) for k, v in by_node.items()} }")


def _requests(datagrams: list[Datagram], method: str) -> set[tuple[str, int]]:
    """(Call-ID, source port) of each ``method`` request among ``datagrams``; for INVITE
    only re-INVITEs (with a To tag)."""
    out = set()
    for d in datagrams:
        text = d.payload.decode("utf-8", "replace")
        call_id = re.search(r"^(?:Call-ID|i):\s*(\S+)", text, re.MULTILINE | re.IGNORECASE)
        to = re.search(r"^(?:To|t):(.*)$", text, re.MULTILINE | re.IGNORECASE)
        if method == "INVITE" and (to is None or ";tag=" not in to.group(1)):
            continue
        if text.startswith(f"{method} ") and call_id:
            out.add((call_id.group(1), d.src[1]))
    return out


async def _ended_rows(url: str, count: int) -> list[dict[str, Any]]:
    """The ``count`` rows of ``calls`` once all are written and ended (write-behind)."""
    await until(lambda: len(pg_rows(url, "ended_at IS NOT NULL")) == count, 30, poll_s=0.2,
                what=lambda: f"{count} ended records in PostgreSQL: {len(pg_rows(url))} rows")
    rows = pg_rows(url)
    assert len(rows) == count, rows
    return rows


@pytest.mark.interop
async def test_a_transfer_goes_through_kamailio_both_ways(tmp_path: Path,
                                                          pg_url: str) -> None:
    """Key 0 transfers the caller: the node's REFER reaches SIPp through Kamailio, SIPp's
    NOTIFY (the transfer's outcome) reaches the node through Kamailio, and the node ends
    the call with its BYE, through Kamailio too."""
    sipp = require_binary("sipp", "callers through Kamailio")
    scenario = (RoutedScenario("transfer", service="agent").invite().pause(500).info("0")
                .transferred().wait_bye().write(tmp_path))
    local = free_udp_port()
    with Cluster(tmp_path / "cluster", n=2, env={"VOICEBRIDGE_DIALPLANS_PATH": str(DIALPLANS)},
                 records_url=pg_url) as cluster:
        async with LoopbackCapture(dst_ports=(local, *[n.sip_port for n in cluster.nodes])
                                   ) as capture:
            run = await cluster.call(scenario, workdir=tmp_path, local_port=local,
                                     limit_s=60, call_id_prefix="xfer", sipp=sipp)
        assert run.returncode == 0 and run.successful == 1, run.explain()
        owner = next(n for n in cluster.nodes if n.node_id == cluster.routed()["xfer-1@127.0.0.1"])
        (row,) = await _ended_rows(pg_url, 1)
    to_caller = {d.payload.split(b" ", 1)[0]: d.src[1] for d in capture.between(dst_port=local)
                 if not d.payload.startswith(b"SIP/2.0")}
    assert to_caller == {b"REFER": cluster.sip_port, b"BYE": cluster.sip_port}, to_caller
    notify = _requests(capture.between(dst_port=owner.sip_port), "NOTIFY")
    assert notify == {("xfer-1@127.0.0.1", cluster.sip_port)}
    assert (row["node_id"], row["end_reason"]) == (owner.node_id, "transferred"), row
