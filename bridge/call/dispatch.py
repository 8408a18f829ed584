"""The call's dispatch tables: which part handles each upstream event.

:class:`bridge.call.call.Call` looks an event's type up here: handlers in the first table
run at once (no await), those in the second are awaited in the call's event task. Parts
with turn handling of their own (``bridge.call.turns``) add theirs to the same tables.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from bridge import metrics
from bridge.call.events import TranscriptDelta
from bridge.realtime import events as ev

if TYPE_CHECKING:
    from bridge.call.call import Call


def handler_tables(call: Call) -> tuple[dict[type, Callable[[Any], None]],
                                        dict[type, Callable[[Any], Awaitable[None]]]]:
    """The call's (immediate, awaited) handlers by event type."""
    sync: dict[type, Callable[[Any], None]] = {
        ev.SessionReady: call._on_session_ready,
        ev.SpeechStopped: call._on_speech_stopped,
        ev.ResponseCreated: lambda e: call.speech.response_created(e.response_id),
        ev.AudioDelta: call._on_audio_delta,
        ev.AudioDone: call._on_audio_done,
        ev.TranscriptDelta: lambda e: call.speech.transcript_delta(e.item_id, e.delta),
        ev.TranscriptDone: call._on_transcript_done,
        ev.FunctionCall: call.tools.collect,
        ev.UserTranscript: call._on_user_transcript,
        ev.UserTranscriptFailed:
            lambda e: call.speech.user_transcript_failed(e.item_id, e.error),
        ev.UserTranscriptDelta: lambda e: call.emit(TranscriptDelta(
            call_id=call.call_id, item_id=e.item_id, delta=e.delta)),
        ev.RateLimits: metrics.observe_rate_limits,
        ev.OutOfBandStarted: call.analyser.started,
        ev.OutOfBandDone: call.analyser.done,
        ev.ServerError: call._on_server_error,
        ev.Reconnecting: call._on_reconnecting,
        ev.Reconnected: call._on_reconnected,
        ev.SessionRotated: call._on_session_rotated,
    }
    run: dict[type, Callable[[Any], Awaitable[None]]] = {
        ev.SpeechStarted: call._on_speech_started,
        ev.ResponseDone: call._on_response_done,
        ev.UpstreamLost: call._on_upstream_lost,
    }
    return sync, run


__all__ = ["handler_tables"]
