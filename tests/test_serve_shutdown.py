"""Stopping a bridge with live calls ends them cleanly and writes their records."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from dataclasses import replace
from pathlib import Path

import pytest

from bridge.bench.sip import PT_PCMU, Scenario, ServeProcess, run_sipp
from bridge.call.leg import LegInfo, Source
from bridge.call.memory import MemoryLeg
from bridge.call.records import SqliteRecordStore
from bridge.config import load_settings
from bridge.serve import Bridge
from tests.support.interop import require_binary
from tests.support.waiting import until


async def test_stop_ends_live_calls_and_writes_their_records(tmp_path: Path) -> None:
    db = tmp_path / "calls.db"
    settings = load_settings(None, {"VOICEBRIDGE_HTTP_PORT": "0",
                                    "VOICEBRIDGE_RECORDS_PATH": str(db)})
    settings = replace(settings, sip=replace(settings.sip, enabled=False))
    bridge = Bridge(settings, env={})
    await bridge.start()
    legs = [MemoryLeg(LegInfo(call_id=f"m{i}", source=Source.MEMORY, caller="x", called="1"),
                      clock=bridge.manager.clock) for i in range(3)]
    tasks = [asyncio.ensure_future(bridge.manager.handle(leg)) for leg in legs]
    await until(lambda: bridge.manager.live >= 3)
    ids = list(bridge.manager.calls)
    await bridge.stop()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(getattr(r, "end_reason", None) == "shutdown" for r in results), results
    assert all(leg.hangups for leg in legs)            # each leg was hung up from our side
    store = SqliteRecordStore(db)
    try:
        for call_id in ids:
            record = await store.get(call_id)
            assert record is not None and record.ended_at is not None
            assert record.end_reason == "shutdown"
    finally:
        await store.close()
    await bridge.stop()                                 # idempotent


@pytest.mark.interop
async def test_after_kill_9_the_next_start_closes_the_calls_that_were_live(
        tmp_path: Path) -> None:
    """A bridge killed with SIGKILL during calls writes nothing more; the next start on the
    same records file closes those calls (``crashed``, at their last save), the finished
    turns they had are kept, and the file passes SQLite's integrity check."""
    sipp = require_binary("sipp", "calls to kill the bridge under")
    work = tmp_path / "serve"
    media = tmp_path / "caller.ulaw"
    media.write_bytes(b"\xff" * 8000 * 3)
    scenario = (Scenario("long", service="anything", codecs=("pcmu",)).invite()
                .rtp_stream(media, loops=-1, payload_type=PT_PCMU).pause(6000).bye()
                .write(tmp_path))
    first = ServeProcess(work, env={"VOICEBRIDGE_SIP_TRANSPORTS": "udp"}).start()
    assert first.records_path is not None
    db = first.records_path
    try:
        calls = asyncio.ensure_future(run_sipp(
            scenario, first.sip_port, workdir=tmp_path, calls=5, rate=10, limit=5,
            limit_s=10, sipp=sipp))

        def live_rows() -> int:
            with contextlib.closing(sqlite3.connect(db)) as conn:
                return int(conn.execute("SELECT COUNT(*) FROM calls WHERE ended_at IS NULL"
                                        ).fetchone()[0])

        await until(lambda: db.exists() and live_rows() == 5, 20, what="5 live calls")
        assert first.proc is not None
        first.proc.kill()                       # SIGKILL: no shutdown, no last save
        first.proc.wait(10)
        assert live_rows() == 5                 # nothing closed them
    finally:
        first.stop()
    await asyncio.wait_for(calls, 40)           # SIPp gives up on its own
    with ServeProcess(work, env={"VOICEBRIDGE_SIP_TRANSPORTS": "udp"}) as second:
        assert second.records_path == db
        with contextlib.closing(sqlite3.connect(db)) as conn:
            rows = conn.execute("SELECT end_reason, ended_at, started_at FROM calls"
                                ).fetchall()
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert len(rows) == 5
        assert all(reason == "crashed" and ended is not None and ended >= started
                   for reason, ended, started in rows), rows
        assert "previous run left open" in second.log_tail(200)
