"""The conversation so far, as text, for re-seeding a new session (sans-I/O).

Nothing carries over to a new socket (docs/realtime-protocol.md §8): after a drop or a
rotation the new session gets ``session.update`` and the history re-added as
``conversation.item.create`` items -- user ``input_text`` and assistant ``output_text``
(assistant audio cannot be re-created).

Entries are kept in conversation order: a caller turn takes its place when its audio is
committed (its transcript, if transcription is on, arrives later and fills it in); an
assistant item when it is added to a response; typed user text when it is sent. An
assistant transcript is trimmed to what the caller actually heard: the call reports the
heard position with ``truncate`` (or ``heard``), and the text is cut at the same fraction
of the item's audio, at a word boundary. An item nobody heard (0 ms) is dropped.

Bounded: only the newest ``max_entries`` entries and ``max_chars`` characters are kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bridge.realtime import dialects


@dataclass
class Entry:
    item_id: str
    role: str                      # "user" | "assistant"
    text: str | None = None
    audio_ms: float = 0.0          # assistant audio received for this item
    heard_ms: float | None = None  # None = heard in full
    response_id: str | None = None


class History:
    def __init__(self, *, max_entries: int = 64, max_chars: int = 16000) -> None:
        self._entries: list[Entry] = []
        self._by_id: dict[str, Entry] = {}
        self._typed = 0
        self.max_entries = max_entries
        self.max_chars = max_chars

    def _add(self, entry: Entry) -> Entry:
        if entry.item_id in self._by_id:
            return self._by_id[entry.item_id]
        self._entries.append(entry)
        self._by_id[entry.item_id] = entry
        while len(self._entries) > self.max_entries:
            old = self._entries.pop(0)
            self._by_id.pop(old.item_id, None)
        return entry

    # -- what happened ------------------------------------------------------------------

    def user_text(self, text: str) -> None:
        self._typed += 1
        self._add(Entry(f"typed-{self._typed}", "user", text))

    def user_turn(self, item_id: str) -> None:
        self._add(Entry(item_id, "user"))

    def user_transcript(self, item_id: str, text: str) -> None:
        entry = self._by_id.get(item_id) or self._add(Entry(item_id, "user"))
        entry.text = text

    def assistant_item(self, item_id: str, response_id: str | None = None) -> None:
        self._add(Entry(item_id, "assistant", response_id=response_id))

    def assistant_audio(self, item_id: str, ms: float) -> None:
        entry = self._by_id.get(item_id)
        if entry is not None:
            entry.audio_ms += ms

    def assistant_transcript(self, item_id: str, text: str) -> None:
        entry = self._by_id.get(item_id) or self._add(Entry(item_id, "assistant"))
        entry.text = text

    def forget(self, item_id: str) -> None:
        """The item was deleted from the conversation: never re-seed it."""
        entry = self._by_id.pop(item_id, None)
        if entry is not None:
            self._entries.remove(entry)

    def audio_ms(self, item_id: str) -> float:
        entry = self._by_id.get(item_id)
        return entry.audio_ms if entry is not None else 0.0

    def heard(self, item_id: str, heard_ms: float) -> None:
        """The caller heard ``heard_ms`` of assistant item ``item_id`` and no more."""
        entry = self._by_id.get(item_id)
        if entry is not None:
            entry.heard_ms = max(0.0, heard_ms)

    def interrupted(self, response_id: str) -> None:
        """``response_id`` was cut off by the caller: its items count as unheard unless the
        call reports (``heard``) how much was played -- it reports only when that is more
        than nothing (docs/realtime-protocol.md §6.3: no truncate at 0 ms)."""
        for entry in self._entries:
            if entry.response_id == response_id and entry.heard_ms is None:
                entry.heard_ms = 0.0

    # -- what to re-send ----------------------------------------------------------------

    def texts(self) -> list[tuple[str, str]]:
        """``(role, text)`` of every entry worth re-seeding, oldest first, within bounds."""
        out: list[tuple[str, str]] = []
        for entry in self._entries:
            text = _heard_text(entry)
            if text:
                out.append((entry.role, text))
        total = 0
        kept: list[tuple[str, str]] = []
        for role, text in reversed(out):
            total += len(text)
            if total > self.max_chars:
                break
            kept.append((role, text))
        kept.reverse()
        return kept

    def seed_events(self, dialect: str) -> list[dict[str, Any]]:
        builders = {"user": dialects.user_text_item, "assistant": dialects.assistant_text_item}
        return [builders[role](text, dialect) for role, text in self.texts()]


def _heard_text(entry: Entry) -> str:
    text = (entry.text or "").strip()
    if not text or entry.heard_ms is None:
        return text
    if entry.heard_ms <= 0:
        return ""
    if entry.audio_ms <= 0 or entry.heard_ms >= entry.audio_ms:
        return text
    cut = int(len(text) * entry.heard_ms / entry.audio_ms)
    # Keep whole words only: back up to the last space before the cut.
    space = text.rfind(" ", 0, cut + 1)
    return text[:space].rstrip() if space > 0 else ""
