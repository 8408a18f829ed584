"""The input audio buffer of one emulated session: appends, turn detection, commits.

Theory of operation
-------------------
:class:`InputAudio` keeps the caller audio not yet committed (input bytes
``[buf_start, in_bytes)`` of the current input format) and the session's *audio time*:
milliseconds of caller audio appended since the session began, carried across a change
of input format. Audio time, not wall time, drives everything here -- the energy VAD, the
positions reported (``audio_start_ms``, ``audio_end_ms``) and the idle timeout -- so a
client that pushes audio faster than real time sees exactly what a real-time stream would.

With turn detection on, each append feeds the VAD: a start of speech trims the buffer to
the prefix padding, announces ``speech_started`` and may interrupt the response in
progress; an end of speech commits the turn and may start a response. Outside speech the
buffer keeps only what the prefix padding could still need, and the idle timeout (counted
from the end of the last reply's audio) commits an empty turn. A commit cuts the buffer,
adds the user item to the conversation, keeps the turn's speech for the echo agent
(``pending_echo``) and fires the ``on_turn`` script trigger.

What it asks of the session (interrupting, starting a response, script triggers) goes
through the :class:`TurnHost` it is given.
"""

from __future__ import annotations

import base64
import binascii
import math
from typing import Any, Protocol

from bridge.realtime.emulator.audio import AudioFormat, to_pcm16
from bridge.realtime.emulator.conversation import Conversation
from bridge.realtime.emulator.dialect import EAGERNESS_SILENCE_MS, input_format, turn_detection
from bridge.realtime.emulator.outbox import Outbox
from bridge.realtime.emulator.record import UserItemRecord
from bridge.realtime.emulator.transcription import (
    TranscriptionJob,
    is_transcription,
    transcription_events,
)
from bridge.realtime.emulator.vad import EnergyVad, VadSettings, VadStart, VadStop

__all__ = ["MIN_COMMIT_MS", "InputAudio", "TurnHost"]

MIN_COMMIT_MS = 100.0


class TurnHost(Protocol):
    """What turn detection needs from the session."""

    @property
    def response_active(self) -> bool: ...

    def cancel_response(self, reason: str) -> None: ...

    def start_response(self, trigger: str, now: float) -> None: ...

    def trigger(self, trigger: str, value: int | str, now: float) -> None: ...

    def heard(self, turn: int) -> str | None: ...


