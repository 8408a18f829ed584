"""Client events that act on the input buffer and the conversation's items.

``ItemOps`` is mixed into ``RealtimeClient`` (which provides ``_send``, ``history``,
``upkeep`` and ``target``): clearing and committing the input audio buffer, an
out-of-band response (``outofband``), and deleting an item from the server's
conversation (``conversation.item.delete``, docs/realtime-protocol.md §5), which the
call uses to take a redacted value out of the model's context once the tool that needed
it has run (``bridge/call/redaction.py``). A deleted item also leaves the client's own
history, so a reconnect never re-seeds it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bridge.realtime.config import RealtimeTarget
    from bridge.realtime.history import History
    from bridge.realtime.recovery import Upkeep


def delete_event(item_id: str) -> dict[str, Any]:
    return {"type": "conversation.item.delete", "item_id": item_id}


class ItemOps:
    """Input-buffer and item operations of the Realtime client (a mixin)."""

    if TYPE_CHECKING:
        target: RealtimeTarget
        history: History
        upkeep: Upkeep

        def _send(self, event: dict[str, Any]) -> bool: ...

    async def clear_input_audio(self) -> None:
        """``input_audio_buffer.clear``: caller audio not yet committed must not start a
        turn (hold, a transfer, a DTMF menu taking over); not replayed either."""
        self.upkeep.replay.clear()
        self._send({"type": "input_audio_buffer.clear"})

    async def commit_input_audio(self) -> None:
        """``input_audio_buffer.commit``: the caller's turn ends here (no server VAD)."""
        self._send({"type": "input_audio_buffer.commit"})

    async def delete_item(self, item_id: str) -> bool:
        """``conversation.item.delete``: the item leaves the model's context (and the
        history a new session would be seeded with). False if no live session took it."""
        self.history.forget(item_id)
        return self._send(delete_event(item_id))


__all__ = ["ItemOps", "delete_event"]
