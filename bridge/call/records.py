"""Call records: what every call leaves behind, and where it is kept.

A ``CallRecord`` accumulates as the call goes (transcript, barge-ins, tool calls, DTMF,
token usage, per-turn latency) and is saved through a ``RecordStore`` at the start, after
every turn and at the end, so a crash loses at most the current turn.

``SqliteRecordStore`` is the default: stdlib ``sqlite3`` in WAL mode, one row per call
(indexed columns for listing plus the whole record as JSON). All SQLite work runs on one
dedicated thread that owns the connection, so the event loop never waits on the disk and
the connection is never shared between threads. PostgreSQL, shared by the nodes of a
cluster, is ``bridge.call.records_pg`` behind the same ``RecordStore`` protocol.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol


@dataclass(frozen=True)
class TranscriptEntry:
    role: str                 # "caller" | "agent"
    item_id: str
    text: str
    at: float                 # epoch seconds (agent: first audio handed to the leg or arrival)
    truncated: bool = False   # agent text trimmed to what the caller heard (barge-in)


@dataclass(frozen=True)
class BargeIn:
    at: float                 # epoch seconds, speech_started reached the bridge
    item_id: str
    heard_ms: int             # agent audio of the item actually handed to the leg
    received_ms: int          # agent audio of the item received from upstream so far
    truncated_ms: int | None  # audio_end_ms sent in conversation.item.truncate (None: not sent)
    dropped_ms: int           # audio that was buffered for playout and thrown away


@dataclass(frozen=True)
class ToolCallRecord:
    at: float
    response_id: str
    call_id: str
    name: str
    arguments: str
    ok: bool
    output: str
    error: str | None
    duration_s: float


@dataclass(frozen=True)
class DtmfRecord:
    at: float
    digit: str
    direction: str            # "in" (caller pressed) | "out" (bridge sent)
    action: str               # "transfer" | "hangup" | "say" | "model" | "ignored" | "sent"


@dataclass(frozen=True)
class SpeechSpan:
    """When someone was speaking (the dashboard's timeline lanes), epoch seconds like every
    other time in the record.

    agent: from the first to the end of the last frame of the item handed to the leg in
    one continuous run (an underrun, hold or barge-in closes it; a resumed item opens a
    new span). caller: server VAD's ``audio_start_ms`` (+ prefix padding) to
    ``audio_end_ms`` (- the silence it waited for), mapped from session audio time onto
    the times that audio went upstream; see ``Call._audio_wall``.
    """

    role: str                 # "caller" | "agent"
    item_id: str
    start: float
    end: float


@dataclass(frozen=True)
class TurnLatency:
    """Bridge-added latency of one reply: speech_stopped -> first reply frame to the leg.

    ``upstream_ms``: speech_stopped reaching the bridge -> first audio delta arriving.
    ``pipeline_ms``: first audio delta arriving -> its first frame handed to the leg
    (resampling, buffering and waiting for the next 20 ms tick): our share.
    """

    at: float
    response_id: str
    upstream_ms: float
    pipeline_ms: float

    @property
    def total_ms(self) -> float:
        return self.upstream_ms + self.pipeline_ms


@dataclass
class CallRecord:
    call_id: str
    leg_call_id: str = ""
    source: str = ""
    caller: str = ""
    called: str = ""
    dialplan: str = ""
    started_at: float = 0.0
    connected_at: float | None = None     # upstream session ready
    ended_at: float | None = None
    end_reason: str = ""
    end_detail: str = ""
    transferred_to: str | None = None
    fallback: str | None = None           # why the fallback ran, if it did
    session_ids: list[str] = field(default_factory=list)
    transcript: list[TranscriptEntry] = field(default_factory=list)
    barge_ins: list[BargeIn] = field(default_factory=list)
    tool_calls: list[ToolCallRecord] = field(default_factory=list)
    dtmf: list[DtmfRecord] = field(default_factory=list)
    turns: list[TurnLatency] = field(default_factory=list)
    speech: list[SpeechSpan] = field(default_factory=list)
    usage: dict[str, Any] = field(default_factory=dict)
    responses: int = 0
    errors: list[str] = field(default_factory=list)
    #: The node that ran the call (``[cluster] node_id``); stamped by a shared store.
    node: str = ""
    #: The post-call summary (``bridge.call.summary``): status, text, disposition, fields.
    summary: dict[str, Any] | None = None
    #: Live analysis, one entry per analysed caller turn (``bridge.call.analysis``)
    analysis: list[dict[str, Any]] = field(default_factory=list)
    #: Tags set on the call (by analysis actions)
    tags: list[str] = field(default_factory=list)
    #: The call's recording (``[recording]``): the WAV file's path, "" when none.
    recording: str = ""
    #: A voicemail call's message (bridge.call.voicemail): ``audio`` (the WAV's path),
    #: ``transcript``, ``duration_s``, ``ended_by``, ``webhook`` (HTTP status or error).
    voicemail: dict[str, Any] | None = None

    def add_usage(self, usage: dict[str, Any] | None) -> None:
        """Sum a ``response.done`` usage block into ``usage`` (numbers add, dicts recurse)."""
        if usage:
            _sum_into(self.usage, usage)

    def to_dict(self) -> dict[str, Any]:
        # Saved after every turn of every call, on the event loop: a shallow copy per
        # entry (the entries are flat frozen values) instead of asdict's deep recursion.
        d = dict(vars(self))
        for key in ("transcript", "barge_ins", "tool_calls", "dtmf", "speech"):
            d[key] = [dict(vars(e)) for e in d[key]]
        d["turns"] = [dict(vars(t), total_ms=t.total_ms) for t in self.turns]
        d["session_ids"] = list(self.session_ids)
        d["errors"] = list(self.errors)
        d["analysis"] = [dict(a) for a in self.analysis]
        d["tags"] = list(self.tags)
        d["usage"] = json.loads(json.dumps(self.usage))
        if self.voicemail is not None:
            d["voicemail"] = dict(self.voicemail)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CallRecord:
        d = dict(d)
        lists: dict[str, Any] = {
            "transcript": TranscriptEntry, "barge_ins": BargeIn, "tool_calls": ToolCallRecord,
            "dtmf": DtmfRecord, "speech": SpeechSpan,
        }
        for key, typ in lists.items():
            d[key] = [typ(**x) for x in d.get(key, [])]
        d["turns"] = [TurnLatency(**{k: v for k, v in x.items() if k != "total_ms"})
                      for x in d.get("turns", [])]
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, separators=(",", ":"))


_LIST_FIELDS = ("transcript", "barge_ins", "tool_calls", "dtmf", "speech", "turns")


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _entry_json(key: str, entry: Any) -> str:
    if key == "turns":
        return _dumps(dict(vars(entry), total_ms=entry.total_ms))
    return _dumps(dict(vars(entry)))


class RecordEncoder:
    """``CallRecord.to_json`` for one call saved again and again, in O(what changed).

    A record is saved after every turn; its lists (transcript, speech spans, turns...)
    only grow, so re-encoding all of them made each save cost more than the last
    (quadratic over a long call) and ran on the event loop. The entries are frozen values:
    each one's JSON is kept and reused while the same object sits at the same position
    (an entry replaced in place, such as a transcript trimmed at barge-in, is encoded
    again). The output is byte for byte ``record.to_json()``.
    """

    __slots__ = ("_lists",)

    def __init__(self) -> None:
        self._lists: dict[str, tuple[list[Any], list[str]]] = {}

    def encode(self, record: CallRecord) -> str:
        parts: list[str] = []
        for key, value in vars(record).items():
            if key in _LIST_FIELDS:
                text = "[" + ",".join(self._encode_list(key, value)) + "]"
            else:
                text = _dumps(value)
            parts.append(_dumps(key) + ":" + text)
        return "{" + ",".join(parts) + "}"

    def _encode_list(self, key: str, entries: list[Any]) -> list[str]:
        seen, texts = self._lists.get(key) or ([], [])
        n = min(len(seen), len(entries))
        same = 0
        while same < n and seen[same] is entries[same]:
            same += 1
        del seen[same:], texts[same:]
        for e in entries[same:]:
            seen.append(e)
            texts.append(_entry_json(key, e))
        self._lists[key] = (seen, texts)
        return texts


def _sum_into(acc: dict[str, Any], add: dict[str, Any]) -> None:
    for k, v in add.items():
        if isinstance(v, bool):
            continue
        if isinstance(v, int | float):
            cur = acc.get(k, 0)
            acc[k] = (cur if isinstance(cur, int | float) else 0) + v
        elif isinstance(v, dict):
            sub = acc.get(k)
            if not isinstance(sub, dict):
                sub = acc[k] = {}
            _sum_into(sub, v)


class RecordStore(Protocol):
    """Where call records go. ``save`` is an upsert, called repeatedly as a call goes.

    ``poll`` (the media clock's, set by the call manager) runs before a save encodes the
    record on the loop thread, which takes a while on a long record: a tick due by then
    goes out first."""

    poll: Callable[[], object] | None

    async def save(self, record: CallRecord) -> None: ...

    async def get(self, call_id: str) -> CallRecord | None: ...

    async def recent(self, n: int = 20) -> list[CallRecord]: ...

    async def close(self) -> None: ...


def _encode(encoders: dict[str, RecordEncoder], record: CallRecord) -> str:
    """Encode through the call's own ``RecordEncoder``; the last save (the call ended)
    lets it go."""
    if record.ended_at is not None:
        enc = encoders.pop(record.call_id, None)
        return enc.encode(record) if enc is not None else record.to_json()
    enc = encoders.get(record.call_id)
    if enc is None:
        enc = encoders[record.call_id] = RecordEncoder()
    return enc.encode(record)


class MemoryRecordStore:
    """Records in a dict (tests, benchmarks). Saves a copy, like a real store would."""

    def __init__(self) -> None:
        self._rows: dict[str, str] = {}
        self._encoders: dict[str, RecordEncoder] = {}
        self.saves = 0
        self.poll: Callable[[], object] | None = None

    async def save(self, record: CallRecord) -> None:
        if self.poll is not None:
            self.poll()
        self._rows[record.call_id] = _encode(self._encoders, record)
        self.saves += 1

    async def get(self, call_id: str) -> CallRecord | None:
        row = self._rows.get(call_id)
        return CallRecord.from_dict(json.loads(row)) if row else None

    async def recent(self, n: int = 20) -> list[CallRecord]:
        recs = [CallRecord.from_dict(json.loads(r)) for r in self._rows.values()]
        recs.sort(key=lambda r: r.started_at, reverse=True)
        return recs[:n]

    async def close(self) -> None:
        return None


_SCHEMA = """
CREATE TABLE IF NOT EXISTS calls (
    call_id     TEXT PRIMARY KEY,
    started_at  REAL NOT NULL,
    ended_at    REAL,
    caller      TEXT NOT NULL,
    called      TEXT NOT NULL,
    source      TEXT NOT NULL,
    dialplan    TEXT NOT NULL,
    end_reason  TEXT NOT NULL,
    record      TEXT NOT NULL,
    saved_at    REAL
);
CREATE INDEX IF NOT EXISTS calls_started ON calls(started_at);
"""
#: What closes a record left open by a process that died (``close_orphans``).
CRASHED = "crashed"

_UPSERT = """
INSERT INTO calls (call_id, started_at, ended_at, caller, called, source, dialplan,
                   end_reason, record, saved_at)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT(call_id) DO UPDATE SET
    ended_at = excluded.ended_at, end_reason = excluded.end_reason,
    dialplan = excluded.dialplan, record = excluded.record, saved_at = excluded.saved_at
"""


class SqliteRecordStore:
    """Call records in an SQLite file (WAL), written from one worker thread."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="records")
        self._conn: sqlite3.Connection | None = None
        self._closed = False
        self._encoders: dict[str, RecordEncoder] = {}
        self.poll: Callable[[], object] | None = None

    def _db(self) -> sqlite3.Connection:
        # Runs on the worker thread only: the connection never leaves it.
        if self._conn is None:
            if self.path != ":memory:":
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path)
            conn.execute("PRAGMA journal_mode=WAL")
            # NORMAL is durable across application crashes in WAL mode (only an OS crash
            # can lose the last transactions), and avoids an fsync per turn.
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.executescript(_SCHEMA)
            columns = {row[1] for row in conn.execute("PRAGMA table_info(calls)")}
            if "saved_at" not in columns:          # a file from before the column existed
                conn.execute("ALTER TABLE calls ADD COLUMN saved_at REAL")
            self._conn = conn
        return self._conn

    async def _run(self, fn: Any, *args: Any) -> Any:
        if self._closed:
            raise RuntimeError("record store is closed")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, fn, *args)

    def _save(self, row: tuple[Any, ...]) -> None:
        db = self._db()
        with db:
            db.execute(_UPSERT, row)

    async def save(self, record: CallRecord) -> None:
        if self.poll is not None:
            self.poll()
        # Serialize on the loop thread: the record keeps changing while the worker writes.
        row = (record.call_id, record.started_at, record.ended_at, record.caller,
               record.called, record.source, record.dialplan, record.end_reason,
               _encode(self._encoders, record), time.time())
        await self._run(self._save, row)

    def _close_orphans(self) -> list[str]:
        db = self._db()
        closed = []
        with db:
            rows = db.execute("SELECT call_id, record, saved_at, started_at FROM calls "
                              "WHERE ended_at IS NULL").fetchall()
            for call_id, text, saved_at, started_at in rows:
                data = json.loads(text)
                ended = float(saved_at if saved_at is not None else started_at)
                data.update(ended_at=ended, end_reason=CRASHED,
                            end_detail="the bridge stopped while the call was live")
                db.execute("UPDATE calls SET ended_at = ?, end_reason = ?, record = ? "
                           "WHERE call_id = ?", (ended, CRASHED, json.dumps(data), call_id))
                closed.append(str(call_id))
        return closed

    async def close_orphans(self) -> list[str]:
        """Close the records a process that died left open (no end): ``crashed``, ended
        at their last save. Call it at start-up, before any call; returns their ids."""
        closed: list[str] = await self._run(self._close_orphans)
        return closed

    def _integrity(self) -> str:
        return str(self._db().execute("PRAGMA integrity_check").fetchone()[0])

    async def integrity(self) -> str:
        """SQLite's own check of the file: ``"ok"`` when it is sound."""
        result: str = await self._run(self._integrity)
        return result

    def _get(self, call_id: str) -> str | None:
        cur = self._db().execute("SELECT record FROM calls WHERE call_id = ?", (call_id,))
        row = cur.fetchone()
        return str(row[0]) if row else None

    async def get(self, call_id: str) -> CallRecord | None:
        text = await self._run(self._get, call_id)
        return CallRecord.from_dict(json.loads(text)) if text else None

    def _recent(self, n: int) -> list[str]:
        cur = self._db().execute(
            "SELECT record FROM calls ORDER BY started_at DESC LIMIT ?", (n,))
        return [str(r[0]) for r in cur.fetchall()]

    async def recent(self, n: int = 20) -> list[CallRecord]:
        rows: list[str] = await self._run(self._recent, n)
        return [CallRecord.from_dict(json.loads(t)) for t in rows]

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    async def close(self) -> None:
        if self._closed:
            return
        await self._run(self._close)
        self._closed = True
        self._pool.shutdown(wait=True)


__all__ = [
    "CRASHED", "BargeIn", "CallRecord", "DtmfRecord", "MemoryRecordStore", "RecordEncoder",
    "RecordStore",
    "SpeechSpan", "SqliteRecordStore", "ToolCallRecord", "TranscriptEntry", "TurnLatency",
]
