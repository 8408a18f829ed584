"""Call records in PostgreSQL, shared by every node of a cluster.

``PostgresRecordStore`` is the ``RecordStore`` for ``[records] url = "postgresql://..."``
(psycopg 3, async, one ``AsyncConnectionPool``). One row per call in ``calls``: the
record as JSONB plus the columns the listings and the cluster need (call id, node id,
started, ended, state). The schema is versioned (``schema_version``): the numbered
migrations in :data:`MIGRATIONS` are applied in order at start, under an advisory lock,
so two nodes starting together neither race nor apply one twice.

Write-behind. A call never waits on the database: ``save`` encodes the record on the
loop (as every store does), puts the row in a bounded queue and returns. One writer task
drains the queue in batches; a row saved again before it was written replaces the
queued one (a save is the whole record, so the newest is all that matters). When
PostgreSQL cannot be reached the writer keeps the rows and retries with back-off (0.2 s
doubling to ``retry_max_s``); past ``queue_max`` calls waiting, the oldest is dropped
and counted (``voicebridge_records_dropped_total``). ``get`` and ``recent`` see queued
rows too, so a record is readable the moment it is saved. ``close`` flushes for up to
``flush_s`` before it gives up (and says how many it lost).

The cluster's live state (``nodes``, ``live_calls``, ``hangup_requests``) lives in the
same database; ``bridge.call.cluster`` reads and writes it through :attr:`pool`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from bridge import metrics
from bridge.call.records import CRASHED, CallRecord, RecordEncoder, _encode
from bridge.errors import ConfigError
from bridge.logthrottle import Throttle

log = logging.getLogger(__name__)
_throttle = Throttle(log)

#: Key of the advisory lock that migrations hold (any constant shared by all nodes).
MIGRATION_LOCK = 0x766F6963  # "voic"

#: Ordered, numbered schema steps. Add new ones at the end; never edit an applied one.
MIGRATIONS: tuple[tuple[int, str], ...] = (
    (1, """
CREATE TABLE calls (
    call_id     text PRIMARY KEY,
    node_id     text NOT NULL,
    started_at  double precision NOT NULL,
    ended_at    double precision,
    state       text NOT NULL,
    caller      text NOT NULL,
    called      text NOT NULL,
    source      text NOT NULL,
    dialplan    text NOT NULL,
    end_reason  text NOT NULL,
    saved_at    double precision NOT NULL,
    record      jsonb NOT NULL
);
CREATE INDEX calls_started ON calls (started_at DESC);
CREATE INDEX calls_open ON calls (node_id) WHERE ended_at IS NULL;
CREATE INDEX calls_state ON calls (state);
"""),
    (2, """
CREATE TABLE nodes (
    node_id       text PRIMARY KEY,
    http_url      text NOT NULL,
    started_at    timestamptz NOT NULL DEFAULT now(),
    heartbeat_at  timestamptz NOT NULL DEFAULT now(),
    lost_at       timestamptz
);
CREATE TABLE live_calls (
    call_id     text PRIMARY KEY,
    node_id     text NOT NULL,
    started_at  double precision NOT NULL,
    caller      text NOT NULL,
    called      text NOT NULL,
    source      text NOT NULL,
    dialplan    text NOT NULL,
    state       text NOT NULL
);
CREATE INDEX live_calls_node ON live_calls (node_id);
CREATE TABLE hangup_requests (
    call_id       text PRIMARY KEY,
    node_id       text NOT NULL,
    requested_by  text NOT NULL,
    requested_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX hangup_requests_node ON hangup_requests (node_id);
"""),
)
LATEST = MIGRATIONS[-1][0]

_UPSERT = """
INSERT INTO calls (call_id, node_id, started_at, ended_at, state, caller, called, source,
                   dialplan, end_reason, saved_at, record)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s::jsonb)
ON CONFLICT (call_id) DO UPDATE SET
    node_id = excluded.node_id, ended_at = excluded.ended_at, state = excluded.state,
    dialplan = excluded.dialplan, end_reason = excluded.end_reason,
    saved_at = excluded.saved_at, record = excluded.record
"""

_CLOSE_ORPHANS = """
UPDATE calls SET ended_at = saved_at, state = %(reason)s::text, end_reason = %(reason)s::text,
    record = record || jsonb_build_object('ended_at', saved_at, 'end_reason', %(reason)s::text,
                                          'end_detail', %(detail)s::text)
