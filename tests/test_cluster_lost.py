"""The lost-node check on a real PostgreSQL, without serve processes: two nodes marking
the same silent node at once mark each call once; records that never reached the
database still get a ``lost`` record from the live-call list; a node taken for lost that
comes back puts the truth back; hang-ups are refused for calls of a silent node."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping
from typing import Any

import psycopg
import pytest

from bridge.call.cluster import ClusterNode
from bridge.call.records import CallRecord
from bridge.call.records_pg import PostgresRecordStore
from tests.support.postgres import Postgres, pg_url, postgres_server
from tests.support.waiting import until

__all__ = ["pg_url", "postgres_server"]   # fixtures, used by name


class _State:
    def __init__(self, value: str) -> None:
        self.value = value


class _Machine:
    def __init__(self) -> None:
        self.state = _State("conversing")


class _LiveCall:
    """What the heartbeat reads of a live call: its id, record and lifecycle state."""

    def __init__(self, call_id: str) -> None:
        self.call_id = call_id
        self.record = CallRecord(call_id=call_id, caller="+1555", called="100",
                                 source="sip", dialplan="echo", started_at=1000.0)
        self.state = _Machine()


def _node(store: PostgresRecordStore, calls: Mapping[str, Any],
          lost_after_s: float = 2) -> ClusterNode:
    return ClusterNode(store, lambda: calls, lambda _cid, _why: False,  # type: ignore[arg-type]
                       node_id=store.node_id, http_url=lambda: "http://127.0.0.1:1",
                       heartbeat_s=1, lost_after_s=lost_after_s)


@pytest.fixture
async def stores(pg_url: str) -> AsyncIterator[list[PostgresRecordStore]]:
    made = [PostgresRecordStore(pg_url, node_id=n) for n in ("a", "b", "dead")]
    for store in made:
        await store.open()
    yield made
    for store in made:
        await store.close()


async def _age(url: str, node: str, seconds: int) -> None:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute("UPDATE nodes SET heartbeat_at = now() - make_interval(secs => %s) "
                           "WHERE node_id = %s", (seconds, node))


async def test_two_nodes_mark_a_silent_nodes_calls_lost_once(
        stores: list[PostgresRecordStore], pg_url: str) -> None:
    a, b, dead = stores
    saved, unsaved = _LiveCall("saved"), _LiveCall("never-saved")
    unsaved.record.caller = "nul\x00caller"         # a heartbeat must not choke on it
    await dead.save(saved.record)                      # its first record made it...
    await until(lambda: dead.queued == 0, 30)
    calls = {"saved": saved, "never-saved": unsaved}   # ...the other call's did not
    await _node(dead, calls).heartbeat()
    await _age(pg_url, "dead", 30)
    node_a, node_b = _node(a, {}), _node(b, {})
    assert await node_a.request_hangup("saved") is None    # a silent node's call: refused
    first, second = await asyncio.gather(node_a.mark_lost(), node_b.mark_lost())
    assert sorted(first + second) == ["never-saved", "saved"]
    assert not (first and second)                      # one of them did it all
    assert await node_a.mark_lost() == []              # and it is done once
    for call_id in ("saved", "never-saved"):
        record = await a.get(call_id)
        assert record is not None and record.end_reason == "lost" and record.node == "dead"
        assert record.ended_at is not None
    minimal = await a.get("never-saved")
    assert minimal is not None and minimal.caller == "nul\ufffdcaller"
    assert await node_a.remote_calls() == []
    assert await a.integrity() == "ok"


async def test_a_node_taken_for_lost_puts_the_truth_back(
        stores: list[PostgresRecordStore], pg_url: str) -> None:
    a, _b, dead = stores
    call = _LiveCall("still-live")
    await dead.save(call.record)
    await until(lambda: dead.queued == 0, 30)
    came_back = _node(dead, {"still-live": call})
    await came_back.heartbeat()
    await _age(pg_url, "dead", 30)
    assert await _node(a, {}).mark_lost() == ["still-live"]
    await came_back.heartbeat()                        # it was only cut off
    await until(lambda: dead.queued == 0, 30)
    record = await a.get("still-live")
    assert record is not None and record.ended_at is None and record.end_reason == ""
    assert [c.call_id for c in await _node(a, {}).remote_calls()] == ["still-live"]
    assert await _node(a, {}).request_hangup("still-live") == "dead"


async def test_a_database_outage_marks_no_live_node_lost(
        postgres_server: Postgres, pg_url: str) -> None:
    """Both nodes go silent while PostgreSQL is away; once it is back neither may take the
    other for lost (each judges only after beating for lost_after_s itself)."""
    a = PostgresRecordStore(pg_url, node_id="a", retry_max_s=1.0)
    b = PostgresRecordStore(pg_url, node_id="b", retry_max_s=1.0)
    await a.open()
    await b.open()
    on_a, on_b = _LiveCall("live-on-a"), _LiveCall("live-on-b")
    nodes = [_node(a, {"live-on-a": on_a}, lost_after_s=4),
             _node(b, {"live-on-b": on_b}, lost_after_s=4)]
    try:
        for store, call in ((a, on_a), (b, on_b)):
            await store.save(call.record)
        for node in nodes:
            await node.start()
        await until(lambda: a.queued == 0 and b.queued == 0, 30)
        await asyncio.to_thread(postgres_server.stop, "fast")
        await asyncio.sleep(nodes[0].lost_after_s + 2)     # longer than lost_after_s
        await asyncio.to_thread(postgres_server.start)

        async def both_listed() -> bool:
            with contextlib.suppress(Exception):
                return len(await nodes[0].remote_calls() + await nodes[1].remote_calls()) == 2
            return False

        await until(both_listed, 30, poll_s=0.5, what="both nodes heartbeating again")
        await asyncio.sleep(2 * nodes[0].lost_after_s)     # when a mark would have come
        assert nodes[0].lost_marked == [] and nodes[1].lost_marked == []
        for store, call_id in ((a, "live-on-b"), (b, "live-on-a")):
            record = await store.get(call_id)
            assert record is not None and record.ended_at is None
    finally:
        if not postgres_server.running:
            postgres_server.start()
        for node in nodes:
            await node.stop()
        await a.close()
        await b.close()
