"""One record store suite, run on every backend: memory, SQLite and a real PostgreSQL.

Each test gets a fresh store (a new SQLite file, a new PostgreSQL database) through
``opener``, which can also reopen the same place, as a restarted process would. The
PostgreSQL runs are skipped (failed under ``REQUIRE_INTEROP=1``) without PostgreSQL's
programs.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

from bridge import metrics
from bridge.call.records import (
    CRASHED,
    BargeIn,
    CallRecord,
    DtmfRecord,
    MemoryRecordStore,
    SqliteRecordStore,
    ToolCallRecord,
    TranscriptEntry,
    TurnLatency,
)
from bridge.call.records_pg import LATEST, PostgresRecordStore, open_postgres_store
from tests.support.postgres import Postgres, pg_url, postgres_server
from tests.support.waiting import until

__all__ = ["pg_url", "postgres_server"]   # fixtures, used by name

Opener = Callable[[], Awaitable[Any]]


def _record(call_id: str, started: float = 100.0, turns: int = 1) -> CallRecord:
    r = CallRecord(call_id=call_id, leg_call_id="leg-" + call_id, source="sip",
                   caller="+15550100", called="100", dialplan="echo", started_at=started)
    for i in range(turns):
        r.transcript.append(TranscriptEntry("caller", f"u{i}", "Éa va? " * 3, started + i))
        r.transcript.append(TranscriptEntry("agent", f"a{i}", "Hello…", started + i + 0.5,
                                            truncated=i % 2 == 0))
        r.turns.append(TurnLatency(started + i, f"resp_{i}", 300.0 + i, 40.5))
    r.barge_ins.append(BargeIn(started + 1.5, "a0", 640, 2400, 640, 1200))
    r.tool_calls.append(ToolCallRecord(started + 3, "resp_1", "call_1", "transfer_call",
                                       '{"target": "sales"}', True, '{"ok": true}', None, 0.25))
    r.dtmf.append(DtmfRecord(started + 4, "0", "in", "transfer"))
    r.add_usage({"total_tokens": 10, "input_token_details": {"audio_tokens": 4}})
    return r


async def _openers(request: pytest.FixtureRequest, tmp_path: Path
                   ) -> AsyncIterator[Opener]:
    """Opens the backend's store (again and again on the same data); closes them all."""
    opened: list[Any] = []
    kind = request.param
    memory = MemoryRecordStore()
    url = request.getfixturevalue("pg_url") if kind == "postgres" else ""

    async def open_store() -> Any:
        if kind == "memory":
            return memory
        if kind == "sqlite":
            store: Any = SqliteRecordStore(tmp_path / "calls.db")
        else:
            store = PostgresRecordStore(url, node_id="node-a")
            await store.open()
        opened.append(store)
        return store

    open_store.kind = kind  # type: ignore[attr-defined]
    yield open_store
    for store in opened:
        await store.close()


@pytest.fixture(params=["memory", "sqlite", "postgres"])
async def opener(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Opener]:
    """Every backend."""
    async for store in _openers(request, tmp_path):
        yield store


@pytest.fixture(params=["sqlite", "postgres"])
async def durable(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Opener]:
    """The backends whose records outlive the process."""
    async for store in _openers(request, tmp_path):
        yield store


async def _flushed(store: Any) -> None:
    """Wait until a write-behind store has written what it was given."""
    if isinstance(store, PostgresRecordStore):
        await until(lambda: store.queued == 0, 30, what="the queue to drain")


async def test_save_get_recent_and_update_in_place(opener: Opener) -> None:
    store = await opener()
    r = _record("c1")
    await store.save(r)                           # start of call
    r.transcript.append(TranscriptEntry("caller", "late", "one more", 150.0))
    r.end_reason, r.ended_at = "transferred", 160.0
    await store.save(r)                           # end of call: the same row, updated
    await store.save(_record("c2", started=200.0))
    await store.save(_record("c3", started=50.0))
    await _flushed(store)
    assert await store.get("c1") == r
    assert await store.get("nope") is None
    assert [x.call_id for x in await store.recent(10)] == ["c2", "c1", "c3"]
    assert [x.call_id for x in await store.recent(2)] == ["c2", "c1"]
    r.end_reason = "changed after the save"       # the store kept a copy, not the object
    got = await store.get("c1")
    assert got is not None and got.end_reason == "transferred"