class InputAudio:
    """The input audio buffer and turn detection (see the module docstring)."""

    def __init__(self, out: Outbox, conversation: Conversation, host: TurnHost) -> None:
        self.record = out.record
        self._outbox = out
        self._emit = out.emit
        self._error = out.error
        self._id = out.new_id
        self._conv = conversation
        self._host = host
        self._in_fmt = input_format(out.session)
        self._ms_base = 0.0  # audio time where the current input format began
        self._in_bytes = 0
        self._buf = bytearray()
        self._buf_start = 0
        self._td: dict[str, Any] | None = None
        self._vad: EnergyVad | None = None
        self._speech_item: str | None = None
        self._onset_ms = 0
        #: audio time the idle timeout counts from (None: not armed)
        self.idle_from_ms: float | None = None
        #: user turns committed, and their audio in ms
        self.turns = 0
        self.user_audio_ms = 0.0
        #: the last unanswered turn's speech, input format (the echo agent plays it)
        self.pending_echo: bytes | None = None
        #: committed turns of a transcription session waiting for their words
        self.jobs: list[TranscriptionJob] = []

    @property
    def in_fmt(self) -> AudioFormat:
        return self._in_fmt

    def reply_finished(self, reply_audio_ms: float) -> None:
        """A response is done: with an idle timeout, it runs from the moment the reply's
        ``reply_audio_ms`` of audio has finished playing."""
        if self._td is not None and self._td.get("idle_timeout_ms"):
            self.idle_from_ms = self.audio_ms() + reply_audio_ms

    def audio_ms(self) -> float:
        """Audio time now: ms of caller audio appended since the session began."""
        return self._ms_base + self._in_bytes / self._in_fmt.bytes_per_ms

    def configure(self, session: dict[str, Any]) -> None:
        """Apply the session's input format and turn detection."""
        fmt = input_format(session)
        if fmt is not self._in_fmt:
            # A new input format starts a new byte count; audio time carries on.
            self._ms_base = self.audio_ms()
            self._in_bytes = 0
            self._buf.clear()
            self._buf_start = 0
            self._in_fmt = fmt
            self._td = None
            self._vad = None
        td = turn_detection(session)
        if td == self._td and (td is None) == (self._vad is None):
            return
        self._td = dict(td) if td is not None else None
        self._speech_item = None
        if td is None:
            self._vad = None
            return
        if td["type"] == "server_vad":
            settings = VadSettings(threshold=float(td["threshold"]),
                                   silence_duration_ms=int(td["silence_duration_ms"]))
        else:
            settings = VadSettings(silence_duration_ms=EAGERNESS_SILENCE_MS[td["eagerness"]])
        self._vad = EnergyVad(settings, fmt.rate, start_ms=round(self.audio_ms()))

    def on_append(self, event: dict[str, Any], event_id: str | None, now: float) -> None:
        audio = event.get("audio")
        if not isinstance(audio, str):
            self._error("missing_required_parameter", "Missing required parameter: 'audio'.",
                        param="audio", event_id=event_id)
            return
        try:
            data = base64.b64decode(audio, validate=True)
        except binascii.Error:
            self._error("invalid_value", "Invalid 'audio'. Expected base64-encoded audio bytes.",
                        param="audio", event_id=event_id)
            return
        fmt = self._in_fmt
        self._buf += data
        self._in_bytes += len(data)
        self.record.appended_audio_ms += len(data) / fmt.bytes_per_ms
        room = self.record.keep_input_audio - len(self.record.appended_audio)
        if room > 0:
            self.record.appended_audio += data[:room]
        vad = self._vad
        if vad is None:
            return
        for ev in vad.feed(to_pcm16(fmt, data) if fmt.sample_width == 1 else data):
            if isinstance(ev, VadStart):
                self._speech_started(ev, now)
            else:
                self._speech_stopped(ev, now)
        if not vad.in_speech:
            self._trim_buffer()
            if self.idle_from_ms is not None and self._td is not None:
                self._check_idle(now)

    def _offset(self, ms: float) -> int:
        """Index into the buffer of audio time ``ms`` (clamped, sample-aligned)."""
        fmt = self._in_fmt
        pos = round((ms - self._ms_base) * fmt.bytes_per_ms) - self._buf_start
        pos = min(max(pos, 0), len(self._buf))
        return pos - pos % fmt.sample_width

    def _drop_before(self, ms: float) -> None:
        cut = self._offset(ms)
        if cut:
            del self._buf[:cut]
            self._buf_start += cut

    def _trim_buffer(self) -> None:
        # Outside speech only the prefix padding can still matter; trim in 1 s steps so
        # a 20 ms append does not move the whole buffer every time.
        pad = int(self._td["prefix_padding_ms"]) if self._td and "prefix_padding_ms" in self._td \
            else 300
        keep = (pad + 20) * self._in_fmt.bytes_per_ms
        if len(self._buf) > keep + 1000 * self._in_fmt.bytes_per_ms:
            cut = len(self._buf) - keep
            cut -= cut % self._in_fmt.sample_width
            del self._buf[:cut]
            self._buf_start += cut

    def _speech_started(self, ev: VadStart, now: float) -> None:
        assert self._td is not None  # only the VAD calls this
        pad = int(self._td.get("prefix_padding_ms") or 0)
        buf_start_ms = self._ms_base + self._buf_start / self._in_fmt.bytes_per_ms
        start = max(ev.onset_ms - pad, math.ceil(buf_start_ms))
        self._drop_before(start)
        self._onset_ms = ev.onset_ms
        self._speech_item = self._id("item")
        self.idle_from_ms = None
        self._emit({"type": "input_audio_buffer.speech_started", "audio_start_ms": start,
                    "item_id": self._speech_item})
        if self._host.response_active and self._td["interrupt_response"]:
            self._host.cancel_response("turn_detected")

    def _speech_stopped(self, ev: VadStop, now: float) -> None:
        assert self._td is not None
        item_id = self._speech_item or self._id("item")
        self._speech_item = None
        self._emit({"type": "input_audio_buffer.speech_stopped", "audio_end_ms": ev.audio_end_ms,
                    "item_id": item_id})
        self._commit(item_id, ev.audio_end_ms, (self._onset_ms, ev.speech_end_ms), now)
        if self._td["create_response"] and not self._host.response_active:
            self._host.start_response("vad", now)

    def _check_idle(self, now: float) -> None:
        assert self._td is not None and self.idle_from_ms is not None
        idle = self._td.get("idle_timeout_ms")
        if not idle:
            return
        position = self.audio_ms()
        if position - self.idle_from_ms < idle:
            return
        start = int(self.idle_from_ms)
        self.idle_from_ms = None
        item_id = self._id("item")
        self._emit({"type": "input_audio_buffer.timeout_triggered", "audio_start_ms": start,
                    "audio_end_ms": int(position), "item_id": item_id})
        self._drop_before(start)
        self._commit(item_id, position, (position, position), now)
        if self._td["create_response"] and not self._host.response_active:
            self._host.start_response("idle", now)

    def _commit(self, item_id: str, upto_ms: float, echo: tuple[float, float],
                now: float) -> None:
        cut = self._offset(upto_ms)
        lo, hi = self._offset(echo[0]), self._offset(echo[1])
        fmt = self._in_fmt
        committed_ms = cut / fmt.bytes_per_ms
        speech = self.pending_echo = bytes(self._buf[lo:hi])
        del self._buf[:cut]
        self._buf_start += cut
        previous = self._conv.last_item
        self._emit({"type": "input_audio_buffer.committed", "item_id": item_id,
                    "previous_item_id": previous})
        self.turns += 1
        heard = self._host.heard(self.turns)
        item = {"id": item_id, "object": "realtime.item", "type": "message",
                "status": "completed", "role": "user",
                "content": [{"type": "input_audio", "transcript": heard}]}
        self._conv.add_item(item)
        self.user_audio_ms += committed_ms
        self.record.user_items.append(UserItemRecord(item_id, "audio", audio_ms=committed_ms,
                                                     turn=self.turns))
        session = self._outbox.session
        if is_transcription(session):          # words later (``TranscriptionJob``)
            self.jobs.append(TranscriptionJob(item_id, speech, fmt, committed_ms))
        elif session["audio"]["input"]["transcription"]:
            for event in transcription_events(item_id, (hi - lo) / fmt.bytes_per_ms / 1000.0,
                                              committed_ms, self._host.heard(self.turns),
                                              words=False):
                self._emit(event)
        self._host.trigger("on_turn", self.turns, now)

    def on_commit(self, event: dict[str, Any], event_id: str | None, now: float) -> None:
        fmt = self._in_fmt
        buffered = len(self._buf) / fmt.bytes_per_ms
        if buffered < MIN_COMMIT_MS:
            self._error("input_audio_buffer_commit_empty", "Error committing input audio "
                        "buffer: buffer too small. Expected at least 100ms of audio, but buffer "
                        f"only has {buffered:.2f}ms of audio.", event_id=event_id)
            return
        position = self.audio_ms()
        in_speech = self._vad is not None and self._vad.in_speech
        start = self._onset_ms if in_speech else position - buffered
        item_id = self._speech_item if in_speech and self._speech_item else self._id("item")
        self._speech_item = None
        if self._vad is not None:
            self._vad.reset()
        self._commit(item_id, position, (start, position), now)

    def on_clear(self, event: dict[str, Any], event_id: str | None, now: float) -> None:
        self._buf_start += len(self._buf)
        self._buf.clear()
        self._speech_item = None
        if self._vad is not None:
            self._vad.reset()
        self._emit({"type": "input_audio_buffer.cleared"})
