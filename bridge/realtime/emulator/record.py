"""What the emulator saw and did, for tests to query.

One :class:`SessionRecord` per WebSocket session, kept in :class:`EmulatorRecord` in the
order sessions opened. The session core writes it as it goes (cheap appends and counters:
an audio append adds one interned string and a float, never its payload). Secrets never
enter a record: authentication headers and an ``api-key`` query parameter are redacted.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "REDACTED",
    "AssistantItemRecord",
    "EmulatorRecord",
    "ResponseRecord",
    "SessionRecord",
    "Truncation",
    "UserItemRecord",
    "redact_headers",
    "redact_query",
]

REDACTED = "<redacted>"
_SECRET_HEADERS = frozenset({"api-key", "authorization", "cookie", "openai-api-key"})
_SECRET_QUERY = frozenset({"api-key", "api_key", "key", "token", "access_token"})


def redact_headers(headers: dict[str, str]) -> dict[str, str]:
    return {k: (REDACTED if k.lower() in _SECRET_HEADERS else v) for k, v in headers.items()}


def redact_query(query: dict[str, str]) -> dict[str, str]:
    return {k: (REDACTED if k.lower() in _SECRET_QUERY else v) for k, v in query.items()}


@dataclass(frozen=True)
class Truncation:
    """A ``conversation.item.truncate`` accepted: cut at ``audio_end_ms`` of ``item_audio_ms``."""

    item_id: str
    audio_end_ms: int
    item_audio_ms: int


@dataclass
class UserItemRecord:
    """A user item: ``kind`` "audio" (a committed turn) or "text" (``input_text``)."""

    item_id: str
    kind: str
    text: str | None = None
    audio_ms: float = 0.0
    turn: int | None = None


@dataclass
class AssistantItemRecord:
    """An assistant output item: ``kind`` "message" or "function_call"."""

    item_id: str
    response_id: str
    kind: str
    audio_ms_sent: float = 0.0
    transcript: str = ""
    name: str | None = None
    call_id: str | None = None
    arguments: str | None = None
    status: str = "in_progress"


@dataclass
class ResponseRecord:
    response_id: str
    trigger: str  # "vad", "client", "idle"
    status: str = "in_progress"
    reason: str | None = None
    item_ids: list[str] = field(default_factory=list)
    #: "auto" (the default conversation) or "none" (an out-of-band response)
    conversation: str = "auto"
    metadata: dict[str, str] | None = None
    instructions: str | None = None
    #: ``response.input`` as resolved: the item ids referenced or given, in order, and the
    #: texts the response was generated from (None: no ``input``, the conversation was used)
    input_ids: list[str] | None = None
    input_texts: list[str] = field(default_factory=list)
    #: what the response said: its messages' text or transcript, joined
    output_text: str = ""

    @property
    def out_of_band(self) -> bool:
        return self.conversation == "none"


@dataclass
class SessionRecord:
    session_id: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    dialect: str  # "ga" or "preview"
    config: dict[str, Any] = field(default_factory=dict)  # last session, as sent in session.updated
    received_types: list[str] = field(default_factory=list, repr=False)  # every client event type
    received: list[dict[str, Any]] = field(default_factory=list, repr=False)  # non-audio events
    appended_audio_ms: float = 0.0
    #: the first ``keep_input_audio`` bytes of input audio, as the client appended it (tests
    #: compare it byte for byte with what a caller sent); none unless the emulator's
    #: ``EmulatorConfig.keep_input_audio`` asks for it
    appended_audio: bytearray = field(default_factory=bytearray, repr=False)
    keep_input_audio: int = 0
    user_items: list[UserItemRecord] = field(default_factory=list)
    assistant_items: dict[str, AssistantItemRecord] = field(default_factory=dict)
    truncations: list[Truncation] = field(default_factory=list)
    #: items deleted by ``conversation.item.delete``, with the item as it was (its type)
    deleted: list[tuple[str, str]] = field(default_factory=list)
    tool_outputs: list[tuple[str, str]] = field(default_factory=list)
    response_creates: int = 0
    responses: list[ResponseRecord] = field(default_factory=list)
    errors: list[tuple[str | None, str | None]] = field(default_factory=list)  # (code, event_id)
    session_updates: int = 0
    open: bool = True
    close_code: int | None = None

    @property
    def user_texts(self) -> list[str]:
        return [u.text for u in self.user_items if u.kind == "text" and u.text is not None]

    @property
    def turns(self) -> int:
        return sum(1 for u in self.user_items if u.kind == "audio")

    @property
    def out_of_band(self) -> list[ResponseRecord]:
        """The out-of-band responses (``conversation: "none"``), in the order created."""
        return [r for r in self.responses if r.out_of_band]

    def error_codes(self) -> list[str | None]:
        return [code for code, _ in self.errors]


@dataclass
class EmulatorRecord:
    sessions: list[SessionRecord] = field(default_factory=list)

    def __iter__(self) -> Iterator[SessionRecord]:
        return iter(self.sessions)

    def __len__(self) -> int:
        return len(self.sessions)

    @property
    def last(self) -> SessionRecord | None:
        return self.sessions[-1] if self.sessions else None

    @property
    def truncations(self) -> list[Truncation]:
        return [t for s in self.sessions for t in s.truncations]

    @property
    def tool_outputs(self) -> list[tuple[str, str]]:
        return [o for s in self.sessions for o in s.tool_outputs]

    @property
    def out_of_band(self) -> list[ResponseRecord]:
        return [r for s in self.sessions for r in s.out_of_band]

    @property
    def live(self) -> list[SessionRecord]:
        return [s for s in self.sessions if s.open]