async def test_records_survive_a_reopen(opener: Opener) -> None:
    store = await opener()
    await store.save(_record("kept", turns=3))
    await store.close()
    again = await opener()
    got = await again.get("kept")
    assert got is not None and len(got.transcript) == 6


async def test_open_records_are_closed_as_crashed_on_restart(durable: Opener) -> None:
    opener = durable
    store = await opener()
    live = _record("live", started=100.0)
    await store.save(live)
    before = time.time()
    live.transcript.append(TranscriptEntry("caller", "u9", "hello", 101.0))
    await store.save(live)                        # the last save: when it is closed at
    after = time.time()
    done = _record("done", started=50.0)
    done.end_reason, done.ended_at = "caller_hangup", 60.0
    await store.save(done)
    await _flushed(store)
    await store.close()

    store = await opener()
    assert await store.close_orphans() == ["live"]
    closed = await store.get("live")
    assert closed is not None and closed.end_reason == CRASHED
    assert closed.ended_at is not None and before <= closed.ended_at <= after
    assert closed.transcript[-1].text == "hello"
    untouched = await store.get("done")
    assert untouched is not None and (untouched.end_reason, untouched.ended_at) == (
        "caller_hangup", 60.0)
    assert await store.close_orphans() == []      # once closed, never again
    assert await store.integrity() == "ok"


async def test_a_large_record_round_trips(opener: Opener) -> None:
    store = await opener()
    big = _record("big", turns=2000)              # about 4000 transcript entries
    big.transcript.append(TranscriptEntry("caller", "long", "x" * 200_000, 9999.0))
    await store.save(big)
    await _flushed(store)
    reopened = await opener() if opener.kind != "memory" else store  # type: ignore[attr-defined]
    assert await reopened.get("big") == big


async def test_concurrent_saves_keep_every_calls_last_state(opener: Opener) -> None:
    store = await opener()
    records = [_record(f"k{i}", started=1000.0 + i) for i in range(100)]

    async def call(r: CallRecord) -> None:
        for turn in range(5):
            r.transcript.append(TranscriptEntry("caller", f"t{turn}", str(turn), 2000.0))
            await store.save(r)
            await asyncio.sleep(0)
        r.end_reason, r.ended_at = "caller_hangup", r.started_at + 10
        await store.save(r)

    await asyncio.gather(*(call(r) for r in records))
    await _flushed(store)
    listed = await store.recent(1000)
    assert len(listed) == 100
    for r in records:
        got = await store.get(r.call_id)
        assert got == r and got.transcript[-1].text == "4"


# ---- PostgreSQL only -------------------------------------------------------------------------

async def test_postgres_two_nodes_migrate_at_once(pg_url: str) -> None:
    """Two nodes starting together: the advisory lock lets one migrate, the other finds it
    done; every version is applied exactly once."""
    a = PostgresRecordStore(pg_url, node_id="a")
    b = PostgresRecordStore(pg_url, node_id="b")
    try:
        await asyncio.gather(a.open(), b.open())
        assert await a.integrity() == "ok" and await b.integrity() == "ok"
    finally:
        await a.close()
        await b.close()
    async with await psycopg.AsyncConnection.connect(pg_url) as conn:
        cur = await conn.execute("SELECT version FROM schema_version ORDER BY version")
        assert [row[0] for row in await cur.fetchall()] == list(range(1, LATEST + 1))


async def test_postgres_orphans_of_other_nodes_are_left_alone(pg_url: str) -> None:
    a = PostgresRecordStore(pg_url, node_id="a")
    b = PostgresRecordStore(pg_url, node_id="b")
    await a.open()
    await b.open()
    try:
        await a.save(_record("on-a"))
        await b.save(_record("on-b"))
        await _flushed(a)
        await _flushed(b)
        await a.close()
        a = PostgresRecordStore(pg_url, node_id="a")   # a restarted: only its own
        await a.open()
        assert await a.close_orphans() == ["on-a"]
        got = await b.get("on-b")
        assert got is not None and got.ended_at is None and got.node == "b"
    finally:
        await a.close()
        await b.close()