WHERE node_id = %(node)s AND ended_at IS NULL AND saved_at < %(before)s
RETURNING call_id
"""

#: How long a read (the dashboard's) waits for a connection before it gives up.
READ_TIMEOUT_S = 2.0
#: Rows written per transaction by the writer.
BATCH = 200
RETRY_FIRST_S = 0.2


@dataclass(frozen=True)
class _Row:
    call_id: str
    values: tuple[Any, ...]
    json: str


async def migrate(conn: Any) -> int:
    """Bring the schema to :data:`LATEST` (one transaction, under the advisory lock);
    returns the version it found."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        await conn.execute("CREATE TABLE IF NOT EXISTS schema_version ("
                           "version integer PRIMARY KEY, "
                           "applied_at timestamptz NOT NULL DEFAULT now())")
        cur = await conn.execute("SELECT coalesce(max(version), 0) FROM schema_version")
        row = await cur.fetchone()
        found = int(row[0]) if row else 0
        for version, sql in MIGRATIONS:
            if version > found:
                await conn.execute(sql)
                await conn.execute("INSERT INTO schema_version (version) VALUES (%s)",
                                   (version,))
    return found


class PostgresRecordStore:
    """Call records in PostgreSQL behind a bounded write-behind queue (module doc)."""

    def __init__(self, url: str, *, node_id: str, queue_max: int = 10_000,
                 pool_max: int = 4, flush_s: float = 5.0, retry_max_s: float = 5.0,
                 connect_timeout_s: float = 5.0) -> None:
        from psycopg_pool import AsyncConnectionPool  # noqa: PLC0415

        self.node_id = node_id
        self.queue_max = max(1, queue_max)
        self.flush_s = flush_s
        self.retry_max_s = retry_max_s
        self.pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
            url, min_size=1, max_size=max(2, pool_max), open=False,
            timeout=connect_timeout_s, reconnect_timeout=float("inf"),
            kwargs={"connect_timeout": max(1, int(connect_timeout_s))},
            check=AsyncConnectionPool.check_connection)
        self.poll: Callable[[], object] | None = None
        self._pending: OrderedDict[str, _Row] = OrderedDict()
        self._wake = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._encoders: dict[str, RecordEncoder] = {}
        self._migrated = False
        self._closed = False
        self.dropped = 0
        self.write_errors = 0
        #: False from a failed write until the next good one: reads do not wait on a
        #: database known to be away (the dashboard stays quick through an outage).
        self.reachable = True
        #: When this store opened: records saved before it are a previous run's.
        self.opened_at = time.time()
        #: close_orphans could not run at start: the writer runs it once it can.
        self.orphans_due = False

    # ---- life cycle ------------------------------------------------------------------------

    async def open(self, wait_s: float = 10.0) -> None:
        """Open the pool and migrate. A database that does not answer within ``wait_s`` is
        not fatal: the writer migrates once it does, and saves queue until then."""
        self.opened_at = time.time()
        await self.pool.open(wait=False)
        try:
            async with asyncio.timeout(wait_s):
                await self._migrate()
        except Exception as exc:       # not reachable yet: not fatal (module doc)
            log.warning("PostgreSQL not reachable at start (%s): call records queue until "
                        "it is", type(exc).__name__)
        self._writer = asyncio.create_task(self._write_loop(), name="records-writer")

    async def _migrate(self) -> None:
        async with self.pool.connection() as conn:
            found = await migrate(conn)
        if found < LATEST:
            log.info("call records schema migrated from version %d to %d", found, LATEST)
        self._migrated = True

    async def close(self) -> None:
        """Flush the queue (up to ``flush_s``), stop the writer, close the pool."""
        if self._closed:
            return
        self._closed = True
        self._wake.set()
        if self._writer is not None:
            try:
                async with asyncio.timeout(self.flush_s):
                    while self._pending and not self._writer.done():  # noqa: ASYNC110
                        await asyncio.sleep(0.05)
            except TimeoutError:
                pass
            if self._pending:
                lost = len(self._pending)
                self.dropped += lost
                metrics.RECORDS_DROPPED.inc(lost)
                log.error("PostgreSQL: %d call record(s) not written at shutdown "
                          "(not reachable within %.0f s)", lost, self.flush_s)
                self._pending.clear()
            self._writer.cancel()
            await asyncio.wait((self._writer,))   # its cancellation, not ours
        metrics.RECORDS_QUEUE.set(0)
        await self.pool.close()

    # ---- saving ----------------------------------------------------------------------------

    async def save(self, record: CallRecord) -> None:
        if self._closed:
            raise RuntimeError("record store is closed")
        if self.poll is not None:
            self.poll()
        if not record.node:
            record.node = self.node_id
        text = _encode(self._encoders, record)
        if "\\u0000" in text:       # JSONB refuses NUL: a caller's name may carry one
            text = text.replace("\\u0000", "\\ufffd")
        now = time.time()
        state = "live" if record.ended_at is None else "ended"
        row = _Row(record.call_id, (
            record.call_id, pg_text(record.node), record.started_at, record.ended_at, state,
            pg_text(record.caller), pg_text(record.called), pg_text(record.source),
            pg_text(record.dialplan), pg_text(record.end_reason), now, text), text)
        self._enqueue(row)

    def _enqueue(self, row: _Row) -> None:
        pending = self._pending
        pending[row.call_id] = row
        pending.move_to_end(row.call_id)
        while len(pending) > self.queue_max:
            old, _ = pending.popitem(last=False)
            self.dropped += 1
            metrics.RECORDS_DROPPED.inc()
            _throttle.log(logging.ERROR, "dropped", "call records queue full (%d): the "
                          "oldest unwritten record (%s) was dropped", self.queue_max, old)
        metrics.RECORDS_QUEUE.set(len(pending))
        self._wake.set()

    @property
    def queued(self) -> int:
        """Records waiting to be written."""
        return len(self._pending)

    async def _write_loop(self) -> None:
        delay = RETRY_FIRST_S
        while True:
            if not self._pending and not self.orphans_due:
                self._wake.clear()
                await self._wake.wait()
                continue
            batch = list(self._pending.values())[:BATCH]
            try:
                if not self._migrated:
                    await self._migrate()
                if self.orphans_due:
                    await self._close_orphans_late()
                if batch:
                    await self._write(batch)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.reachable = False
                self.write_errors += 1
                metrics.RECORDS_WRITE_ERRORS.inc()
                _throttle.log(logging.WARNING, "write", "PostgreSQL: could not write %d call "
                              "record(s) (%s); %d queued, retrying in %.1f s", len(batch),
                              type(exc).__name__, len(self._pending), delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.retry_max_s)
                continue
            delay = RETRY_FIRST_S
            self.reachable = True
            for row in batch:
                if self._pending.get(row.call_id) is row:   # not saved again meanwhile
                    del self._pending[row.call_id]
            metrics.RECORDS_QUEUE.set(len(self._pending))

    async def _write(self, batch: list[_Row]) -> None:
        import psycopg  # noqa: PLC0415

        try:
            async with self.pool.connection() as conn, conn.cursor() as cur:
                await cur.executemany(_UPSERT, [row.values for row in batch])
        except (psycopg.DataError, psycopg.IntegrityError):
            # A row the database refuses is refused for ever: write the others one by
            # one and drop (and count) that one, or it would block the queue.
            for row in batch:
                try:
                    async with self.pool.connection() as conn:
                        await conn.execute(_UPSERT, row.values)
                except (psycopg.DataError, psycopg.IntegrityError) as exc:
                    if self._pending.get(row.call_id) is row:
                        del self._pending[row.call_id]
                    self.dropped += 1
                    metrics.RECORDS_DROPPED.inc()
                    _throttle.log(logging.ERROR, "refused", "PostgreSQL refused the record "
                                  "of call %s (%s): dropped", row.call_id, type(exc).__name__)

    # ---- reading ---------------------------------------------------------------------------

    async def get(self, call_id: str) -> CallRecord | None:
        row = self._pending.get(call_id)
        if row is not None:
            return CallRecord.from_dict(json.loads(row.json))
        async with self.pool.connection(timeout=READ_TIMEOUT_S) as conn:
            cur = await conn.execute("SELECT record FROM calls WHERE call_id = %s", (call_id,))
            found = await cur.fetchone()
        return CallRecord.from_dict(found[0]) if found else None

    async def recent(self, n: int = 20) -> list[CallRecord]:
        """The ``n`` newest records, queued ones included. While PostgreSQL is away: the
        queued ones only (the dashboard keeps working through an outage)."""
        records = {row.call_id: json.loads(row.json) for row in self._pending.values()}
        if not self.reachable:
            return _newest(records.values(), n)
        try:
            async with self.pool.connection(timeout=READ_TIMEOUT_S) as conn:
                cur = await conn.execute(
                    "SELECT call_id, record FROM calls ORDER BY started_at DESC LIMIT %s", (n,))
                for call_id, data in await cur.fetchall():
                    records.setdefault(call_id, data)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            _throttle.log(logging.WARNING, "read", "PostgreSQL: could not list call records "
                          "(%s); showing the queued ones", type(exc).__name__)
        return _newest(records.values(), n)

    # ---- upkeep ----------------------------------------------------------------------------

    async def close_orphans(self) -> list[str]:
        """Close the records this node (same node id) left open when it died: ``crashed``,
        ended at their last save (only records saved before this store opened: this
        run's live calls are not orphans, even when this runs late). Other nodes' calls
        are theirs (or the cluster's lost check's). Also forgets this node's stale
        live-call rows."""
        if not self._migrated:
            await self._migrate()
        async with self.pool.connection() as conn, conn.transaction():
            cur = await conn.execute(_CLOSE_ORPHANS, {
                "reason": CRASHED, "node": self.node_id, "before": self.opened_at,
                "detail": "the bridge stopped while the call was live"})
            closed = [str(r[0]) for r in await cur.fetchall()]
            await conn.execute("DELETE FROM live_calls WHERE node_id = %s", (self.node_id,))
            await conn.execute("DELETE FROM hangup_requests WHERE node_id = %s",
                               (self.node_id,))
        return closed

    async def _close_orphans_late(self) -> None:
        """``close_orphans`` once; ``orphans_due`` stays set (and it raises) on failure."""
        closed = await self.close_orphans()
        self.orphans_due = False
        if closed:
            log.warning("closed %d call record(s) a previous run of node %s left open (end "
                        "reason crashed, ended at their last save)", len(closed), self.node_id)

    async def integrity(self) -> str:
        """``"ok"`` when the schema is at :data:`LATEST` and every row's columns agree with
        its record; else what is wrong."""
        async with self.pool.connection() as conn:
            cur = await conn.execute("SELECT max(version) FROM schema_version")
            row = await cur.fetchone()
            version = int(row[0]) if row and row[0] is not None else 0
            if version != LATEST:
                return f"schema version {version}, expected {LATEST}"
            cur = await conn.execute(
                "SELECT count(*) FROM calls WHERE record->>'call_id' IS DISTINCT FROM call_id "
                "OR (ended_at IS NULL) <> (record->'ended_at' = 'null'::jsonb)")
            row = await cur.fetchone()
        bad = int(row[0]) if row else 0
        return "ok" if bad == 0 else f"{bad} row(s) disagree with their record"


