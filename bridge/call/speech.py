"""Who said what, when, and what the caller actually heard: the call's speech accounting.

Theory of operation
-------------------
``SpeechLog`` is sans-I/O: the call feeds it the upstream events it has mapped and the
playout's reports, with the wall clock read through ``wall`` (``time.time`` in production),
and it writes the call record's transcript, speech spans and turn latencies. It never
talks to the upstream or the leg; it decides, and the call acts:

* Responses and items. Which response is active, which one's audio is streaming, which
  response each assistant item belongs to, which responses the caller talked over (their
  late audio and transcripts are dropped: ``play_delta`` says False).
* Barge-in accounting. ``barged_in(item, heard_ms, received_ms)`` marks the interrupted
  responses and trims the agent's transcript to what was heard, in proportion to audio:
  the text received so far is cut at ``len(text) * heard_ms / received_ms`` (back to a word
  boundary). Transcript deltas run ahead of the audio, so this is an estimate; it is exact
  when the whole item had arrived.
* The speech timeline. Caller turns come from ``speech_started`` / ``speech_stopped``,
  whose ``audio_start_ms`` / ``audio_end_ms`` count audio time of the session's input
  buffer; ``audio_wall`` turns that into the wall time the caller said it (see there).
  Agent spans come from the playout (``agent_span``), in clock seconds.
* Turn latency: from the end of the caller's turn to the first audio delta of the reply
  (``upstream_ms``) and from that delta to its first frame handed to the leg
  (``playout_ms``).

Per-item bookkeeping keeps only the most recent items, so a long call stays small.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from bridge.call.records import CallRecord, SpeechSpan, TranscriptEntry, TurnLatency

_KEEP = 64   # per-item bookkeeping kept for this many recent items
V = TypeVar("V")


def _put(d: dict[str, V], key: str, value: V) -> None:
    d[key] = value
    if len(d) > _KEEP:
        del d[next(iter(d))]


@dataclass
class _Turn:
    """Latency bookkeeping of one reply (clock seconds)."""

    speech_stopped: float
    response_id: str | None = None
    first_delta: float | None = None


class SpeechLog:
    """The speech accounting of one call (see the module docstring)."""

    def __init__(self, record: CallRecord, *, prefix_ms: int, silence_ms: int,
                 bytes_per_ms: int, sent_bytes: Callable[[], int],
                 wall: Callable[[], float]) -> None:
        self.record = record
        self._sent = sent_bytes              # caller audio handed upstream (all sessions)
        self._wall = wall
        self._prefix_ms = prefix_ms          # audio_start_ms includes the prefix padding
        self._silence_ms = silence_ms        # audio_end_ms includes the silence waited for
        self._bytes_per_ms = bytes_per_ms
        self.active_response: str | None = None
        self.audio_response: str | None = None      # response whose audio is streaming
        self._item_response: dict[str, str] = {}
        self._interrupted: set[str] = set()
        self._agent_text: dict[str, list[str]] = {}
        self._trimmed: set[str] = set()
        self._agent_entry: dict[str, int] = {}      # item -> index in record.transcript
        self._first_frame_wall: dict[str, float] = {}
        self._item_wall: dict[str, float] = {}      # first audio delta arrived
        self._speech_wall: dict[str, float] = {}
        self._turn: _Turn | None = None
        self._caller_open: tuple[str, float] | None = None
        self.caller_speaking = False
        self._up_base = 0                    # ... when the current session started
        self.mono_to_wall = 0.0

    # -- responses -------------------------------------------------------------------------
    def response_created(self, response_id: str) -> None:
        self.active_response = response_id
        self.record.responses += 1

    def play_delta(self, response_id: str, item_id: str, now: float) -> bool:
        """An audio delta arrived; False when it belongs to a response talked over."""
        if response_id in self._interrupted:
            return False
        if item_id not in self._item_response:
            _put(self._item_response, item_id, response_id)
            _put(self._item_wall, item_id, self._wall())
            turn = self._turn
            if turn is not None and turn.response_id is None:
                turn.response_id = response_id
                turn.first_delta = now
        self.audio_response = response_id
        return True

    def audio_done(self, response_id: str) -> bool:
        """True when the streaming response's audio is complete (flush the playout)."""
        if response_id == self.audio_response:
            self.audio_response = None
            return True
        return False

    def response_done(self, response_id: str) -> bool:
        """The response is over: True when it had been talked over (its tools must not
        run)."""
        if response_id == self.active_response:
            self.active_response = None
        interrupted = response_id in self._interrupted
        self._interrupted.discard(response_id)
        return interrupted

    def transcript_delta(self, item_id: str, delta: str) -> None:
        if item_id not in self._trimmed:
            self._agent_text.setdefault(item_id, []).append(delta)

    def transcript_done(self, response_id: str, item_id: str, text: str) -> bool:
        """The agent's whole line; True when it went into the record."""
        self._agent_text.pop(item_id, None)
        if item_id in self._trimmed or response_id in self._interrupted:
            return False
        # Kept replaceable: a barge-in later in the item's playout trims it.
        _put(self._agent_entry, item_id, len(self.record.transcript))
        self.record.transcript.append(
            TranscriptEntry("agent", item_id, text, self._agent_at(item_id)))
        return True

    def _agent_at(self, item: str) -> float:
        """When the agent started saying ``item``: its first frame to the leg, else its
        first audio from upstream, else now."""
        return self._first_frame_wall.get(item) or self._item_wall.get(item) or self._wall()

    # -- barge-in --------------------------------------------------------------------------
    def barged_in(self, item: str | None, heard: int, received: int) -> None:
        """The caller talked over the agent while ``item`` played (None: nothing did)."""
        if self.active_response:
            self._interrupted.add(self.active_response)
        if item is not None and item in self._item_response:
            self._interrupted.add(self._item_response[item])
        self.audio_response = None
        if item is not None:
            self._trim(item, heard, received)

    def _trim(self, item: str, heard: int, received: int) -> None:
        index = self._agent_entry.get(item)
        if index is not None:
            text = self.record.transcript[index].text      # already complete
        else:
            text = "".join(self._agent_text.get(item, ()))
        if not text or item in self._trimmed:
            return
        self._trimmed.add(item)
        keep = text
        if received > 0 and heard < received:
            cut = int(len(text) * heard / received)
            keep = text[:cut]
            if cut < len(text) and " " in keep:
                keep = keep[: keep.rfind(" ")]
        entry = TranscriptEntry("agent", item, keep.strip(), self._agent_at(item),
                                truncated=keep != text)
        if index is not None:
            self.record.transcript[index] = entry
        else:
            self.record.transcript.append(entry)

    # -- caller turns ----------------------------------------------------------------------
    def speech_started(self, item_id: str, audio_start_ms: int) -> None:
        self.caller_speaking = True
        now = self._wall()
        _put(self._speech_wall, item_id, now)
        self._caller_open = (item_id, self.audio_wall(audio_start_ms + self._prefix_ms, now))

    def speech_stopped(self, item_id: str | None, audio_end_ms: int, now: float) -> None:
        wall = self._wall()
        opened, self._caller_open = self._caller_open, None
        if opened is not None:
            item, start = opened
            end = max(start, self.audio_wall(audio_end_ms - self._silence_ms, wall))
            self.record.speech.append(SpeechSpan("caller", item_id or item, start, end))
        self.caller_speaking = False
        self._turn = _Turn(speech_stopped=now)

    def user_transcript(self, item_id: str, text: str) -> None:
        at = self._speech_wall.pop(item_id, self._wall())
        self.record.transcript.append(TranscriptEntry("caller", item_id, text, at))

    def user_transcript_failed(self, item_id: str, error: str) -> None:
        self._speech_wall.pop(item_id, None)
        self.record.errors.append(f"transcription failed: {error}")

    def audio_wall(self, audio_ms: int, received: float) -> float:
        """Epoch time the caller said what sits at ``audio_ms`` of the session's input.

        Caller audio goes upstream in real time (gaps are filled with silence), so audio
        that many milliseconds behind the newest appended audio went up that long before
        ``received`` (when the event reached the bridge): independent of network and
        server delays. Falls back to ``received`` when the counts disagree (audio the
        client dropped while the upstream was not draining, a session switch)."""
        sent_ms = (self._sent() - self._up_base) / self._bytes_per_ms
        lag_s = (sent_ms - audio_ms) / 1000.0
        if lag_s < 0 or received - lag_s < self.record.started_at:
            return received
        return received - lag_s

    def new_session(self) -> None:
        """A new upstream session counts its audio from zero; a caller turn it had open
        will not stop there: close it now."""
        self._up_base = self._sent()
        self.close_caller_turn(self._wall())

    def close_caller_turn(self, end: float) -> None:
        if self._caller_open is not None:
            item, start = self._caller_open
            self._caller_open = None
            self.record.speech.append(SpeechSpan("caller", item, start, end))

    # -- playout reports -------------------------------------------------------------------
    def first_frame(self, item_id: str, now: float) -> None:
        """The first frame of ``item_id`` went to the leg at clock time ``now``."""
        wall = self._wall()
        _put(self._first_frame_wall, item_id, wall)
        turn = self._turn
        if (turn is not None and turn.first_delta is not None
                and self._item_response.get(item_id) == turn.response_id):
            self.record.turns.append(TurnLatency(
                wall, turn.response_id or "",
                round((turn.first_delta - turn.speech_stopped) * 1000, 1),
                round((now - turn.first_delta) * 1000, 1)))
            self._turn = None

    def agent_span(self, item_id: str, start: float, end: float) -> None:
        """``start``/``end`` in clock seconds; ``end`` is when the last frame handed over
        finishes playing."""
        offset = self.mono_to_wall
        self.record.speech.append(SpeechSpan("agent", item_id, start + offset, end + offset))

    def close(self, ended_at: float) -> None:
        """The call is over: no span may end after it, and an open caller turn closes."""
        speech = self.record.speech
        if speech and speech[-1].end > ended_at:      # the leg hung up mid-frame
            speech[-1] = dataclasses.replace(speech[-1], end=max(speech[-1].start, ended_at))
        self.close_caller_turn(ended_at)


__all__ = ["SpeechLog"]
