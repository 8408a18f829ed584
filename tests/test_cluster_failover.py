"""Nodes leaving a cluster behind the shipped Kamailio configuration, with real nodes
sharing one real PostgreSQL for their records and live state, and SIPp (issue 12's "Must
show"):

* a node drained with SIGTERM during calls: its live calls finish normally (SIPp's BYE),
  new calls during the drain all go to the other node, none fails, the node exits 0, and
  its calls are complete records in PostgreSQL;
* either node's dashboard (headless Chromium) lists the calls Kamailio placed on both nodes,
  and its Hang up button ends a call on the other node: the caller gets that node's BYE
  through Kamailio;
* a node killed with ``kill -9``: new calls succeed on the other node, the first one after
  waiting for Kamailio to give up on the dead node (the seconds are measured and printed),
  and the survivor marks the dead node's live calls ``lost`` in PostgreSQL;
* a node at ``max_calls``: its INVITEs past that fail over and its probes say 503; and the
  BYE a node sends itself reaches the caller through Kamailio.

``test_cluster_pg.py`` covers the shared database without Kamailio (the hang-up API, a
node restarted with its id).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import async_playwright

from bridge.bench.cluster import RoutedScenario
from bridge.bench.sip import PT_PCMU, LoopbackCapture, SippRun, free_udp_port
from tests.support.cluster import LOST_AFTER_S, Cluster, Node, hang_up, live_and_recent, pg_rows
from tests.support.interop import require_binary
from tests.support.postgres import pg_url, postgres_server
from tests.support.waiting import until

__all__ = ["pg_url", "postgres_server"]   # fixtures, used by name

#: The shipped configuration's wait for a node's first reply before the next node.
FR_TIMER_S = 2.0
PING_INTERVAL_S = 1


def audio(folder: Path) -> Path:
    path = folder / "caller.ulaw"
    path.write_bytes(b"\xff" * 8000)
    return path


def assert_all_ok(run: SippRun, calls: int) -> None:
    assert run.returncode == 0 and run.successful == calls and run.failed == 0, run.explain()


async def exited(node: Node, limit_s: float) -> int:
    assert node.proc is not None
    try:
        return await asyncio.to_thread(node.proc.wait, limit_s)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"{node.node_id} did not exit\n{node.log_tail()}") from None


@pytest.mark.interop
async def test_a_draining_node_finishes_its_calls_and_new_ones_go_to_the_other(
        tmp_path: Path, pg_url: str) -> None:
    sipp = require_binary("sipp", "callers through Kamailio")
    media = audio(tmp_path)
    long = (RoutedScenario("long", service="agent").invite()
            .rtp_stream(media, loops=-1, payload_type=PT_PCMU).pause(7000).bye()
            .write(tmp_path))
    short = (RoutedScenario("short", service="agent").invite()
             .rtp_stream(media, loops=-1, payload_type=PT_PCMU).pause(1000).bye()
             .write(tmp_path))
    with Cluster(tmp_path / "cluster", env={"VOICEBRIDGE_SIP_DRAIN_S": "60"},
                 ping_interval_s=PING_INTERVAL_S, records_url=pg_url) as cluster:
        a, b = cluster.nodes
        live = asyncio.ensure_future(cluster.call(
            long, workdir=tmp_path, calls=6, rate=20, limit=6,
            limit_s=60, call_id_prefix="live", sipp=sipp))
        await until(lambda: sum(n.metric("voicebridge_calls_active", source="sip")
                                for n in (a, b)) == 6, 30, poll_s=0.2, what="6 live calls")
        a_live = a.metric("voicebridge_calls_active", source="sip")
        assert a_live >= 2, a_live                 # call load: 3 and 3
        assert a.proc is not None
        a.proc.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        fresh = await cluster.call(short, workdir=tmp_path, calls=10, rate=10,
                                   limit=10, limit_s=60, call_id_prefix="new", sipp=sipp)
        assert_all_ok(fresh, 10)
        assert_all_ok(await live, 6)
        assert await exited(a, 30) == 0
        drained_in = time.monotonic() - signalled
        routed = cluster.routed()
        a_records = {r["leg_call_id"]: r for r in a.records()}
        b_records = {r["leg_call_id"]: r for r in b.records()}
    new = {cid for cid in routed if cid.startswith("new-")}
    assert len(new) == 10 and all(routed[cid] == b.node_id for cid in new), routed
    assert not any(cid.startswith("new-") for cid in a_records), a_records
    assert new <= set(b_records)
    # The drained node's calls ended normally, by the caller's BYE, not by the shutdown,
    # and their records in the shared database are complete: ended, answered by the
    # upstream, and written before the node exited.
    assert len(a_records) == a_live and a_records
    assert {r["end_reason"] for r in a_records.values()} == {"caller_hangup"}, a_records
    assert all(r["ended_at"] and r["connected_at"] and r["session_ids"]
               for r in a_records.values()), a_records
    a_rows = pg_rows(pg_url, "node_id = %s", (a.node_id,))
    assert {(r["state"], r["end_reason"]) for r in a_rows} == {("ended", "caller_hangup")}
    print(f"drain: {a.node_id} had {a_live:.0f} live calls at SIGTERM, all ended by the "
          f"caller; 10/10 new calls went to {b.node_id}; {a.node_id} exited "
          f"{drained_in:.1f} s after the signal")


@pytest.mark.interop
async def test_a_dashboard_hangs_up_the_other_nodes_call_and_a_killed_nodes_calls_are_lost(
        tmp_path: Path, pg_url: str) -> None:
    sipp = require_binary("sipp", "callers through Kamailio")
    chromium = require_binary("chromium", "the dashboard's browser")
    quick = RoutedScenario("quick", service="agent").invite().pause(200).bye().write(tmp_path)
    with Cluster(tmp_path / "cluster", ping_interval_s=PING_INTERVAL_S,
                 records_url=pg_url) as cluster:
        warm = await cluster.call(quick, workdir=tmp_path, calls=2, rate=10,
                                  limit=1, limit_s=30, call_id_prefix="warm", sipp=sipp)
        assert_all_ok(warm, 2)
        # a: the node an idle cluster sends calls to (call load: both have none, so the
        # same one each time); it is the one killed below. Kamailio places a waiting call
        # on a, then one on b (the least loaded).
        first = cluster.routed()["warm-2@127.0.0.1"]
        a, b = sorted(cluster.nodes, key=lambda n: n.node_id != first)
        local = free_udp_port()
        callers: list[asyncio.Task[SippRun]] = []
        try:
            async with LoopbackCapture(dst_ports=(local,)) as capture:
                callers.append(await _place(cluster, a, "ona", tmp_path, sipp))
                callers.append(await _place(cluster, b, "onb", tmp_path, sipp, local))
                # Node a's dashboard ends the call Kamailio placed on node b.
                b_call = await _hang_up_from_dashboard(chromium, a, b)
                assert_all_ok(await asyncio.wait_for(callers[1], 30), 1)
            byes = {d.src[1] for d in capture.datagrams if d.payload.startswith(b"BYE ")}
            assert byes == {cluster.sip_port}, byes        # b's BYE, through Kamailio
            await until(lambda: pg_rows(pg_url, "call_id = %s", (b_call,))[0]["ended_at"],
                        15, poll_s=0.2, what="b's call's final record in PostgreSQL")
            (row,) = pg_rows(pg_url, "call_id = %s", (b_call,))
            assert (row["node_id"], row["end_reason"]) == (b.node_id, "operator"), row
            # Another waiting call, on b (a has one): the next call would go to a.
            callers.append(await _place(cluster, b, "onb2", tmp_path, sipp))
            a_call = next(c["call_id"] for c in live_and_recent(b)["live"]
                          if c["node"] == a.node_id)
            killed = await _kill_and_call(cluster, a, b, quick, tmp_path, sipp)
            await _assert_marked_lost(pg_url, a, b, a_call, killed)
            assert hang_up(b, live_and_recent(b)["live"][0]["call_id"])[0] == 202
            assert_all_ok(await asyncio.wait_for(callers[2], 30), 1)
        finally:
            for task in callers:
                task.cancel()            # a's caller waits for a BYE that never comes
            await asyncio.gather(*callers, return_exceptions=True)


async def _place(cluster: Cluster, node: Node, prefix: str, tmp_path: Path, sipp: str,
                 local_port: int | None = None) -> asyncio.Task[SippRun]:
    """A SIPp caller through Kamailio staying on until it gets a BYE; returns once it is
    live on ``node`` (where Kamailio placed it)."""
    stays = (RoutedScenario(f"stays-{prefix}", service="agent").invite().wait_bye(60_000)
             .write(tmp_path))
    before = node.metric("voicebridge_calls_active", source="sip")
    task = asyncio.create_task(cluster.call(stays, workdir=tmp_path,
                                            local_port=local_port, limit_s=60,
                                            call_id_prefix=prefix, sipp=sipp))
    await until(lambda: node.metric("voicebridge_calls_active", source="sip") == before + 1,
                30, poll_s=0.2, what=lambda: f"{prefix} live on {node.node_id}: Kamailio "
                f"sent it to {cluster.routed().get(f'{prefix}-1@127.0.0.1')}")
    return task


async def _dashboard_rows(page: Any) -> dict[str, str]:
    """node -> call id of the live-call rows the page shows."""
    rows = await page.eval_on_selector_all(
        "#live tr[data-call]", "trs => trs.map(tr => [tr.querySelector('td.node').textContent,"
        " tr.dataset.call])")
    return {str(node): str(call) for node, call in rows}


async def _hang_up_from_dashboard(chromium: str, a: Node, b: Node) -> str:
    """Headless Chromium on both nodes' dashboards: each lists a call of each node; the
    Hang up button of ``a``'s page on ``b``'s call, and the row goes from both pages.
    Returns that call's id."""
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=chromium, headless=True)
        pages = []
        for node in (a, b):
            page = await browser.new_page()
            await page.goto(f"{node.http_url}/login?token={node.TOKEN}")
            pages.append(page)
        for page, node in zip(pages, (a, b), strict=True):
            await until(lambda pg=page: _shows(pg, {a.node_id, b.node_id}), 20, poll_s=0.3,
                        what=f"a call of each node on {node.node_id}'s page")
        b_call = (await _dashboard_rows(pages[0]))[b.node_id]
        assert (await _dashboard_rows(pages[1]))[b.node_id] == b_call
        await pages[0].click(f'button[data-hangup="{b_call}"]')
        for page, node in zip(pages, (a, b), strict=True):
            await until(lambda pg=page: _shows(pg, {a.node_id}), 20, poll_s=0.3,
                        what=f"b's call to leave {node.node_id}'s page")
        await browser.close()
    return b_call


