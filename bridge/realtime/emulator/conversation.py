"""The conversation of one emulated session: its items and the events that edit them.

Theory of operation
-------------------
:class:`Conversation` holds the items in order (a dict keeps insertion order; the last
one is where the next item goes unless ``previous_item_id`` says otherwise) and answers
``conversation.item.create``, ``.delete``, ``.retrieve`` and ``.truncate``. A created item
is validated the way the real service does it, by one builder per item type, and either
added (``conversation.item.added`` then ``.done``) or refused with one ``error`` event.
Audio payloads are never kept in an item: the service echoes transcripts only.

What the agent should answer next is collected here too: the names of the tools whose
output arrived and the user's texts (``pending_tools``, ``pending_texts``); the session
core takes them when it plans the next response. Scripted rules are told about each
through the ``trigger`` callback.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bridge.realtime.emulator.dialect import from_preview_item
from bridge.realtime.emulator.outbox import Outbox
from bridge.realtime.emulator.record import Truncation, UserItemRecord

__all__ = ["Conversation"]

#: ``trigger(kind, value, now)``: a scripted rule may fire (``Script`` trigger names).
Trigger = Callable[[str, int | str, float], None]


class Conversation:
    """The items of one session (see the module docstring)."""

    def __init__(self, out: Outbox, trigger: Trigger) -> None:
        self.record = out.record
        self._emit = out.emit
        self._error = out.error
        self._id = out.new_id
        self._preview = out.preview
        self._trigger = trigger
        self.id = out.new_id("conv")
        self.items: dict[str, dict[str, Any]] = {}
        self.last_item: str | None = None
        #: audio sent per assistant item, in ms (what a truncation may cut)
        self.item_audio_ms: dict[str, float] = {}
        self.calls: dict[str, str] = {}  # call_id -> function name
        self.pending_texts: list[str] = []
        self.pending_tools: list[str] = []

    def append(self, item: dict[str, Any]) -> str | None:
        """Put ``item`` last; returns the id of the item before it."""
        prev, self.last_item = self.last_item, item["id"]
        self.items[item["id"]] = item
        return prev

    def add_item(self, item: dict[str, Any], previous: str | None = None) -> None:
        """Add a complete item (``previous`` given: the client said where it goes)."""
        prev = previous if previous is not None else self.last_item
        self.items[item["id"]] = item
        self.last_item = item["id"]
        self._emit({"type": "conversation.item.added", "previous_item_id": prev, "item": item})
        self._emit({"type": "conversation.item.done", "previous_item_id": prev, "item": item})

    def on_item_create(self, event: dict[str, Any], event_id: str | None, now: float) -> None:
        item = event.get("item")
        if not isinstance(item, dict):
            self._error("missing_required_parameter", "Missing required parameter: 'item'.",
                        param="item", event_id=event_id)
            return
        if self._preview:
            item = from_preview_item(item)
        previous = event.get("previous_item_id")
        if previous is not None and previous != "root" and previous not in self.items:
            self._error("invalid_value", f"Previous item with id '{previous}' not found.",
                        param="previous_item_id", event_id=event_id)
            return
        item_id = item.get("id") or self._id("item")
        if item_id in self.items:
            self._error("invalid_value", f"Item with id '{item_id}' already exists.",
                        param="item.id", event_id=event_id)
            return
        builder = self._item_builders.get(item.get("type", ""))
        if builder is None:
            self._error("invalid_value", f"Invalid value: '{item.get('type')}'. Supported values "
                        "are: 'message', 'function_call', and 'function_call_output'.",
                        param="item.type", event_id=event_id)
            return
        built = builder(self, item, item_id, event_id)
        if built is None:
            return
        self.add_item(built, previous)
        self._after_item(built, now)

    def build_item(self, item: dict[str, Any],
                   param: str) -> dict[str, Any] | tuple[str, str, str | None]:
        """Validate a full item given in a ``response.input`` (at ``param``) without adding
        it: the item, or the ``(code, message, param)`` of the error to answer."""
        builder = self._item_builders.get(str(item.get("type", "")))
        if builder is None:
            return ("invalid_value", f"Invalid value: '{str(item.get('type'))[:80]}'. Supported "
                    "values are: 'message', 'function_call', 'function_call_output', and "
                    "'item_reference'.", f"{param}.type")
        refused: list[tuple[str, str, str | None]] = []

        def capture(code: str, message: str, *, param: str | None = None,
                    event_id: str | None = None, kind: str = "") -> None:
            refused.append((code, message, param))

        saved, self._error = self._error, capture
        try:
            built = builder(self, item, str(item.get("id") or self._id("item")), None)
        finally:
            self._error = saved
        if built is None:
            code, message, where = refused[0]
            if where is not None and where.startswith("item"):
                where = param + where[len("item"):]
            return code, message.replace("'item.", f"'{param}."), where
        return built

    def _build_message(self, item: dict[str, Any], item_id: str,
                       event_id: str | None) -> dict[str, Any] | None:
        role = item.get("role")
        allowed = {"user": ("input_text", "input_audio", "input_image"),
                   "system": ("input_text",),
                   "assistant": ("output_text", "output_audio")}.get(str(role))
        if allowed is None:
            self._error("invalid_value", f"Invalid value: '{role}'. Supported values are: "
                        "'user', 'assistant', and 'system'.", param="item.role",
                        event_id=event_id)
            return None
        content = item.get("content")
        if not isinstance(content, list) or not content:
            self._error("missing_required_parameter", "Missing required parameter: "
                        "'item.content'.", param="item.content", event_id=event_id)
            return None
        parts = []
        for i, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind not in allowed:
                self._error("invalid_value", f"Invalid value: '{kind}'. Supported values are: "
                            + ", ".join(f"'{a}'" for a in allowed) + ".",
                            param=f"item.content[{i}].type", event_id=event_id)
                return None
            assert isinstance(part, dict)
            if kind in ("input_text", "output_text") and not isinstance(part.get("text"), str):
                self._error("missing_required_parameter", "Missing required parameter: "
                            f"'item.content[{i}].text'.", param=f"item.content[{i}].text",
                            event_id=event_id)
                return None
            # Audio payloads are not echoed back (the real server sends transcripts only).
            parts.append({k: v for k, v in part.items() if k != "audio"})
        return {"id": item_id, "object": "realtime.item", "type": "message",
                "status": "completed", "role": role, "content": parts}

    def _build_call(self, item: dict[str, Any], item_id: str,
                    event_id: str | None) -> dict[str, Any] | None:
        for key in ("name", "arguments"):
            if not isinstance(item.get(key), str):
                self._error("missing_required_parameter", f"Missing required parameter: "
                            f"'item.{key}'.", param=f"item.{key}", event_id=event_id)
                return None
        call_id = item.get("call_id") or self._id("call")
        self.calls[call_id] = item["name"]
        return {"id": item_id, "object": "realtime.item", "type": "function_call",
                "status": "completed", "name": item["name"], "call_id": call_id,
                "arguments": item["arguments"]}

    def _build_call_output(self, item: dict[str, Any], item_id: str,
                           event_id: str | None) -> dict[str, Any] | None:
        for key in ("call_id", "output"):
            if not isinstance(item.get(key), str):
                self._error("missing_required_parameter", f"Missing required parameter: "
                            f"'item.{key}'.", param=f"item.{key}", event_id=event_id)
                return None
        return {"id": item_id, "object": "realtime.item", "type": "function_call_output",
                "status": "completed", "call_id": item["call_id"], "output": item["output"]}

    _item_builders: dict[str, Callable[[Conversation, dict[str, Any], str, str | None],
                                       dict[str, Any] | None]] = {
        "message": _build_message,
        "function_call": _build_call,
        "function_call_output": _build_call_output,
    }

    def _after_item(self, item: dict[str, Any], now: float) -> None:
        if item["type"] == "function_call_output":
            self.record.tool_outputs.append((item["call_id"], item["output"]))
            name = self.calls.get(item["call_id"], "")
            self.pending_tools.append(name or item["call_id"])
            self._trigger("on_tool_output", name, now)
        elif item["type"] == "message" and item["role"] == "user":
            for part in item["content"]:
                if part["type"] == "input_text":
                    text = part["text"]
                    self.record.user_items.append(UserItemRecord(item["id"], "text", text=text))
                    self.pending_texts.append(text)
                    self._trigger("on_text", text, now)

    def _find_item(self, event: dict[str, Any], event_id: str | None) -> str | None:
        item_id = event.get("item_id")
        if not isinstance(item_id, str):
            self._error("missing_required_parameter", "Missing required parameter: 'item_id'.",
                        param="item_id", event_id=event_id)
            return None
        if item_id not in self.items:
            self._error("invalid_value", f"Item with item_id not found: {item_id}",
                        param="item_id", event_id=event_id)
            return None
        return item_id

    def on_item_delete(self, event: dict[str, Any], event_id: str | None, now: float) -> None:
        item_id = self._find_item(event, event_id)
        if item_id is None:
            return
        gone = self.items.pop(item_id)
        self.record.deleted.append((item_id, str(gone.get("type", ""))))
        if self.last_item == item_id:
            self.last_item = next(reversed(self.items), None)
        self._emit({"type": "conversation.item.deleted", "item_id": item_id})

    def on_item_retrieve(self, event: dict[str, Any], event_id: str | None,
                          now: float) -> None:
        item_id = self._find_item(event, event_id)
        if item_id is not None:
            self._emit({"type": "conversation.item.retrieved", "item": self.items[item_id]})

    def on_truncate(self, event: dict[str, Any], event_id: str | None, now: float) -> None:
        item_id = self._find_item(event, event_id)
        if item_id is None:
            return
        end = event.get("audio_end_ms")
        if not isinstance(end, int) or isinstance(end, bool):
            self._error("missing_required_parameter", "Missing required parameter: "
                        "'audio_end_ms'.", param="audio_end_ms", event_id=event_id)
            return
        if end < 0:
            self._error("integer_below_min_value", "Invalid 'audio_end_ms': integer below "
                        f"minimum value. Expected a value >= 0, but got {end} instead.",
                        param="audio_end_ms", event_id=event_id)
            return
        content_index = event.get("content_index", 0)
        if content_index != 0:
            self._error("invalid_value", f"Invalid 'content_index': {content_index}. The item "
                        "has one content part.", param="content_index", event_id=event_id)
            return
        item = self.items[item_id]
        audio_ms = self.item_audio_ms.get(item_id)
        if item.get("role") != "assistant" or not audio_ms:
            self._error("invalid_value", f"Item '{item_id}' has no audio content to truncate.",
                        param="item_id", event_id=event_id)
            return
        have = int(audio_ms)
        if end > have:
            self._error("invalid_value", f"Audio content of {have}ms is already shorter than "
                        f"{end}ms", param="audio_end_ms", event_id=event_id)
            return
        self.item_audio_ms[item_id] = float(end)
        self.record.truncations.append(Truncation(item_id, end, have))
        self._emit({"type": "conversation.item.truncated", "item_id": item_id,
                    "content_index": 0, "audio_end_ms": end})