def pg_text(value: str) -> str:
    """Text for a PostgreSQL column: it cannot hold NUL."""
    return value.replace("\x00", "\ufffd") if "\x00" in value else value


def _newest(records: Iterable[dict[str, Any]], n: int) -> list[CallRecord]:
    out = [CallRecord.from_dict(d) for d in records]
    out.sort(key=lambda r: r.started_at, reverse=True)
    return out[:n]


async def open_postgres_store(url: str, node_id: str, *, queue_max: int = 10_000,
                              pool_max: int = 4, flush_s: float = 5.0) -> PostgresRecordStore:
    """The store ``voicebridge serve`` uses for ``[records] url``: opened, migrated, and
    this node's orphans (records a previous run with the same node id left open) closed."""
    try:
        import psycopg_pool  # noqa: F401, PLC0415
    except ImportError:
        raise ConfigError("[records] url: PostgreSQL needs the postgres extra "
                          "(pip install 'voicebridge[postgres]')") from None
    store = PostgresRecordStore(url, node_id=node_id, queue_max=queue_max,
                                pool_max=pool_max, flush_s=flush_s)
    await store.open()
    store.orphans_due = True
    with contextlib.suppress(Exception):    # the writer retries (with back-off)
        await store._close_orphans_late()
    if store.orphans_due:
        store._wake.set()
        log.warning("PostgreSQL: the records a previous run of node %s left open will be "
                    "closed once it is reachable", node_id)
    return store


__all__ = ["LATEST", "MIGRATIONS", "PostgresRecordStore", "migrate", "open_postgres_store",
           "pg_text"]