async def _shows(page: Any, nodes: set[str]) -> bool:
    """The page lists live calls of exactly ``nodes``."""
    with contextlib.suppress(Exception):     # the page may be reloading
        return set(await _dashboard_rows(page)) == nodes
    return False


async def _kill_and_call(cluster: Cluster, a: Node, b: Node, quick: Path, tmp_path: Path,
                         sipp: str) -> float:
    """kill -9 of ``a``, then one call after another through Kamailio for a few seconds:
    all answered by ``b``; the seconds are printed. Returns when ``a`` was killed
    (``time.monotonic()``)."""
    os.kill(a.pid, signal.SIGKILL)
    killed = time.monotonic()
    calls: list[tuple[float, float]] = []        # (start after the kill, set-up time)
    n = 0
    while time.monotonic() - killed < PING_INTERVAL_S + FR_TIMER_S + 3.0:
        n += 1
        start = time.monotonic()
        run = await cluster.call(quick, workdir=tmp_path, calls=1,
                                 limit_s=30, call_id_prefix=f"after{n}", sipp=sipp)
        assert_all_ok(run, 1)
        calls.append((start - killed, time.monotonic() - start - 0.2))
    tries = [t for t in cluster.tries() if t[0].startswith("after")]
    # Every call was answered by the live node; at most the first one was tried on the
    # dead node (and waited for it), which was then marked down and skipped.
    assert {node for cid, node in dict(tries).items()} == {b.node_id}, tries
    to_dead = [t for t in tries if t[1] == a.node_id]
    assert to_dead in ([], [("after1-1@127.0.0.1", a.node_id)]), tries
    slowest = max(took for _at, took in calls)
    assert slowest < FR_TIMER_S + 3.0, calls
    if to_dead:
        assert calls[0][1] > FR_TIMER_S - 0.5, calls
    first_fast = next(at for at, took in calls if took < 1.0)
    print(f"kill -9: {n} calls after the kill, all answered by {b.node_id}"
          f"{' (the first tried on the dead node)' if to_dead else ''}; first call set up "
          f"{calls[0][0] + calls[0][1]:.2f} s after the kill, the slowest set-up "
          f"{slowest:.2f} s (Kamailio's {FR_TIMER_S:.0f} s wait for the dead node, then "
          f"failover); calls set up in under 1 s from {first_fast:.2f} s after the kill "
          f"(probe every {PING_INTERVAL_S} s); per call (start, set-up): "
          + ", ".join(f"({at:.1f}, {took:.2f})" for at, took in calls))
    return killed


