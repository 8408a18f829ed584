"""A ``ToolContext`` for calling tools outside a call: it records what they asked for."""

from __future__ import annotations

from dataclasses import dataclass, field

from bridge.call.leg import TransferOutcome


@dataclass
class RecordingContext:
    """A ToolContext that records what the tools asked the call to do."""

    call_id: str = "call-1"
    caller: str = "+15557654321"
    called: str = "2000"
    transfer_ok: bool = True
    transfers: list[str] = field(default_factory=list)
    hangups: list[str] = field(default_factory=list)
    dtmf: list[str] = field(default_factory=list)

    async def transfer(self, target_name: str) -> TransferOutcome:
        self.transfers.append(target_name)
        return TransferOutcome(ok=self.transfer_ok, status=202 if self.transfer_ok else 603)

    async def hang_up(self, reason: str) -> None:
        self.hangups.append(reason)

    async def send_dtmf(self, digits: str) -> None:
        self.dtmf.append(digits)
