"""What tools, key presses and the fallback may do to a call: transfer, hang up, send DTMF.

``CallControl`` is the ``ToolContext`` the dialplan's tools act through (names only: a
tool transfers to a dialplan *target name*, never to a URI it made up). A transfer or
hang-up requested from inside a tool run first waits (at most ``drain_timeout_s`` of clock
time) for the model's last words to play out, and the call ends only after the tool's
result is recorded (``end_requested``, read by the tool runner). While a REFER is pending
the caller hears the comfort beep rather than dead air, whichever path asked for it.
"""

from __future__ import annotations

import contextvars
import time
from typing import TYPE_CHECKING

from bridge.call.leg import TransferOutcome
from bridge.call.records import DtmfRecord
from bridge.call.state import CallState, EndReason, Trigger
from bridge.call.timers import wait_within
from bridge.errors import RealtimeError

if TYPE_CHECKING:
    from bridge.call.call import Call

#: Set inside a tool run: a transfer/hang-up then ends the call after the tool's result.
IN_TOOL: contextvars.ContextVar[bool] = contextvars.ContextVar("in_tool", default=False)


class CallControl:
    """The tool-facing control surface of one call."""

    def __init__(self, call: Call, drain_timeout_s: float) -> None:
        self._call = call
        self.call_id = call.call_id
        self.caller = call.caller
        self.called = call.called
        self.drain_timeout_s = drain_timeout_s
        self.end_requested: tuple[EndReason, str] | None = None

    async def transfer(self, target_name: str) -> TransferOutcome:
        """Blind transfer to the dialplan target ``target_name`` (names only, never URIs)."""
        call = self._call
        uri = call.dialplan.targets.get(target_name)
        if uri is None:
            call.log.warning("transfer to unknown target %r refused", target_name)
            return TransferOutcome(ok=False, detail=f"unknown target {target_name!r}")
        if IN_TOOL.get():
            await self.drained()
        return await self.transfer_uri(uri, target_name)

    async def transfer_uri(self, uri: str, label: str) -> TransferOutcome:
        call = self._call
        state = call.state
        if state.over:
            return TransferOutcome(False, 0, "call ended")
        if state.in_(CallState.TRANSFERRING):
            return TransferOutcome(False, 0, "a transfer is already in progress")
        if not state.in_(CallState.FALLING_BACK) and not state.fire(Trigger.TRANSFER):
            return TransferOutcome(False, 0, f"no transfer while {state.state.value}")
        call.log.info("transferring to %s", label)
        await self.clear_input()
        playout = call.playout
        playout.comfort = True
        try:
            outcome = await call.leg.transfer(uri)
        except BaseException:
            if state.in_(CallState.TRANSFERRING):
                state.fire(Trigger.TRANSFER_FAILED)
            playout.comfort = call.comfort_wanted()
            raise
        if outcome.ok:
            call.record.transferred_to = label
            self.request_end(EndReason.TRANSFERRED, label)
        else:
            call.log.warning("transfer to %s failed: %s %s", label, outcome.status,
                             outcome.detail)
            call.record.errors.append(f"transfer to {label} failed: {outcome.status}")
            if state.in_(CallState.TRANSFERRING):
                state.fire(Trigger.TRANSFER_FAILED)
        playout.comfort = call.comfort_wanted()
        return outcome

    async def clear_input(self) -> None:
        """``input_audio_buffer.clear``: what the caller's line carried until now must not
        start a turn (a hold, a transfer, a DTMF menu taking over)."""
        call = self._call
        client = call.client
        if client is None or not call.upstream_usable or call.state.over:
            return
        try:
            await client.clear_input_audio()
        except RealtimeError as exc:
            call.log.warning("input_audio_buffer.clear failed: %r", exc)

    async def hang_up(self, reason: str) -> None:
        """End the call once what the agent is saying has played (bounded wait)."""
        if IN_TOOL.get():
            await self.drained()
        self.request_end(EndReason.AGENT_HANGUP, reason)

    async def send_dtmf(self, digits: str) -> None:
        call = self._call
        await call.leg.send_dtmf(digits)
        now = time.time()
        for d in digits:
            call.record.dtmf.append(DtmfRecord(now, d, "out", "sent"))

    async def drained(self, extra_s: float = 0.0) -> bool:
        """Wait until the playout has handed everything to the leg (clock-bounded)."""
        call = self._call
        fut = call.playout.drained()
        if fut is None:
            return True
        return await wait_within(call.clock, fut, self.drain_timeout_s + extra_s)

    def request_end(self, reason: EndReason, detail: str) -> None:
        if IN_TOOL.get():
            self.end_requested = (reason, detail)   # after the tool's result is recorded
        else:
            self._call.end(reason, detail)


__all__ = ["IN_TOOL", "CallControl"]