async def test_postgres_orphans_are_closed_once_the_database_is_back(
        postgres_server: Postgres, pg_url: str) -> None:
    """A node that starts while PostgreSQL is away closes its previous run's records
    when the database returns, and never this run's own live calls."""
    first = PostgresRecordStore(pg_url, node_id="n")
    await first.open()
    await first.save(_record("previous-run"))
    await _flushed(first)
    await first.close()
    postgres_server.stop()
    try:
        again = await open_postgres_store(pg_url, "n")
        assert again.orphans_due
        await again.save(_record("this-run"))
    finally:
        postgres_server.start()
    try:
        await until(lambda: not again.orphans_due and again.queued == 0, 60,
                    what="the late close and the queue")
        old = await again.get("previous-run")
        assert old is not None and old.end_reason == CRASHED
        new = await again.get("this-run")
        assert new is not None and new.ended_at is None
    finally:
        await again.close()


async def test_postgres_queue_is_bounded_while_the_database_is_away() -> None:
    """Nothing listens on the port: saves return at once, the queue keeps the newest
    ``queue_max`` calls (re-saves replace, not add) and counts what it dropped."""
    dropped_before = metrics.RECORDS_DROPPED._value.get()
    store = PostgresRecordStore("postgresql://nobody@127.0.0.1:9/none", node_id="x",
                                queue_max=5, flush_s=0.5, connect_timeout_s=1)
    await store.open(wait_s=1)
    try:
        started = time.monotonic()
        for i in range(8):
            r = _record(f"q{i}", started=float(i))
            await store.save(r)
            await store.save(r)                   # saved again: replaces its queued row
        assert time.monotonic() - started < 5     # a call never waits on the database
        assert store.queued == 5 and store.dropped == 3
        assert [r.call_id for r in await store.recent(10)] == ["q7", "q6", "q5", "q4", "q3"]
        got = await store.get("q7")
        assert got is not None and got.call_id == "q7"
        await until(lambda: store.write_errors >= 1, 30, what="a failed write")
    finally:
        await store.close()
    assert store.dropped == 8                     # 3 over the bound + 5 unwritten at close
    assert metrics.RECORDS_DROPPED._value.get() - dropped_before == 8


async def test_postgres_records_saved_during_an_outage_are_written_when_it_returns(
        postgres_server: Postgres, pg_url: str) -> None:
    store = PostgresRecordStore(pg_url, node_id="a", retry_max_s=1.0)
    await store.open()
    try:
        r = _record("through-outage")
        await store.save(r)
        await _flushed(store)
        postgres_server.stop()
        r.transcript.append(TranscriptEntry("caller", "gap", "said while it was away", 500.0))
        r.end_reason, r.ended_at = "caller_hangup", 600.0
        await store.save(r)
        await until(lambda: store.write_errors >= 1, 30, what="a failed write")
        assert store.queued == 1
        postgres_server.start()
        await _flushed(store)
    finally:
        if not postgres_server.running:
            postgres_server.start()
        await store.close()
    fresh = PostgresRecordStore(pg_url, node_id="reader")
    await fresh.open()
    try:
        assert await fresh.get("through-outage") == r
    finally:
        await fresh.close()


async def test_postgres_nul_characters_are_kept_out_and_a_refused_row_blocks_nothing(
        pg_url: str) -> None:
    """NUL (which PostgreSQL text and JSONB refuse) from a caller's name or speech is
    replaced; a row the database still refuses is dropped and counted, and the rows
    queued with it are written."""
    store = PostgresRecordStore(pg_url, node_id="a")
    await store.open()
    try:
        odd = _record("nul")
        odd.caller = "evil\x00caller"
        odd.transcript.append(TranscriptEntry("caller", "n", "a\x00b", 101.0))
        refused = _record("refused")
        refused.usage = {"total_tokens": float("inf")}     # not JSON: JSONB refuses it
        await store.save(odd)
        await store.save(refused)
        await store.save(_record("fine"))
        await _flushed(store)
        assert store.dropped == 1
        got = await store.get("nul")
        assert got is not None and got.caller == "evil\ufffdcaller"
        assert got.transcript[-1].text == "a\ufffdb"
        assert await store.get("fine") is not None
        assert await store.get("refused") is None
    finally:
        await store.close()