async def _assert_marked_lost(url: str, a: Node, b: Node, a_call: str, killed: float
                              ) -> None:
    """The survivor ``b`` marks the dead ``a``'s live call lost in PostgreSQL."""
    await until(lambda: pg_rows(url, "call_id = %s", (a_call,))[0]["state"] == "lost",
                LOST_AFTER_S * 2 + 20, poll_s=0.5,
                what=lambda: f"{a.node_id}'s call marked lost\n{b.log_tail(20)}")
    (row,) = pg_rows(url, "call_id = %s", (a_call,))
    assert (row["node_id"], row["end_reason"]) == (a.node_id, "lost"), row
    assert row["ended_at"] is not None and row["record"]["end_reason"] == "lost"
    assert row["record"]["ended_at"] >= row["record"]["started_at"]
    assert b.metric("voicebridge_cluster_calls_lost_total", node=b.node_id) == 1
    live = live_and_recent(b)
    assert [c["node"] for c in live["live"]] == [b.node_id], live
    assert {c["call_id"]: c for c in live["recent"]}[a_call]["end_reason"] == "lost"
    assert hang_up(b, a_call)[0] == 404          # no hang-up of a lost node's call
    print(f"lost: {a.node_id}'s live call marked lost in PostgreSQL by {b.node_id} at most "
          f"{time.monotonic() - killed:.1f} s after the kill (lost_after_s = {LOST_AFTER_S}, "
          f"heartbeat 1 s)")


