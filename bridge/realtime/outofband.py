"""Out-of-band responses: text the model writes beside the conversation, never spoken.

A ``response.create`` with ``conversation: "none"`` asks for a response whose output does
not join the default conversation and which may run while a spoken response does
(docs/realtime-protocol.md §10.1). The bridge uses them for work the caller must not hear
(analysing the turn so far): text only, ``metadata`` to tell them apart, ``input`` naming
the items to read.

Sans-I/O. ``request(...)`` builds the client event; its metadata carries
:data:`OOB_KEY`, by which the mapper knows the response when the server announces it.
``OutOfBandTracker`` then takes every event of such a response out of the ordinary stream
(so the one-active-response bookkeeping, barge-in and truncation never see it), keeps its
text, and surfaces one ``OutOfBandDone`` with the text, the status and the metadata.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from bridge.realtime import events as ev
from bridge.realtime.config import RealtimeTarget

#: The metadata key (and value) that marks the bridge's out-of-band responses.
OOB_KEY = "vb_oob"
#: At most this many out-of-band responses are followed at once (older ones are forgotten).
MAX_TRACKED = 16
_MODALITIES = {"ga": "output_modalities", "preview": "modalities"}


def request(instructions: str, metadata: Mapping[str, str], item_ids: Sequence[str],
            dialect: str) -> dict[str, Any]:
    """``response.create`` of a text-only response outside the conversation, reading the
    items ``item_ids`` (all of the conversation when empty)."""
    if len(metadata) > 15:
        raise ValueError("at most 15 metadata pairs (one more is the bridge's own)")
    response: dict[str, Any] = {
        "conversation": "none", "instructions": instructions,
        "metadata": {**metadata, OOB_KEY: "1"}, _MODALITIES[dialect]: ["text"]}
    if item_ids:
        response["input"] = [{"type": "item_reference", "id": i} for i in item_ids]
    return {"type": "response.create", "response": response}


class OutOfBandTracker:
    """The out-of-band responses of one session, from ``response.created`` to ``.done``."""

    def __init__(self) -> None:
        #: response id -> (metadata, text so far)
        self.active: dict[str, tuple[dict[str, str], list[str]]] = {}

    def started(self, response: Mapping[str, Any]) -> list[ev.Event] | None:
        """``response.created``: the events for one of ours, None for any other."""
        metadata = response.get("metadata")
        rid = response.get("id")
        if not isinstance(metadata, dict) or OOB_KEY not in metadata or not isinstance(rid, str):
            return None
        meta = {str(k): str(v) for k, v in metadata.items() if k != OOB_KEY}
        if len(self.active) >= MAX_TRACKED:
            del self.active[next(iter(self.active))]
        self.active[rid] = (meta, [])
        return [ev.OutOfBandStarted(rid, meta)]

    def feed(self, data: Mapping[str, Any]) -> list[ev.Event]:
        """An event of an active out-of-band response (``response_id`` is one of ours)."""
        rid = data.get("response_id")
        entry = self.active.get(rid) if isinstance(rid, str) else None
        if entry is not None and data.get("type") in ("response.output_text.done",
                                                      "response.text.done"):
            text = data.get("text")
            if isinstance(text, str):
                entry[1].append(text)
        return []

    def done(self, response: Mapping[str, Any]) -> list[ev.Event] | None:
        """``response.done``: the result of one of ours, None for any other."""
        rid = response.get("id")
        entry = self.active.pop(rid, None) if isinstance(rid, str) else None
        if entry is None:
            return None
        status = response.get("status")
        return [ev.OutOfBandDone(str(rid), status if isinstance(status, str) else "completed",
                                 entry[0], "".join(entry[1]))]


def cancel(response_id: str) -> dict[str, Any]:
    """``response.cancel`` of one response by id (a spoken one in progress is untouched)."""
    return {"type": "response.cancel", "response_id": response_id}


class OutOfBandRequests:
    """The client's out-of-band requests (``RealtimeClient`` inherits them)."""

    target: RealtimeTarget

    def _send(self, event: dict[str, Any]) -> bool:
        raise NotImplementedError

    async def create_out_of_band(self, instructions: str, metadata: Mapping[str, str],
                                 item_ids: Sequence[str] = ()) -> bool:
        """A text response beside the conversation: never played, never in the history,
        free to run with a spoken one; it ends as ``OutOfBandDone``."""
        return self._send(request(instructions, metadata, item_ids, self.target.dialect))

    def cancel_out_of_band(self, response_id: str) -> bool:
        """Stop one out-of-band response (its ``OutOfBandDone`` says ``cancelled``); sent at
        once, so a call that is ending can still send it."""
        return self._send(cancel(response_id))


__all__ = ["MAX_TRACKED", "OOB_KEY", "OutOfBandRequests", "OutOfBandTracker", "cancel",
           "request"]
