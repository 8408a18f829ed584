"""The call API (token-protected): the list of calls, one call's record and timeline, and
the operator's hang-up.

    GET  /calls                     live calls and recent history, JSON
    GET  /calls/<id>                a call's record: JSON (Accept: application/json or
                                    ?format=json) or an HTML page with transcript and timeline
    GET  /calls/<id>/timeline.svg   the call's timeline drawing
    GET  /calls/<id>/voicemail.wav  a voicemail call's message (404 without one, or once
                                    the file is gone)
    POST /calls/<id>/hangup         end a live call (202), 404 when it is not live; a
                                    state-changing action (``bridge.web.access``): same
                                    origin, and the CSRF token with the session cookie
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import asdict
from pathlib import Path

from quart import Blueprint, Response, render_template, request
from quart.typing import ResponseReturnValue

from bridge.call.records import CallRecord
from bridge.web.access import action, csrf_token, protected
from bridge.web.state import web_state
from bridge.web.timeline import render_svg, timeline_from_record

log = logging.getLogger(__name__)

calls = Blueprint("calls", __name__)

NO_SUCH_CALL = {"error": "no such call"}

#: A call in a listing: JSON values only.
Summary = dict[str, str | float | int | bool | None]


def summary(record: CallRecord, live: bool) -> Summary:
    """One line of the listing (and the head of a call's page)."""
    end = record.ended_at if record.ended_at is not None else time.time()
    return {
        "call_id": record.call_id, "node": record.node or web_state().settings.cluster.node(),
        "caller": record.caller, "called": record.called,
        "source": record.source, "dialplan": record.dialplan, "live": live,
        "started_at": record.started_at, "ended_at": record.ended_at,
        "duration_s": round(max(0.0, end - record.started_at), 1),
        "end_reason": record.end_reason, "turns": len(record.turns),
        "barge_ins": len(record.barge_ins), "tool_calls": len(record.tool_calls),
    }


def live_records() -> dict[str, CallRecord]:
    return {cid: call.record for cid, call in list(web_state().manager.calls.items())}


async def find(call_id: str) -> tuple[CallRecord | None, bool]:
    """The call's record (live first, then the store) and whether it is live."""
    live = live_records()
    if call_id in live:
        return live[call_id], True
    state = web_state()
    record = await state.manager.store.get(call_id)
    # In a cluster an open record is another node's live call (a lost node's are closed).
    return record, bool(state.cluster and record is not None and record.ended_at is None)


async def listing() -> dict[str, list[Summary]]:
    """The live calls, and the recent ones (``[http] recent_calls``) that are not live."""
    state = web_state()
    live = live_records()
    remote = await remote_calls()
    recent = [r for r in await state.manager.store.recent(state.http.recent_calls)
              if r.call_id not in live and r.call_id not in remote]
    return {"live": [summary(r, True) for r in live.values()] + list(remote.values()),
            "recent": [summary(r, False) for r in recent]}


async def remote_calls() -> dict[str, Summary]:
    """The live calls of the cluster's other nodes (none without a cluster, or while the
    database is away: the page still shows this node's own)."""
    cluster = web_state().cluster
    if cluster is None:
        return {}
    try:
        calls = await cluster.remote_calls()
    except Exception as exc:     # asyncio.CancelledError is not an Exception
        log.warning("could not list the other nodes' calls (%s)", type(exc).__name__)
        return {}
    return {c.call_id: summary(CallRecord(
        call_id=c.call_id, source=c.source, caller=c.caller, called=c.called,
        dialplan=c.dialplan, started_at=c.started_at, node=c.node), True) | {"state": c.state}
        for c in calls}


@calls.get("/calls")
@protected
async def call_list() -> ResponseReturnValue:
    return await listing()


def wants_json() -> bool:
    return request.args.get("format") == "json" or (
        request.accept_mimetypes.best_match(["application/json", "text/html"])
        == "application/json")


@calls.get("/calls/<call_id>")
@protected
async def call_view(call_id: str) -> ResponseReturnValue:
    record, live = await find(call_id)
    if record is None:
        return NO_SUCH_CALL, 404
    if wants_json():
        return dict(record.to_dict(), live=live)
    svg = render_svg(timeline_from_record(record))
    return await render_template("call.html", record=record, live=live, svg=svg,
                                 summary=summary(record, live), csrf=csrf_token(),
                                 turns=[asdict(t) | {"total_ms": t.total_ms}
                                        for t in record.turns])


@calls.get("/calls/<call_id>/timeline.svg")
@protected
async def call_timeline(call_id: str) -> ResponseReturnValue:
    record, _live = await find(call_id)
    if record is None:
        return NO_SUCH_CALL, 404
    return Response(render_svg(timeline_from_record(record)), content_type="image/svg+xml")


@calls.get("/calls/<call_id>/voicemail.wav")
@protected
async def call_voicemail(call_id: str) -> ResponseReturnValue:
    record, _live = await find(call_id)
    path = (record.voicemail or {}).get("audio") if record is not None else None
    if not path:
        return NO_SUCH_CALL, 404
    try:       # only the file the record names, which the bridge itself wrote
        data = await asyncio.to_thread(Path(path).read_bytes)
    except OSError:
        return {"error": "the message's audio is gone"}, 404
    return Response(data, content_type="audio/wav")


@calls.post("/calls/<call_id>/hangup")
@action
async def call_hangup(call_id: str) -> ResponseReturnValue:
    state = web_state()
    if state.manager.hang_up(call_id, "operator"):
        log.info("call %s: hung up from the dashboard", call_id)
        return {"ok": True, "call_id": call_id}, 202
    try:
        owner = await state.cluster.request_hangup(call_id) if state.cluster else None
    except Exception as exc:     # asyncio.CancelledError is not an Exception
        log.warning("could not relay a hang-up of call %s (%s)", call_id, type(exc).__name__)
        return {"error": "the cluster's database is not reachable"}, 503
    if owner is None:
        return {"error": "no such live call"}, 404
    log.info("call %s: hang-up asked of node %s", call_id, owner)
    return {"ok": True, "call_id": call_id, "node": owner}, 202


__all__ = ["calls", "find", "listing", "summary"]