@pytest.mark.interop
async def test_a_full_node_sends_callers_to_the_other(tmp_path: Path, pg_url: str) -> None:
    """node1 takes 2 calls at most: the INVITEs past that get 503 and go to node2, and
    its OPTIONS say 503 too, so Kamailio stops trying it while it is full. Then a BYE sent
    by a node (at the end of a short drain) reaches the caller through Kamailio."""
    sipp = require_binary("sipp", "callers through Kamailio")
    media = audio(tmp_path)
    hold = (RoutedScenario("hold", service="agent").invite()
            .rtp_stream(media, loops=-1, payload_type=PT_PCMU).pause(6000).bye()
            .write(tmp_path))
    with Cluster(tmp_path / "cluster", node_env=[{"VOICEBRIDGE_SIP_MAX_CALLS": "2"}],
                 env={"VOICEBRIDGE_SIP_DRAIN_S": "1"},
                 ping_interval_s=PING_INTERVAL_S, records_url=pg_url) as cluster:
        a, b = cluster.nodes
        run = await cluster.call(hold, workdir=tmp_path, calls=8, rate=4,
                                 limit=8, limit_s=60, call_id_prefix="full", sipp=sipp)
        assert_all_ok(run, 8)
        taken = {n.node_id: n.metric("voicebridge_calls_started_total", source="sip")
                 for n in cluster.nodes}
        refused = a.metric("voicebridge_sip_options_refused_total", reason="at_capacity")
        busy = a.metric("voicebridge_calls_rejected_total", reason="sip_busy")
        tries = cluster.tries()
        byes = await _nodes_hang_up(cluster, tmp_path, sipp)
    assert taken == {a.node_id: 2, b.node_id: 6}, taken
    assert byes == {cluster.sip_port}, byes         # the nodes' BYEs came through Kamailio
    assert refused >= 1, refused                    # the probe saw it full
    print(f"full node: calls taken {taken}; {a.node_id} refused {busy:.0f} INVITEs (503, "
          f"Kamailio failed over) and {refused:.0f} probes while full; "
          f"{sum(1 for _c, n in tries if n == a.node_id)} tries sent to it")


async def _nodes_hang_up(cluster: Cluster, tmp_path: Path, sipp: str) -> set[int]:
    """A call on each node, then both drained with drain_s = 1: each node ends its call
    with its own BYE, which must reach SIPp by the route set, through Kamailio. Returns
    the source ports of the BYEs SIPp received."""
    stays = (RoutedScenario("stays", service="agent").invite().wait_bye(30_000)
             .write(tmp_path))
    local = free_udp_port()
    async with LoopbackCapture(dst_ports=(local,)) as capture:
        calls = asyncio.ensure_future(cluster.call(
            stays, workdir=tmp_path, calls=2, rate=10, limit=2,
            local_port=local, limit_s=60, call_id_prefix="stays", sipp=sipp))
        await until(lambda: all(n.metric("voicebridge_calls_active", source="sip") == 1
                                for n in cluster.nodes), 30, poll_s=0.2,
                    what="a call on each node")
        for node in cluster.nodes:
            assert node.proc is not None
            node.proc.send_signal(signal.SIGTERM)
        assert_all_ok(await calls, 2)
    return {d.src[1] for d in capture.datagrams if d.payload.startswith(b"BYE ")}
