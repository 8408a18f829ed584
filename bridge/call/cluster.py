"""The cluster's shared live state, in the nodes' shared PostgreSQL.

With ``[records] url`` set, every node runs one ``ClusterNode``. Every ``heartbeat_s`` it
writes its row in ``nodes`` (its id, the HTTP URL it can be reached on, when it started,
``heartbeat_at`` from the database's clock) and replaces its rows in ``live_calls`` (one
per live call: caller, called, dialplan, lifecycle state). So any node's dashboard can
list the live calls of all nodes, and the shared ``calls`` table has everyone's history.

A node silent for ``lost_after_s`` is taken for dead (kill -9, a power cut, a partition):
whichever node notices first marks its open records ``lost`` (ended at its last
heartbeat), writes a minimal ``lost`` record for a live call whose first record never
reached the database, and forgets its live calls. That runs in one transaction under an
advisory lock, and only touches records still open, so two nodes doing it at once, or
again, change nothing more. A node that was only cut off and comes back overwrites those
records with the truth on its next save. A node restarting with the same id closes its
own orphans at start (``crashed``), as a single node does.

Hang-ups across nodes: the dashboard of node A asks to hang up a call that node B owns by
inserting a row in ``hangup_requests`` (only for a call listed live by a node whose
heartbeat is fresh: never a call that does not exist, nor one of a lost node). Every
node looks for requests addressed to it every ``HANGUP_POLL_S`` (a cheap indexed query),
deletes them and ends those calls, so the owner acts within about half a second; the
requester's page sees the call leave the live list on its next refresh.

Nothing here is on a call's path: when PostgreSQL is away a heartbeat or poll fails,
is logged (throttled) and retried on the next round, and the calls go on.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bridge import metrics
from bridge.call.records_pg import READ_TIMEOUT_S, pg_text
from bridge.logthrottle import Throttle

if TYPE_CHECKING:
    from bridge.call.call import Call
    from bridge.call.records_pg import PostgresRecordStore

log = logging.getLogger(__name__)
_throttle = Throttle(log)

#: How often a node looks for hang-ups other nodes asked of it.
HANGUP_POLL_S = 0.5
#: Advisory lock key held while marking a silent node's calls lost.
LOST_LOCK = 0x6C6F7374  # "lost"
#: A hang-up request not acted on this long (its owner is gone) is deleted.
HANGUP_STALE_S = 60
LOST = "lost"
#: A node lost this long (and with nothing left open) leaves the ``nodes`` table.
FORGET_NODE_S = 86400

_SYNC_NODE = """
WITH before AS (SELECT lost_at FROM nodes WHERE node_id = %(node)s)
INSERT INTO nodes (node_id, http_url) VALUES (%(node)s, %(url)s)
ON CONFLICT (node_id) DO UPDATE SET http_url = excluded.http_url, heartbeat_at = now(),
    lost_at = NULL
RETURNING (SELECT lost_at IS NOT NULL FROM before)
"""
_FORGET_ENDED = "DELETE FROM live_calls WHERE node_id = %s AND NOT (call_id = ANY(%s))"
_UPSERT_LIVE = """
INSERT INTO live_calls (call_id, node_id, started_at, caller, called, source, dialplan, state)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (call_id) DO UPDATE SET node_id = excluded.node_id, state = excluded.state
"""
_DEAD_NODES = """
SELECT node_id, extract(epoch FROM heartbeat_at) FROM nodes
WHERE node_id <> %(me)s AND heartbeat_at < now() - make_interval(secs => %(after)s)
  AND (lost_at IS NULL OR EXISTS (SELECT 1 FROM live_calls l WHERE l.node_id = nodes.node_id)
       OR EXISTS (SELECT 1 FROM calls c WHERE c.node_id = nodes.node_id
                                         AND c.ended_at IS NULL))
"""
_FORGET_NODES = ("DELETE FROM nodes WHERE lost_at < now() - make_interval(secs => %s) "
                 "AND NOT EXISTS (SELECT 1 FROM live_calls l WHERE l.node_id = nodes.node_id)")
_LOST_MINIMAL = """
INSERT INTO calls (call_id, node_id, started_at, ended_at, state, caller, called, source,
                   dialplan, end_reason, saved_at, record)
SELECT call_id, node_id, started_at, NULL, 'live', caller, called, source, dialplan, '',
       started_at, jsonb_build_object('call_id', call_id, 'node', node_id,
           'started_at', started_at, 'caller', caller, 'called', called, 'source', source,
           'dialplan', dialplan)
