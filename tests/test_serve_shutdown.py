"""Stopping a bridge with live calls ends them cleanly and writes their records."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

from bridge.call.leg import LegInfo, Source
from bridge.call.memory import MemoryLeg
from bridge.call.records import SqliteRecordStore
from bridge.config import load_settings
from bridge.serve import Bridge
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
