"""PostgreSQL stopped for 10 s in the middle of a real call loses no record.

A real ``voicebridge serve`` keeps its records in the test's PostgreSQL; SIPp calls it
and hangs up after a while. The database is stopped (``pg_ctl stop -m fast``) once the
call's first record is in, the call ends while it is away, and it comes back 10 s after
it went. The call must not notice (SIPp's call succeeds, the bridge ends it for the
caller's BYE), the dashboard keeps listing it from the queue, and once PostgreSQL is back
the complete record is there.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path

import pytest

from bridge.bench.sip import Scenario, ServeProcess, run_sipp
from tests.support.interop import require_binary
from tests.support.postgres import Postgres, pg_url, postgres_server, records_by_leg
from tests.support.waiting import until

__all__ = ["pg_url", "postgres_server"]   # fixtures, used by name

DIALPLANS = Path(__file__).parent / "data" / "interop" / "dialplans"
OUTAGE_S = 10.0
CALL_MS = 6000          # the caller hangs up this long after the ACK


@pytest.mark.interop
@pytest.mark.slow
async def test_postgres_stopped_for_10_s_mid_call_loses_no_record(
        tmp_path: Path, postgres_server: Postgres, pg_url: str) -> None:
    require_binary("sipp", "the caller")
    leg = f"pg-outage-{uuid.uuid4().hex[:8]}"
    scenario = Scenario("outage", service="echo").invite().pause(CALL_MS).bye().write(tmp_path)
    serve = ServeProcess(tmp_path / "serve", dialplans=DIALPLANS, records=False,
                         env={"VOICEBRIDGE_RECORDS_URL": pg_url,
                              "VOICEBRIDGE_CLUSTER_NODE_ID": "outage-node"})
    with serve:
        sipp = asyncio.create_task(run_sipp(scenario, serve.sip_port, workdir=tmp_path,
                                            call_id_prefix=leg, limit_s=60))
        leg_id = f"{leg}-1@127.0.0.1"
        await until(lambda: records_by_leg(pg_url, leg_id), 30, poll_s=0.2,
                    what="the call's first record in PostgreSQL")
        assert records_by_leg(pg_url, leg_id)[0]["ended_at"] is None   # live when it goes
        stopped = time.monotonic()
        try:
            await asyncio.to_thread(postgres_server.stop, "fast")
            run = await sipp                       # the caller hangs up during the outage
            assert time.monotonic() - stopped < OUTAGE_S, "the call ended after the outage"
            assert run.successful == 1 and run.failed == 0, run.explain()
            # The dashboard still lists it, from the queue, ended.
            def listed() -> list[str]:
                status, body = serve.get("/calls", token=True)
                assert status == 200
                return [c["end_reason"] for c in json.loads(body)["recent"]
                        if c["node"] == "outage-node"]

            await until(listed, 8, poll_s=0.2, what=lambda: f"the ended call in /calls: "
                        f"{listed()}")
            assert listed() == ["caller_hangup"]
            assert serve.metric("voicebridge_records_queue_depth") >= 1
            await asyncio.sleep(max(0.0, OUTAGE_S - (time.monotonic() - stopped)))
        finally:
            if not postgres_server.running:
                await asyncio.to_thread(postgres_server.start)
        await until(lambda: (records_by_leg(pg_url, leg_id) or [{}])[0].get("ended_at"), 60,
                    poll_s=0.5, what=lambda: "the complete record after the outage\n"
                    + serve.log_tail())
        assert serve.metric("voicebridge_records_write_errors_total") >= 1   # it did wait
        assert serve.metric("voicebridge_records_dropped_total") == 0
        await until(lambda: serve.metric("voicebridge_records_queue_depth") == 0, 30,
                    poll_s=0.5, what="the queue to drain")
    (row,) = records_by_leg(pg_url, leg_id)
    record = row["record"]
    assert (row["state"], row["end_reason"], row["node_id"]) == (
        "ended", "caller_hangup", "outage-node")
    assert record["end_reason"] == "caller_hangup" and record["node"] == "outage-node"
    duration = record["ended_at"] - record["started_at"]
    assert CALL_MS / 1000 - 1 <= duration <= CALL_MS / 1000 + 5, duration
    assert record["leg_call_id"] == leg_id and record["dialplan"] == "echo"
