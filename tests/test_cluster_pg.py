"""Two ``voicebridge serve`` nodes sharing one PostgreSQL: one view of the cluster.

Each node is a real subprocess with its own node id, SIP and HTTP ports, and the same
``[records] url``; SIPp calls each node directly (the SIP load balancer in front is
another test's business). Heartbeats are 1 s and a node is lost after 6 s, so the tests
do not wait long; every wait is a bounded poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import async_playwright

from bridge.bench.sip import Scenario, ServeProcess, SippRun, run_sipp
from tests.support.interop import require_binary
from tests.support.postgres import pg_url, postgres_server, records_by_leg
from tests.support.waiting import until

__all__ = ["pg_url", "postgres_server"]   # fixtures, used by name

DIALPLANS = Path(__file__).parent / "data" / "interop" / "dialplans"
LOST_AFTER_S = 6


def _node(folder: Path, url: str, node_id: str) -> ServeProcess:
    return ServeProcess(folder / node_id, dialplans=DIALPLANS, records=False, env={
        "VOICEBRIDGE_RECORDS_URL": url, "VOICEBRIDGE_CLUSTER_NODE_ID": node_id,
        "VOICEBRIDGE_CLUSTER_HEARTBEAT_S": "1",
        "VOICEBRIDGE_CLUSTER_LOST_AFTER_S": str(LOST_AFTER_S)})


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


def _calls(node: ServeProcess) -> dict[str, Any]:
    status, body = node.get("/calls", token=True)
    assert status == 200, body
    return dict(json.loads(body))


def _hang_up(node: ServeProcess, call_id: str) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(f"{node.http_url}/calls/{call_id}/hangup", method="POST",
                                     headers={"Authorization": f"Bearer {node.TOKEN}"})
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return int(reply.status), dict(json.loads(reply.read()))
    except urllib.error.HTTPError as exc:
        return int(exc.code), dict(json.loads(exc.read()))


def _caller(tmp_path: Path, node: ServeProcess, leg: str,
            wait_bye_ms: int = 40000) -> asyncio.Task[SippRun]:
    """SIPp calling ``node`` and staying on until the bridge sends BYE."""
    scenario = Scenario(f"wait-{leg}", service="echo").invite().wait_bye(wait_bye_ms)
    return asyncio.create_task(run_sipp(scenario.write(tmp_path), node.sip_port,
                                        workdir=tmp_path, call_id_prefix=leg,
                                        limit_s=wait_bye_ms / 1000 + 10))


def _live_by_node(node: ServeProcess) -> dict[str, str]:
    """node id -> call id of the live calls ``node`` lists."""
    return {c["node"]: c["call_id"] for c in _calls(node)["live"]}


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
                        f"{_calls(n)['live']}")
        b_call = _live_by_node(a)["node-b"]
        assert _live_by_node(b)["node-b"] == b_call
        status, body = a.get(f"/calls/{b_call}?format=json", token=True)
        assert status == 200
        assert (json.loads(body)["node"], json.loads(body)["live"]) == ("node-b", True)
        # Node A's API hangs up node B's call: B's caller gets the BYE.
        status, reply = _hang_up(a, b_call)
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
        recent = {c["call_id"]: c for c in _calls(a)["recent"]}
        assert recent[b_call]["node"] == "node-b"
        assert recent[b_call]["end_reason"] == "operator"
        # A hang-up of a call nobody has is refused, by either node.
        assert _hang_up(a, "no-such-call")[0] == 404
        assert _hang_up(a, b_call)[0] == 404      # ended: nothing to hang up
        # A's own call, from A: the local path.
        a_call = _live_by_node(a)["node-a"]
        assert _hang_up(a, a_call)[0] == 202
        run_a = await asyncio.wait_for(on_a, 30)
        assert run_a.successful == 1, run_a.explain()
    finally:
        for task in (on_a, on_b):
            if not task.done():
                task.cancel()


@pytest.mark.interop
@pytest.mark.slow
async def test_a_node_killed_has_its_calls_marked_lost_by_the_other(
        tmp_path: Path, nodes: tuple[ServeProcess, ServeProcess], pg_url: str) -> None:
    a, b = nodes
    leg = f"killed-{uuid.uuid4().hex[:6]}"
    caller = _caller(tmp_path, b, leg, wait_bye_ms=15000)
    try:
        await until(lambda: "node-b" in _live_by_node(a), 30, poll_s=0.3,
                    what="B's call listed on A")
        b_call = _live_by_node(a)["node-b"]
        assert b.proc is not None
        b.proc.kill()                             # kill -9: no BYE, no last save
        b.proc.wait(10)
        row = records_by_leg(pg_url, f"{leg}-1@127.0.0.1")[0]
        assert row["ended_at"] is None            # nobody closed it yet
        await until(lambda: records_by_leg(pg_url, f"{leg}-1@127.0.0.1")[0]["state"] == "lost",
                    LOST_AFTER_S * 2 + 20, poll_s=0.5,
                    what=lambda: "B's call marked lost\n" + a.log_tail(20))
        (row,) = records_by_leg(pg_url, f"{leg}-1@127.0.0.1")
        assert row["end_reason"] == "lost" and row["ended_at"] is not None
        assert row["record"]["end_reason"] == "lost"
        assert row["record"]["ended_at"] >= row["record"]["started_at"]
        assert a.metric("voicebridge_cluster_calls_lost_total") == 1
        # A's dashboard: the call is no longer live, and shows lost in the history.
        assert "node-b" not in _live_by_node(a)
        recent = {c["call_id"]: c for c in _calls(a)["recent"]}
        assert recent[b_call]["end_reason"] == "lost"
        # No hang-up of a call of a lost node.
        assert _hang_up(a, b_call)[0] == 404
    finally:
        await asyncio.wait_for(caller, 60)        # SIPp gives up waiting for the BYE


async def _dashboard_rows(page: Any) -> dict[str, str]:
    """node -> call id of the live-call rows the page shows."""
    rows = await page.eval_on_selector_all(
        "#live tr[data-call]", "trs => trs.map(tr => [tr.querySelector('td.node').textContent,"
        " tr.dataset.call])")
    return {str(node): str(call) for node, call in rows}


@pytest.mark.interop
@pytest.mark.slow
async def test_the_dashboard_of_either_node_shows_both_and_hangs_up_on_the_other(
        tmp_path: Path, nodes: tuple[ServeProcess, ServeProcess]) -> None:
    """Headless Chromium on each node's dashboard; the Hang up button on node A's page
    ends node B's call (B's caller gets the BYE) and A's page sees it go."""
    chromium = require_binary("chromium", "the dashboard's browser")

    a, b = nodes
    tag = uuid.uuid4().hex[:6]
    on_a, on_b = _caller(tmp_path, a, f"da-{tag}"), _caller(tmp_path, b, f"db-{tag}")
    try:
        for node in (a, b):
            await until(lambda n=node: set(_live_by_node(n)) == {"node-a", "node-b"}, 30,
                        poll_s=0.3, what="both calls listed")
        async with async_playwright() as p:
            browser = await p.chromium.launch(executable_path=chromium, headless=True)
            pages = []
            for node in (a, b):
                page = await browser.new_page()
                await page.goto(f"{node.http_url}/login?token={node.TOKEN}")
                pages.append(page)
            for page in pages:
                await until(lambda pg=page: _dashboard_rows(pg), 15, poll_s=0.2,
                            what="the live rows")
                assert set(await _dashboard_rows(page)) == {"node-a", "node-b"}
            page_a = pages[0]
            b_call = (await _dashboard_rows(page_a))["node-b"]
            await page_a.click(f'button[data-hangup="{b_call}"]')
            run_b = await asyncio.wait_for(on_b, 30)
            assert run_b.successful == 1 and run_b.failed == 0, run_b.explain()

            async def gone() -> bool:
                with contextlib.suppress(Exception):    # the page may be reloading
                    return set(await _dashboard_rows(page_a)) == {"node-a"}
                return False

            await until(gone, 20, poll_s=0.3, what="B's call to leave A's page")
            await browser.close()
        assert not on_a.done()
        assert _hang_up(a, _live_by_node(a)["node-a"])[0] == 202
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
        assert _calls(again)["live"] == []
        assert again.metric("voicebridge_cluster_calls_lost_total") == 0
    finally:
        again.stop()
        await asyncio.wait_for(caller, 60)
