"""What a key press does: the dialplan's DTMF actions, or a note to the model.

A digit with an action in the dialplan runs it (``transfer`` to a target, ``hangup``,
``say`` a fixed line); otherwise, when the dialplan passes keys to the model and the agent
can answer, the model is told "caller pressed N" and asked for a reply; else the digit is
only recorded. A transfer key interrupts the agent first (our own barge-in), and when the
transfer fails the model is told, so the caller is not left waiting in silence.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from bridge.call.events import DtmfReceived
from bridge.call.records import DtmfRecord
from bridge.call.state import EndReason
from bridge.dialplans.plan import DtmfAction

if TYPE_CHECKING:
    from bridge.call.call import Call


class DtmfActions:
    def __init__(self, call: Call) -> None:
        self._call = call

    def on_digit(self, digit: str) -> None:
        call = self._call
        action = call.dialplan.dtmf.actions.get(digit)
        kind: str
        if action is not None:
            kind = action.kind
            call.spawn(self._action(action), f"dtmf-{kind}")
        elif call.dialplan.dtmf.to_model and call.state.talking:
            kind = "model"
            call.spawn(self._to_model(digit), "dtmf-model")
        else:
            kind = "ignored"
        if call.redaction is not None:           # keys typed for the model: data entry
            digit = call.redaction.dtmf_shown(digit, kind)
        call.log.info("DTMF %s -> %s", digit, kind)
        call.record.dtmf.append(DtmfRecord(time.time(), digit, "in", kind))
        call.emit(DtmfReceived(call_id=call.call_id, digit=digit, action=kind))

    async def _action(self, action: DtmfAction) -> None:
        call = self._call
        if action.kind in ("transfer", "say"):      # the menu takes over from the caller's turn
            await call.control.clear_input()
        if action.kind == "transfer":
            await self._transfer(action)
        elif action.kind == "hangup":
            call.end(EndReason.CALLER_DTMF_HANGUP)
        elif action.kind == "say":
            client = call.client
            if client is not None and call.state.talking and action.text:
                await client.create_response(
                    instructions=f"Say exactly this to the caller: {action.text}")

    async def _transfer(self, action: DtmfAction) -> None:
        call = self._call
        client = call.client
        if call.playout.playing or (client is not None and client.response_active):
            await call.barge_in(call.clock.time(), own=True)
        target = action.target or ""
        uri = call.dialplan.targets.get(target)
        if uri is None:
            call.log.warning("DTMF transfer target %r is not in the dialplan", target)
            return
        outcome = await call.control.transfer_uri(uri, target)
        client = call.client
        if not outcome.ok and client is not None and call.state.talking:
            # The agent's reply was cancelled for the transfer: without this the caller
            # would wait in silence until they spoke again.
            await client.add_user_text(
                f"The caller pressed a key to be transferred to {target}, but the transfer "
                f"failed ({outcome.status or 'no answer'}). Tell the caller and offer "
                "another way to help.")
            await client.create_response()

    async def _to_model(self, digit: str) -> None:
        client = self._call.client
        if client is None:
            return
        await client.add_user_text(f"caller pressed {digit}")
        await client.create_response()


__all__ = ["DtmfActions"]
