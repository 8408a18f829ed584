"""What a call tells the rest of the process: typed, frozen values, one naming scheme.

Every event names its call and when it happened; ``kind`` is its one name, ``call.<what>``
(``call.started``, ``call.transcript``, ...), the same on the dashboard's Server-Sent
Events and on a browser caller's ``events`` data channel. Consumers dispatch on the type
(``match`` / ``isinstance``), never on strings; ``to_json()`` is the one wire form.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import ClassVar


@dataclass(frozen=True, kw_only=True)
class CallEvent:
    kind: ClassVar[str] = "call.event"
    call_id: str
    at: float = field(default_factory=time.time)

    def to_json(self) -> dict[str, object]:
        """The wire form: ``{"type": kind, "call_id": ..., "at": ..., **fields}``."""
        return {"type": self.kind, **dataclasses.asdict(self)}


@dataclass(frozen=True, kw_only=True)
class CallStarted(CallEvent):
    kind: ClassVar[str] = "call.started"
    source: str
    caller: str
    called: str
    dialplan: str


@dataclass(frozen=True, kw_only=True)
class CallEnded(CallEvent):
    kind: ClassVar[str] = "call.ended"
    reason: str
    source: str = ""


@dataclass(frozen=True, kw_only=True)
class StateChanged(CallEvent):
    kind: ClassVar[str] = "call.state"
    state: str
    previous: str


@dataclass(frozen=True, kw_only=True)
class TranscriptAdded(CallEvent):
    kind: ClassVar[str] = "call.transcript"
    role: str                        # "caller" or "agent"
    text: str


@dataclass(frozen=True, kw_only=True)
class TranscriptDelta(CallEvent):
    """A piece of the caller's words as the transcription streams them (shown live; the
    turn's ``call.transcript`` follows with the whole text)."""

    kind: ClassVar[str] = "call.transcript_delta"
    item_id: str
    delta: str


@dataclass(frozen=True, kw_only=True)
class BargedIn(CallEvent):
    kind: ClassVar[str] = "call.barge_in"
    item_id: str
    heard_ms: int


@dataclass(frozen=True, kw_only=True)
class ToolCalled(CallEvent):
    kind: ClassVar[str] = "call.tool_call"
    name: str
    ok: bool


@dataclass(frozen=True, kw_only=True)
class DtmfReceived(CallEvent):
    kind: ClassVar[str] = "call.dtmf"
    digit: str
    action: str                      # "transfer", "hangup", "say", "model" or "ignored"


@dataclass(frozen=True, kw_only=True)
class FallbackStarted(CallEvent):
    kind: ClassVar[str] = "call.fallback"
    reason: str


@dataclass(frozen=True, kw_only=True)
class TurnDecided(CallEvent):
    """The plan's ``[turns]`` hook decided the reply to the caller's turn ``turn``."""

    kind: ClassVar[str] = "call.turn"
    turn: int
    hook: str                        # "answer", "instructions", "python" or "tool"
    outcome: str                     # "answered", "silent" or "failed" (then answered)


@dataclass(frozen=True, kw_only=True)
class AnalysisAdded(CallEvent):
    """The analysis of one caller turn (``bridge.call.analysis``): its result or error."""

    kind: ClassVar[str] = "call.analysis"
    turn: int
    status: str                      # "ok", "invalid", "failed", "timeout", ...
    result: dict[str, object] | None = None
    error: str = ""
    actions: list[str] = field(default_factory=list)


#: Every kind a call emits, for consumers that list them (the dashboard's SSE names).
KINDS: tuple[str, ...] = tuple(cls.kind for cls in (
    CallStarted, CallEnded, StateChanged, TranscriptAdded, TranscriptDelta, BargedIn,
    ToolCalled, DtmfReceived, FallbackStarted, TurnDecided, AnalysisAdded))

__all__ = ["KINDS", "AnalysisAdded", "BargedIn", "CallEnded", "CallEvent", "CallStarted",
           "DtmfReceived", "FallbackStarted", "StateChanged", "ToolCalled", "TranscriptAdded",
           "TranscriptDelta", "TurnDecided"]
