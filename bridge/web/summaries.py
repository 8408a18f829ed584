"""The operator's "Summarise" on an ended call's page.

    POST /calls/<id>/summary    summarise an ended call again (or for the first time) with
                                its dialplan's ``[summary]`` settings: 202 queued; 404 no
                                such call; 409 the call is live or already being
                                summarised; 503 the summary queue is full or not running.
                                A state-changing action (``bridge.web.access``): same origin,
                                and the CSRF token with the session cookie.

The summary streams to the page as ``call.summary_delta`` / ``call.summary`` events on
``/calls/events`` (``bridge.call.summary``).
"""

from __future__ import annotations

import logging

from quart import Blueprint, Quart, current_app
from quart.typing import ResponseReturnValue

from bridge.call.summary import SummaryQueue
from bridge.dialplans.summary import SummaryConfig
from bridge.web.access import action
from bridge.web.calls import find
from bridge.web.state import web_state

__all__ = ["EXTENSION", "install", "summaries"]

log = logging.getLogger(__name__)

EXTENSION = "voicebridge.summaries"

summaries = Blueprint("summaries", __name__)


def install(app: Quart, queue: SummaryQueue) -> None:
    """Serve the summary routes of ``app`` with ``queue``."""
    app.extensions[EXTENSION] = queue
    app.register_blueprint(summaries)


@summaries.post("/calls/<call_id>/summary")
@action
async def summarise(call_id: str) -> ResponseReturnValue:
    queue = current_app.extensions.get(EXTENSION)
    if not isinstance(queue, SummaryQueue):
        return {"error": "summaries are not running"}, 503
    record, live = await find(call_id)
    if record is None:
        return {"error": "no such call"}, 404
    if live or record.ended_at is None:
        return {"error": "the call has not ended"}, 409
    if call_id in queue.running:
        return {"error": "a summary of this call is under way"}, 409
    plans = web_state().manager.dialplans
    config = plans[record.dialplan].summary if record.dialplan in plans else SummaryConfig()
    if not queue.submit(record, config):
        return {"error": "the summary queue is full"}, 503
    log.info("call %s: summary asked from the dashboard", call_id)
    return {"ok": True, "call_id": call_id}, 202
