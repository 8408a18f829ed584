"""The model's function calls, run through the dialplan's tool registry.

``FunctionCall`` events are collected per response and dispatched only once that
response's ``ResponseDone`` says ``completed``: a call from a cancelled, failed or
interrupted response never runs. All calls of a response run concurrently in the call's
task group through the dialplan's registry (which never raises: a failing tool answers
the model with an error output), each answered with ``send_tool_output``; one
``create_response`` follows when all outputs are in, unless a tool ended the call.
While any tool runs the caller hears the comfort beep (a slow webhook is not dead air).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from bridge.call.control import IN_TOOL
from bridge.call.events import ToolCalled
from bridge.call.records import ToolCallRecord
from bridge.realtime import events as ev

if TYPE_CHECKING:
    from bridge.call.call import Call


@dataclass
class _ResponseTools:
    calls: list[ev.FunctionCall] = field(default_factory=list)
    outputs_pending: int = 0


class ToolRunner:
    def __init__(self, call: Call) -> None:
        self._call = call
        self._collected: dict[str, _ResponseTools] = {}
        self.running = 0

    def collect(self, e: ev.FunctionCall) -> None:
        """Collected, not run: it runs once its response is done *and* completed."""
        self._collected.setdefault(e.response_id, _ResponseTools()).calls.append(e)

    def response_done(self, response_id: str, status: str, interrupted: bool) -> None:
        tools = self._collected.pop(response_id, None)
        if tools is None:
            return
        if status == "completed" and not interrupted:
            self._run(tools)
        else:
            self._call.log.info("not running %d tool call(s) of a %s response",
                                len(tools.calls), status)

    def _run(self, tools: _ResponseTools) -> None:
        call = self._call
        tools.outputs_pending = len(tools.calls)
        self.running += len(tools.calls)
        call.playout.comfort = True
        for fc in tools.calls:
            call.spawn(self._run_one(fc, tools), f"tool-{fc.name}")

    async def _run_one(self, fc: ev.FunctionCall, tools: _ResponseTools) -> None:
        call = self._call
        IN_TOOL.set(True)
        started = time.time()
        call.log.info("tool call %s", fc.name)
        try:
            result = await call.dialplan.tools.dispatch(fc.name, fc.arguments, call.control)
        finally:
            self.running -= 1
            if self.running == 0:
                call.playout.comfort = False
        call.record.tool_calls.append(ToolCallRecord(
            started, fc.response_id, fc.call_id, fc.name, fc.arguments, result.ok,
            result.output, result.error, result.duration_s))
        call.emit(ToolCalled(call_id=call.call_id, name=fc.name, ok=result.ok))
        call.recorder.save_soon()
        client = call.client
        if client is not None and call.upstream_usable:
            redaction = call.redaction
            await client.send_tool_output(fc.call_id, result.output if redaction is None
                                          else redaction.redactor.mask(result.output))
            if redaction is not None:
                await redaction.after_tool(fc.item_id, fc.arguments)
        tools.outputs_pending -= 1
        requested = call.control.end_requested
        if requested is not None:
            call.control.end_requested = None      # used once, whether or not it took
            call.end(*requested)
            return
        if tools.outputs_pending == 0 and client is not None and call.upstream_usable:
            # docs/realtime-protocol.md §5.4: one response.create once all outputs are in.
            await client.create_response()


__all__ = ["ToolRunner"]
