"""Two ``voicebridge serve`` nodes sharing one PostgreSQL: one view of the cluster.

Each node is a real subprocess with its own node id, SIP and HTTP ports, and the same
``[records] url``; SIPp calls each node directly. Here: the call API of either node lists
both nodes' calls and relays a hang-up (and refuses what it must), and a node restarted
with its id closes what it left open. The dashboard's cross-node hang-up (Chromium) and
the marking of a killed node's calls as lost run with Kamailio in front, in
``test_cluster_failover.py``. Heartbeats are 1 s and a node is lost after 6 s, so the
tests do not wait long; every wait is a bounded poll.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from bridge.bench.sip import Scenario, ServeProcess, SippRun, run_sipp
from tests.support.cluster import hang_up, live_and_recent, shared_records
from tests.support.interop import require_binary
from tests.support.postgres import pg_url, postgres_server, records_by_leg
from tests.support.waiting import until

__all__ = ["pg_url", "postgres_server"]   # fixtures, used by name

DIALPLANS = Path(__file__).parent / "data" / "interop" / "dialplans"


def _node(folder: Path, url: str, node_id: str) -> ServeProcess:
    return ServeProcess(folder / node_id, dialplans=DIALPLANS, records=False, env={
        **shared_records(url), "VOICEBRIDGE_CLUSTER_NODE_ID": node_id})


@pytest.fixture
def nodes(tmp_path: Path, pg_url: str) -> Iterator[tuple[ServeProcess, ServeProcess]]:
    require_binary("sipp", "the callers")
    a, b = _node(tmp_path, pg_url, "node-a"), _node(tmp_path, pg_url, "node-b")
    try:
        a.start()
        b.start()
        yield a, b
    finally:
        a.stop()
        b.stop()


def _caller(tmp_path: Path, node: ServeProcess, leg: str,
            wait_bye_ms: int = 40000) -> asyncio.Task[SippRun]:
    """SIPp calling ``node`` and staying on until the bridge sends BYE."""
    scenario = Scenario(f"wait-{leg}", service="echo").invite().wait_bye(wait_bye_ms)
    return asyncio.create_task(run_sipp(scenario.write(tmp_path), node.sip_port,
                                        workdir=tmp_path, call_id_prefix=leg,
                                        limit_s=wait_bye_ms / 1000 + 10))


def _live_by_node(node: ServeProcess) -> dict[str, str]:
    """node id -> call id of the live calls ``node`` lists."""
    return {c["node"]: c["call_id"] for c in live_and_recent(node)["live"]}


@pytest.mark.interop
@pytest.mark.slow
async def test_either_node_lists_both_and_a_hang_up_reaches_the_owner(
        tmp_path: Path, nodes: tuple[ServeProcess, ServeProcess], pg_url: str) -> None:
    a, b = nodes
    tag = uuid.uuid4().hex[:6]
    on_a, on_b = _caller(tmp_path, a, f"a-{tag}"), _caller(tmp_path, b, f"b-{tag}")
    try:
        for node in (a, b):
            await until(lambda n=node: set(_live_by_node(n)) == {"node-a", "node-b"}, 30,
                        poll_s=0.3, what=lambda n=node: f"both calls on {n.http_url}: "
                        f"{live_and_recent(n)['live']}")
        b_call = _live_by_node(a)["node-b"]
        assert _live_by_node(b)["node-b"] == b_call
        status, body = a.get(f"/calls/{b_call}?format=json", token=True)
        assert status == 200
        assert (json.loads(body)["node"], json.loads(body)["live"]) == ("node-b", True)
        # Node A's API hangs up node B's call: B's caller gets the BYE.
        status, reply = hang_up(a, b_call)
        assert (status, reply.get("node")) == (202, "node-b"), reply
        run_b = await asyncio.wait_for(on_b, 30)
        assert run_b.successful == 1 and run_b.failed == 0, run_b.explain()
        assert not on_a.done()                    # A's own call goes on
        await until(lambda: set(_live_by_node(a)) == {"node-a"}, 15, poll_s=0.3,
                    what="B's call to leave A's live list")
        # B's record, in the shared database, says the operator ended it on node B.
        await until(lambda: (records_by_leg(pg_url, f"b-{tag}-1@127.0.0.1") or [{}])[0]
                    .get("ended_at"), 15, poll_s=0.3, what="B's finished record")
        (row,) = records_by_leg(pg_url, f"b-{tag}-1@127.0.0.1")
        assert (row["node_id"], row["end_reason"]) == ("node-b", "operator")
        recent = {c["call_id"]: c for c in live_and_recent(a)["recent"]}
        assert recent[b_call]["node"] == "node-b"
        assert recent[b_call]["end_reason"] == "operator"
        # A hang-up of a call nobody has is refused, by either node.
        assert hang_up(a, "no-such-call")[0] == 404
        assert hang_up(a, b_call)[0] == 404      # ended: nothing to hang up
        # A's own call, from A: the local path.
        a_call = _live_by_node(a)["node-a"]
        assert hang_up(a, a_call)[0] == 202
        run_a = await asyncio.wait_for(on_a, 30)
        assert run_a.successful == 1, run_a.explain()
    finally:
        for task in (on_a, on_b):
            if not task.done():
                task.cancel()


@pytest.mark.interop
@pytest.mark.slow
async def test_a_node_restarted_with_its_id_closes_what_it_left_open(
        tmp_path: Path, pg_url: str) -> None:
    """kill -9, then the same node id starts again before anyone took it for lost: the
    new run closes its old run's open records (``crashed``) and its stale live calls go."""
    require_binary("sipp", "the caller")
    leg = f"restart-{uuid.uuid4().hex[:6]}"
    node = _node(tmp_path / "first", pg_url, "solo")
    node.start()
    caller = _caller(tmp_path, node, leg, wait_bye_ms=10000)
    try:
        await until(lambda: "solo" in _live_by_node(node), 30, poll_s=0.3,
                    what="the call listed")
        assert node.proc is not None
        node.proc.kill()
        node.proc.wait(10)
    finally:
        node.stop()
    again = _node(tmp_path / "second", pg_url, "solo")
    try:
        again.start()
        (row,) = records_by_leg(pg_url, f"{leg}-1@127.0.0.1")
        assert (row["state"], row["end_reason"]) == ("crashed", "crashed")
        assert live_and_recent(again)["live"] == []
        assert again.metric("voicebridge_cluster_calls_lost_total") == 0
    finally:
        again.stop()
        caller.cancel()                           # it waits for a BYE nobody will send
        await asyncio.gather(caller, return_exceptions=True)