FROM live_calls WHERE node_id = %s
ON CONFLICT (call_id) DO NOTHING
"""
_MARK_LOST = """
UPDATE calls SET ended_at = greatest(%(at)s, started_at), state = 'lost', end_reason = 'lost',
    record = record || jsonb_build_object('ended_at', greatest(%(at)s, started_at),
        'end_reason', 'lost'::text,
        'end_detail', ('node ' || node_id || ' stopped heartbeating')::text)
WHERE node_id = %(node)s AND ended_at IS NULL
RETURNING call_id
"""
_REMOTE_LIVE = """
SELECT l.call_id, l.node_id, l.started_at, l.caller, l.called, l.source, l.dialplan, l.state
FROM live_calls l JOIN nodes n USING (node_id)
WHERE l.node_id <> %s AND n.heartbeat_at >= now() - make_interval(secs => %s)
ORDER BY l.started_at
"""
_REQUEST_HANGUP = """
INSERT INTO hangup_requests (call_id, node_id, requested_by)
SELECT l.call_id, l.node_id, %(me)s FROM live_calls l JOIN nodes n USING (node_id)
WHERE l.call_id = %(call)s AND l.node_id <> %(me)s
  AND n.heartbeat_at >= now() - make_interval(secs => %(after)s)
ON CONFLICT (call_id) DO UPDATE SET requested_at = now()
RETURNING node_id
"""
_TAKE_HANGUPS = "DELETE FROM hangup_requests WHERE node_id = %s RETURNING call_id"
_STALE_HANGUPS = ("DELETE FROM hangup_requests "
                  "WHERE requested_at < now() - make_interval(secs => %s)")


@dataclass(frozen=True)
class RemoteCall:
    """A live call of another node, as its last heartbeat listed it."""

    call_id: str
    node: str
    started_at: float
    caller: str
    called: str
    source: str
    dialplan: str
    state: str


class ClusterNode:
    """This node's heartbeat, the lost-node check and the hang-up relay (module doc)."""

    def __init__(self, store: PostgresRecordStore, calls: Callable[[], Mapping[str, Call]],
                 hang_up: Callable[[str, str], bool], *, node_id: str,
                 http_url: Callable[[], str], heartbeat_s: float, lost_after_s: float) -> None:
        self.store = store
        self.node_id = node_id
        self.heartbeat_s = heartbeat_s
        self.lost_after_s = lost_after_s
        self._calls = calls
        self._hang_up = hang_up
        self._http_url = http_url
        self._task: asyncio.Task[None] | None = None
        self._up_since: float | None = None
        self.lost_marked: list[str] = []

    async def start(self) -> None:
        try:
            await self.heartbeat()       # listed at once, when the database is there
            self._up_since = time.monotonic()
        except Exception as exc:         # the rounds retry
            log.warning("cluster state: first heartbeat failed (%s)", type(exc).__name__)
        self._task = asyncio.create_task(self._run(), name="cluster")

    async def stop(self) -> None:
        """Stop the rounds and leave the cluster cleanly (no live calls, no node row)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait((self._task,))   # its cancellation, not ours
        try:
            async with asyncio.timeout(3), self.store.pool.connection() as conn, \
                    conn.transaction():
                await conn.execute("DELETE FROM live_calls WHERE node_id = %s", (self.node_id,))
                await conn.execute("DELETE FROM nodes WHERE node_id = %s", (self.node_id,))
        except Exception as exc:     # asyncio.CancelledError is not an Exception
            log.warning("could not leave the cluster cleanly (%s)", type(exc).__name__)

    async def _run(self) -> None:
        last_beat = time.monotonic()
        while True:
            await asyncio.sleep(HANGUP_POLL_S)
            try:
                await self.take_hangups()
                now = time.monotonic()
                if now - last_beat >= self.heartbeat_s:
                    last_beat = now
                    await self.heartbeat()
                    self.store.reachable = True
                    if self._up_since is None:
                        self._up_since = now
                    # Judge others only after beating for a whole lost_after_s ourselves:
                    # after a database outage every node looks silent until it beats again.
                    if now - self._up_since >= self.lost_after_s:
                        await self.mark_lost()
            except Exception as exc:
                self._up_since = None
                self.store.reachable = False
                _throttle.log(logging.WARNING, "round", "cluster state: PostgreSQL not "
                              "reachable (%s); the calls go on", type(exc).__name__)

    async def heartbeat(self) -> None:
        """Write this node's row and its live calls."""
        calls = list(self._calls().values())
        rows = [(pg_text(c.call_id), self.node_id, c.record.started_at,
                 pg_text(c.record.caller), pg_text(c.record.called), pg_text(c.record.source),
                 pg_text(c.record.dialplan), c.state.state.value)
                for c in calls]
        async with self.store.pool.connection() as conn, conn.transaction():
            cur = await conn.execute(_SYNC_NODE, {"node": self.node_id, "url": self._http_url()})
            row = await cur.fetchone()
            await conn.execute(_FORGET_ENDED, (self.node_id, [r[0] for r in rows]))
            if rows:
                async with conn.cursor() as many:
                    await many.executemany(_UPSERT_LIVE, rows)
        if row and row[0]:
            # Cut off long enough to be taken for dead: put the truth back for the calls
            # that are in fact still live (their records were marked lost).
            log.warning("this node had been taken for lost: saving its %d live call "
                        "record(s) again", len(calls))
            for call in calls:
                await self.store.save(call.record)

    async def mark_lost(self) -> list[str]:
        """Mark the calls of every node silent for ``lost_after_s`` lost; their ids."""
        lost: list[str] = []
        async with self.store.pool.connection() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (LOST_LOCK,))
            cur = await conn.execute(_DEAD_NODES, {"me": self.node_id,
                                                   "after": self.lost_after_s})
            for node, last_seen in await cur.fetchall():
                await conn.execute(_LOST_MINIMAL, (node,))
                cur = await conn.execute(_MARK_LOST, {"at": float(last_seen), "node": node})
                ids = [str(r[0]) for r in await cur.fetchall()]
                await conn.execute("DELETE FROM live_calls WHERE node_id = %s", (node,))
                await conn.execute("DELETE FROM hangup_requests WHERE node_id = %s", (node,))
                await conn.execute("UPDATE nodes SET lost_at = now() WHERE node_id = %s",
                                   (node,))
                if ids:
                    log.warning("node %s stopped heartbeating: %d call(s) marked lost",
                                node, len(ids))
                lost += ids
            await conn.execute(_FORGET_NODES, (FORGET_NODE_S,))
        if lost:
            metrics.CLUSTER_CALLS_LOST.inc(len(lost))
            self.lost_marked += lost
        return lost

    async def take_hangups(self) -> None:
        """End the calls other nodes asked this one to hang up."""
        async with self.store.pool.connection() as conn, conn.transaction():
            cur = await conn.execute(_TAKE_HANGUPS, (self.node_id,))
            wanted = [str(r[0]) for r in await cur.fetchall()]
            await conn.execute(_STALE_HANGUPS, (HANGUP_STALE_S,))
        for call_id in wanted:
            if self._hang_up(call_id, "operator"):
                metrics.CLUSTER_HANGUPS.labels(outcome="acted").inc()
                log.info("call %s: hung up at another node's request", call_id)

    async def remote_calls(self) -> list[RemoteCall]:
        """The live calls of the other nodes that are alive (none while the database is
        known to be away: the dashboard does not wait on it)."""
        if not self.store.reachable:
            return []
        async with self.store.pool.connection(timeout=READ_TIMEOUT_S) as conn:
            cur = await conn.execute(_REMOTE_LIVE, (self.node_id, self.lost_after_s))
            rows: list[Any] = await cur.fetchall()
        return [RemoteCall(str(r[0]), str(r[1]), float(r[2]), *(str(x) for x in r[3:]))
                for r in rows]

    async def request_hangup(self, call_id: str) -> str | None:
        """Ask the node that owns ``call_id`` to end it; that node's id, or None when no
        live node lists such a call. Raises while the database is away."""
        if not self.store.reachable:
            raise ConnectionError("the cluster's database is not reachable")
        async with self.store.pool.connection() as conn, conn.transaction():
            cur = await conn.execute(_REQUEST_HANGUP, {"me": self.node_id, "call": call_id,
                                                       "after": self.lost_after_s})
            row = await cur.fetchone()
        metrics.CLUSTER_HANGUPS.labels(outcome="requested" if row else "refused").inc()
        return str(row[0]) if row else None


__all__ = ["HANGUP_POLL_S", "LOST", "ClusterNode", "RemoteCall"]
