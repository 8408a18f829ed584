"""Call records: the SQLite store round trip and the usage arithmetic."""

from __future__ import annotations

import dataclasses
import sqlite3
import time
from pathlib import Path

import pytest

from bridge.call import records
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


def _record(call_id: str = "c1", started: float = 100.0) -> CallRecord:
    r = CallRecord(call_id=call_id, leg_call_id="leg-" + call_id, source="memory",
                   caller="+15550100", called="100", dialplan="echo", started_at=started)
    r.transcript.append(TranscriptEntry("agent", "item_1", "Hello, how can I…", 101.0, True))
    r.transcript.append(TranscriptEntry("caller", "item_2", "Éa va?", 102.0))
    r.barge_ins.append(BargeIn(101.5, "item_1", 640, 2400, 640, 1200))
    r.tool_calls.append(ToolCallRecord(103.0, "resp_1", "call_1", "transfer_call",
                                       '{"target": "sales"}', True, '{"ok": true}', None, 0.25))
    r.dtmf.append(DtmfRecord(104.0, "0", "in", "transfer"))
    r.turns.append(TurnLatency(102.5, "resp_2", 310.0, 42.5))
    r.add_usage({"total_tokens": 10, "input_token_details": {"audio_tokens": 4}})
    r.add_usage({"total_tokens": 5, "input_token_details": {"audio_tokens": 1, "cached": 2}})
    return r


def test_usage_is_summed_recursively() -> None:
    r = _record()
    assert r.usage == {"total_tokens": 15, "input_token_details": {"audio_tokens": 5,
                                                                   "cached": 2}}


def test_dict_round_trip_is_lossless() -> None:
    r = _record()
    d = r.to_dict()
    assert d["turns"][0]["total_ms"] == 352.5
    assert CallRecord.from_dict(d) == r


async def test_sqlite_round_trip_and_upsert(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "calls.sqlite"
    store = SqliteRecordStore(path)
    r = _record()
    await store.save(r)                       # start of call
    r.end_reason = "transferred"
    r.ended_at = 110.0
    await store.save(r)                       # end of call: same row updated
    await store.save(_record("c2", started=200.0))
    got = await store.get("c1")
    assert got == r
    assert await store.get("nope") is None
    recent = await store.recent(5)
    assert [x.call_id for x in recent] == ["c2", "c1"]
    await store.close()
    # The file is in WAL mode and has one row per call, readable by anyone.
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    rows = conn.execute("SELECT call_id, end_reason FROM calls ORDER BY call_id").fetchall()
    assert rows == [("c1", "transferred"), ("c2", "")]
    conn.close()


async def test_records_a_dead_process_left_open_are_closed_as_crashed(tmp_path: Path) -> None:
    path = tmp_path / "calls.sqlite"
    store = SqliteRecordStore(path)
    live = _record("live", started=100.0)
    await store.save(live)                     # a call in progress when the process died
    before = time.time()
    live.transcript.append(TranscriptEntry("caller", "u1", "hello", 101.0))
    await store.save(live)                     # its last save: the time it is closed at
    after = time.time()
    done = _record("done", started=50.0)
    done.end_reason, done.ended_at = "caller_hangup", 60.0
    await store.save(done)
    await store.close()                        # (kill -9 closes nothing; this is a reopen)

    store = SqliteRecordStore(path)
    assert await store.close_orphans() == ["live"]
    closed = await store.get("live")
    assert closed is not None and closed.end_reason == CRASHED
    assert closed.ended_at is not None and before <= closed.ended_at <= after
    assert closed.transcript == live.transcript and closed.transcript[-1].text == "hello"
    untouched = await store.get("done")
    assert untouched is not None and (untouched.end_reason, untouched.ended_at) == (
        "caller_hangup", 60.0)
    assert await store.close_orphans() == []   # once closed, never again
    assert await store.integrity() == "ok"
    await store.close()


async def test_a_records_file_from_before_saved_at_is_upgraded(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    conn = sqlite3.connect(path)
    conn.executescript("""CREATE TABLE calls (call_id TEXT PRIMARY KEY, started_at REAL NOT
        NULL, ended_at REAL, caller TEXT NOT NULL, called TEXT NOT NULL, source TEXT NOT
        NULL, dialplan TEXT NOT NULL, end_reason TEXT NOT NULL, record TEXT NOT NULL);""")
    old = _record("old", started=10.0)
    conn.execute("INSERT INTO calls VALUES (?, ?, NULL, ?, ?, ?, ?, '', ?)",
                 ("old", 10.0, old.caller, old.called, old.source, old.dialplan,
                  old.to_json()))
    conn.commit()
    conn.close()
    store = SqliteRecordStore(path)
    assert await store.close_orphans() == ["old"]
    got = await store.get("old")
    assert got is not None and (got.end_reason, got.ended_at) == (CRASHED, 10.0)
    await store.save(_record("new", started=20.0))
    await store.close()


async def test_memory_store_round_trip() -> None:
    store = MemoryRecordStore()
    r = _record()
    await store.save(r)
    r.end_reason = "caller_hangup"        # the store kept a copy, not the live object
    got = await store.get("c1")
    assert got is not None and got.end_reason == ""
    assert [x.call_id for x in await store.recent()] == ["c1"]


def test_record_encoder_matches_to_json_and_encodes_only_what_changed(
        monkeypatch: pytest.MonkeyPatch) -> None:
    encoded: list[str] = []
    real = records._entry_json

    def counting(key: str, entry: object) -> str:
        encoded.append(key)
        return real(key, entry)

    monkeypatch.setattr(records, "_entry_json", counting)
    r = _record()
    enc = records.RecordEncoder()
    assert enc.encode(r) == r.to_json()
    first = len(encoded)
    assert first == 6                      # every entry once
    encoded.clear()
    r.turns.append(TurnLatency(105.0, "resp_3", 200.0, 30.0))
    r.transcript.append(TranscriptEntry("agent", "item_3", "Sure.", 105.5))
    assert enc.encode(r) == r.to_json()
    assert sorted(encoded) == ["transcript", "turns"]   # only the new entries
    encoded.clear()
    # Replaced in place (a reply trimmed at barge-in) and removed: encoded afresh, exact.
    r.transcript[0] = dataclasses.replace(r.transcript[0], text="Hello", truncated=True)
    del r.dtmf[:]
    r.end_reason = "caller_hangup"
    assert enc.encode(r) == r.to_json()
    assert encoded == ["transcript", "transcript", "transcript"]


async def test_stores_save_what_to_json_says(tmp_path: Path) -> None:
    r = _record()
    mem, sql = MemoryRecordStore(), SqliteRecordStore(tmp_path / "r.db")
    try:
        for step in range(3):
            r.turns.append(TurnLatency(110.0 + step, f"resp_{step}", 100.0, 10.0))
            if step == 2:
                r.ended_at = 120.0
            await mem.save(r)
            await sql.save(r)
            assert (await mem.get("c1")) == r
            assert (await sql.get("c1")) == r
        assert not mem._encoders and not sql._encoders   # let go when the call ended
    finally:
        await sql.close()
