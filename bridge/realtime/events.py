"""The internal Realtime event vocabulary.

Both wire dialects (GA and preview, see ``bridge.realtime.dialects``) are parsed at the edge
into these small frozen values; nothing past the edge ever sees a wire event name or a raw
JSON dict. The call consumes them from ``RealtimeClient.events()``.

Connection steps and failures are events too (``SessionReady``, ``Reconnecting``,
``Reconnected``, ``UpstreamLost``): the call decides what to do about them (carry on, or run
the dialplan's fallback).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeAlias


@dataclass(frozen=True, slots=True)
class SessionCreated:
    """``session.created``: the server opened a session (the client answers with session.update).

    ``expires_at`` is epoch seconds, when the server says it (it is not in every dialect).
    """

    session_id: str
    expires_at: float | None


@dataclass(frozen=True, slots=True)
class SessionReady:
    """``session.updated`` after our ``session.update``: audio may flow."""

    session_id: str
    expires_at: float | None


@dataclass(frozen=True, slots=True)
class SpeechStarted:
    """Server VAD heard the caller start speaking: barge-in point."""

    item_id: str
    audio_start_ms: int


@dataclass(frozen=True, slots=True)
class SpeechStopped:
    item_id: str
    audio_end_ms: int


@dataclass(frozen=True, slots=True)
class InputCommitted:
    """The caller's audio buffer became conversation item ``item_id``."""

    item_id: str


@dataclass(frozen=True, slots=True)
class InputTimeout:
    """``input_audio_buffer.timeout_triggered``: the caller was silent past idle_timeout_ms."""

    item_id: str
    audio_start_ms: int
    audio_end_ms: int


@dataclass(frozen=True, slots=True)
class ResponseCreated:
    response_id: str


@dataclass(frozen=True, slots=True)
class ResponseDone:
    """A response ended. ``status``: completed, cancelled, failed, incomplete.

    ``reason`` is ``status_details.reason`` (e.g. ``turn_detected``, ``client_cancelled``);
    the client also synthesises one with status ``failed`` and reason ``connection_lost`` for
    a response that was running when its socket dropped, so the call never waits forever.
    """

    response_id: str
    status: str
    reason: str | None
    usage: dict[str, Any] | None
    error: dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class OutputItemAdded:
    response_id: str
    item_id: str
    item_type: str
    name: str | None
    call_id: str | None


@dataclass(frozen=True, slots=True)
class AudioDelta:
    """Assistant audio, base64 already decoded, in the session's output format."""

    response_id: str
    item_id: str
    audio: bytes

    def __repr__(self) -> str:  # never audio in logs
        return (f"AudioDelta(response_id={self.response_id!r}, item_id={self.item_id!r}, "
                f"audio=<{len(self.audio)} bytes>)")


@dataclass(frozen=True, slots=True)
class AudioDone:
    response_id: str
    item_id: str


@dataclass(frozen=True, slots=True)
class TranscriptDelta:
    response_id: str
    item_id: str
    delta: str


@dataclass(frozen=True, slots=True)
class TranscriptDone:
    response_id: str
    item_id: str
    transcript: str


@dataclass(frozen=True, slots=True)
class FunctionCall:
    """A complete ``function_call`` item (output_item.done, status completed).

    Never emitted for a response known to be cancelled.
    """

    response_id: str
    item_id: str
    call_id: str
    name: str
    arguments: str


@dataclass(frozen=True, slots=True)
class UserTranscript:
    """Transcript of a caller turn (asynchronous: may arrive after the reply)."""

    item_id: str
    transcript: str


@dataclass(frozen=True, slots=True)
class UserTranscriptDelta:
    """A piece of a caller turn's transcript, as the transcription model streams it."""

    item_id: str
    delta: str


@dataclass(frozen=True, slots=True)
class OutOfBandStarted:
    """The server began one of the bridge's out-of-band (text, unspoken) responses."""

    response_id: str
    metadata: dict[str, str]


@dataclass(frozen=True, slots=True)
class OutOfBandDone:
    """An out-of-band response ended: its whole text, never played nor in the history."""

    response_id: str
    status: str
    metadata: dict[str, str]
    text: str


@dataclass(frozen=True, slots=True)
class RateLimit:
    name: str                 # "requests", "tokens"
    limit: int
    remaining: int
    reset_seconds: float


@dataclass(frozen=True, slots=True)
class RateLimits:
    """``rate_limits.updated``: the account's limits after a response was created."""

    limits: tuple[RateLimit, ...]


@dataclass(frozen=True, slots=True)
class UserTranscriptFailed:
    item_id: str
    error: str


@dataclass(frozen=True, slots=True)
class ServerError:
    """A recoverable ``error`` event; ``event_id`` names the client event that failed."""

    code: str | None
    message: str
    event_id: str | None


@dataclass(frozen=True, slots=True)
class Reconnecting:
    """The socket dropped (or the session is being rotated); attempt N is starting."""

    attempt: int
    reason: str


@dataclass(frozen=True, slots=True)
class Reconnected:
    """A new session is configured and re-seeded with the conversation so far."""

    session_id: str


@dataclass(frozen=True, slots=True)
class SessionRotated:
    """The session was replaced before it expired, at a quiet moment; nothing was lost."""

    session_id: str
    previous_session_id: str


@dataclass(frozen=True, slots=True)
class UpstreamLost:
    """Gave up on the upstream: the call runs its fallback. No event follows."""

    reason: str
    fatal_auth: bool


Event: TypeAlias = (
    SessionCreated
    | SessionReady
    | SpeechStarted
    | SpeechStopped
    | InputCommitted
    | InputTimeout
    | ResponseCreated
    | ResponseDone
    | OutputItemAdded
    | AudioDelta
    | AudioDone
    | TranscriptDelta
    | TranscriptDone
    | FunctionCall
    | UserTranscript
    | UserTranscriptDelta
    | RateLimits
    | OutOfBandStarted
    | OutOfBandDone
    | UserTranscriptFailed
    | ServerError
    | Reconnecting
    | Reconnected
    | SessionRotated
    | UpstreamLost
)

__all__ = [
    "AudioDelta",
    "AudioDone",
    "Event",
    "FunctionCall",
    "InputCommitted",
    "InputTimeout",
    "OutputItemAdded",
    "Reconnected",
    "Reconnecting",
    "ResponseCreated",
    "ResponseDone",
    "ServerError",
    "SessionCreated",
    "SessionReady",
    "SessionRotated",
    "SpeechStarted",
    "SpeechStopped",
    "TranscriptDelta",
    "TranscriptDone",
    "UpstreamLost",
    "UserTranscript",
    "UserTranscriptFailed",
]
