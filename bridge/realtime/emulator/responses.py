"""The response generator of one emulated session: a response, event by event, paced.

Theory of operation
-------------------
A response is a list of steps planned by the session core (say something, call a
function, or fail) run by a generator: it emits the events of each step in the order the
real service sends them and yields the pause before its next audio delta. Deltas are cut
as the service cuts them (100 ms, 150 ms, then 250 ms each) and paced ``pace`` times faster
than real time in *wall time*; :meth:`Responses.pump` runs the generator up to ``now`` and
:meth:`Responses.deadline` says when it next has something to send.

A barge-in or ``response.cancel`` stops the generator between deltas
(:meth:`Responses.cancel`) and closes what it left open: every ``*.done`` event is still
sent, with an ``incomplete`` item and a ``cancelled`` response. The output items join the
conversation as they open; the usage reported at the end is estimated from the session's
instructions, the caller audio heard and what was produced.

Besides the conversation's one active response, out-of-band responses
(``conversation: "none"``, docs/realtime-protocol.md §10) run at the same time, each its
own generator: :meth:`Responses.pump` advances whichever is due first, so their deltas
interleave. Their items never join the conversation (no ``conversation.item.*`` events),
and finishing one does not restart the idle timer, which follows the spoken reply.
"""

from __future__ import annotations

import base64
import math
import re
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any

from bridge.realtime.emulator.conversation import Conversation
from bridge.realtime.emulator.dialect import output_format
from bridge.realtime.emulator.input_audio import InputAudio
from bridge.realtime.emulator.outbox import Outbox
from bridge.realtime.emulator.record import AssistantItemRecord, ResponseRecord

__all__ = ["CHUNK_MS", "CHUNK_MS_STEADY", "Call", "Fail", "Responses", "Say", "Step"]

# Sizes of the audio deltas the real service sends: 100 ms, 150 ms, then 250 ms each.
CHUNK_MS = (100, 150)
CHUNK_MS_STEADY = 250
_TOKEN_RE = re.compile(r"\S+\s*|\s+")


@dataclass(frozen=True)
class Say:
    audio: bytes  # in the session's output format (empty for a text-only response)
    transcript: str


@dataclass(frozen=True)
class Call:
    name: str
    arguments: str


@dataclass(frozen=True)
class Fail:
    code: str
    message: str


Step = Say | Call | Fail


@dataclass
class Active:
    """The response in progress."""

    rid: str
    record: ResponseRecord
    modalities: list[str]
    metadata: dict[str, Any] | None
    next_at: float
    #: out of band (``conversation: "none"``): its items stay out of the conversation and
    #: it runs beside the conversation's one active response
    oob: bool = False
    instructions: str | None = None
    gen: Generator[float, None, None] | None = None
    output: list[dict[str, Any]] = field(default_factory=list)
    item: dict[str, Any] | None = None  # the output item still open
    output_index: int = 0
    transcript: str = ""
    audio_ms: float = 0.0
    text_tokens: int = 0


def chunk_sizes(total: int, bytes_per_ms: int) -> list[int]:
    sizes = []
    left = total
    i = 0
    while left > 0:
        ms = CHUNK_MS[i] if i < len(CHUNK_MS) else CHUNK_MS_STEADY
        n = min(left, ms * bytes_per_ms)
        sizes.append(n)
        left -= n
        i += 1
    return sizes


def spread(text: str, parts: int) -> list[str]:
    """Cut ``text`` into ``parts`` pieces on word boundaries ("" where none is left)."""
    tokens = _TOKEN_RE.findall(text)
    if parts <= 1:
        return [text]
    per = max(1, math.ceil(len(tokens) / parts))
    out = ["".join(tokens[i * per:(i + 1) * per]) for i in range(parts)]
    out[-1] += "".join(tokens[parts * per:])
    return out


class Responses:
    """The response in progress, if any (see the module docstring)."""

    def __init__(self, out: Outbox, conversation: Conversation, audio: InputAudio, *,
                 pace: float) -> None:
        self.record = out.record
        self._outbox = out
        self._emit = out.emit
        self._id = out.new_id
        self._conv = conversation
        self._input = audio
        self._pace = pace
        self._active: Active | None = None
        #: the out-of-band responses in progress, by id
        self.oob: dict[str, Active] = {}
        #: assistant audio was sent: the voice can no longer change
        self.voice_locked = False
        self.count = 0

    @property
    def active(self) -> Active | None:
        return self._active

    def running(self) -> list[Active]:
        """Every response in progress: the conversation's one, then the out-of-band ones."""
        return ([] if self._active is None else [self._active]) + list(self.oob.values())

    def find(self, rid: str) -> Active | None:
        a = self._active
        return a if a is not None and a.rid == rid else self.oob.get(rid)

    def deadline(self) -> float | None:
        """When a response in progress has its next delta to send (None: nothing paced)."""
        times = [a.next_at for a in self.running() if a.gen is not None]
        return min(times) if times else None

    def drop(self) -> None:
        """Forget the responses in progress, sending nothing (the socket is closing)."""
        self._active = None
        self.oob.clear()

    def abandon(self) -> None:
        """The socket is gone: the responses in progress are recorded as cancelled."""
        for a in self.running():
            a.record.status = "cancelled"
        self.drop()

    def start(self, trigger: str, params: dict[str, Any] | None, steps: list[Step],
              now: float, *, input_ids: list[str] | None = None,
              input_texts: list[str] | None = None) -> None:
        """Start a response to ``trigger`` that runs ``steps`` (out of band when ``params``
        say ``conversation: "none"``); ``input_*``: what its ``input`` resolved to."""
        params = params or {}
        modalities = params.get("output_modalities") or params.get("modalities") \
            or self._outbox.session["output_modalities"]
        modalities = ["audio"] if "audio" in modalities else ["text"]
        metadata = params.get("metadata") if isinstance(params.get("metadata"), dict) else None
        oob = params.get("conversation") == "none"
        rid = self._id("resp")
        rec = ResponseRecord(rid, trigger, conversation="none" if oob else "auto",
                             metadata=metadata, instructions=params.get("instructions"),
                             input_ids=input_ids, input_texts=list(input_texts or []))
        self.record.responses.append(rec)
        self.count += 1
        active = Active(rid=rid, record=rec, modalities=modalities, metadata=metadata,
                        next_at=now, oob=oob, instructions=params.get("instructions"))
        if oob:
            self.oob[rid] = active
        else:
            self._active = active
        active.gen = self._run(active, steps)
        self.pump(now)

    def pump(self, now: float) -> None:
        """Run the responses in progress up to ``now``, earliest delta first."""
        while True:
            due = [a for a in self.running() if a.gen is not None and a.next_at <= now]
            if not due:
                return
            a = min(due, key=lambda r: r.next_at)
            try:
                assert a.gen is not None
                pause = next(a.gen)
            except StopIteration:
                a.gen = None
                continue
            a.next_at += pause

    def _response_obj(self, a: Active, status: str,
                      details: dict[str, Any] | None) -> dict[str, Any]:
        session = self._outbox.session
        usage = None
        if status != "in_progress":
            in_text = len(a.instructions or session.get("instructions") or "") // 4
            in_audio = int(self._input.user_audio_ms / 100)
            out_audio = int(a.audio_ms / 50)
            usage = {
                "total_tokens": in_text + in_audio + out_audio + a.text_tokens,
                "input_tokens": in_text + in_audio,
                "output_tokens": out_audio + a.text_tokens,
                "input_token_details": {"text_tokens": in_text, "audio_tokens": in_audio,
                                        "cached_tokens": 0},
                "output_token_details": {"text_tokens": a.text_tokens,
                                         "audio_tokens": out_audio},
            }
        return {
            "object": "realtime.response", "id": a.rid, "status": status,
            "status_details": details, "output": list(a.output),
            "conversation_id": None if a.oob else self._conv.id, "output_modalities": a.modalities,
            "max_output_tokens": session["max_output_tokens"],
            "audio": {"output": {"format": session["audio"]["output"]["format"],
                                 "voice": session["audio"]["output"]["voice"]}},
            "usage": usage, "metadata": a.metadata,
        }

    def _run(self, a: Active, steps: list[Step]) -> Generator[float, None, None]:
        self._emit({"type": "response.created",
                    "response": self._response_obj(a, "in_progress", None)})
        for step in steps:
            if isinstance(step, Fail):
                self._finish(a, "failed", {"type": "failed", "error": {
                    "type": "server_error", "code": step.code, "message": step.message}})
                return
            if isinstance(step, Call):
                self._run_call(a, step)
            else:
                yield from self._run_message(a, step)
        self._finish(a, "completed", None)

    def _open_item(self, a: Active, item: dict[str, Any]) -> None:
        a.item = item
        a.output_index = len(a.output)
        a.record.item_ids.append(item["id"])
        self._emit({"type": "response.output_item.added", "response_id": a.rid,
                    "output_index": a.output_index, "item": dict(item)})
        if a.oob:
            return
        prev = self._conv.append(item)
        self._emit({"type": "conversation.item.added", "previous_item_id": prev,
                    "item": dict(item)})

    def _close_item(self, a: Active, final: dict[str, Any]) -> None:
        a.output.append(final)
        a.item = None
        if not a.oob:
            self._conv.items[final["id"]] = final
            self._emit({"type": "conversation.item.done", "item": final})
        self._emit({"type": "response.output_item.done", "response_id": a.rid,
                    "output_index": a.output_index, "item": final})

    def _run_message(self, a: Active, say: Say) -> Generator[float, None, None]:
        item_id = self._id("item")
        self.record.assistant_items[item_id] = AssistantItemRecord(item_id, a.rid, "message")
        self._open_item(a, {"id": item_id, "object": "realtime.item", "type": "message",
                            "status": "in_progress", "role": "assistant", "content": []})
        a.transcript = ""
        ids = {"response_id": a.rid, "item_id": item_id, "output_index": a.output_index,
               "content_index": 0}
        if a.modalities == ["text"]:
            self._emit({"type": "response.content_part.added", **ids,
                        "part": {"type": "text", "text": ""}})
            for piece in spread(say.transcript, max(1, len(say.transcript.split()))):
                if piece:
                    a.transcript += piece
                    self._emit({"type": "response.output_text.delta", **ids, "delta": piece})
            self._end_message(a, "completed")
            return
        self._emit({"type": "response.content_part.added", **ids,
                    "part": {"type": "audio", "transcript": ""}})
        fmt = output_format(self._outbox.session)
        sizes = chunk_sizes(len(say.audio), fmt.bytes_per_ms)
        words = spread(say.transcript, len(sizes))
        record = self.record.assistant_items[item_id]
        item_ms = self._conv.item_audio_ms if not a.oob else {}
        item_ms[item_id] = 0.0
        pause_per_ms = 0.0 if self._pace <= 0 else 1.0 / (1000.0 * self._pace)
        offset = 0
        for i, size in enumerate(sizes):
            chunk = say.audio[offset:offset + size]
            offset += size
            self.voice_locked = True
            self._emit({"type": "response.output_audio.delta", **ids,
                        "delta": base64.b64encode(chunk).decode("ascii")})
            ms = size / fmt.bytes_per_ms
            a.audio_ms += ms
            record.audio_ms_sent += ms
            item_ms[item_id] += ms
            if words[i]:
                a.transcript += words[i]
                record.transcript = a.transcript
                self._emit({"type": "response.output_audio_transcript.delta", **ids,
                            "delta": words[i]})
            if i + 1 < len(sizes):
                yield ms * pause_per_ms
        if not sizes and say.transcript:
            a.transcript = say.transcript
            self._emit({"type": "response.output_audio_transcript.delta", **ids,
                        "delta": say.transcript})
        self._end_message(a, "completed")

    def _end_message(self, a: Active, status: str) -> None:
        item = a.item
        assert item is not None
        ids = {"response_id": a.rid, "item_id": item["id"], "output_index": a.output_index,
               "content_index": 0}
        a.text_tokens += len(a.transcript) // 4
        record = self.record.assistant_items[item["id"]]
        record.transcript = a.transcript
        record.status = status
        if a.modalities == ["text"]:
            self._emit({"type": "response.output_text.done", **ids, "text": a.transcript})
            part = {"type": "text", "text": a.transcript}
            content = {"type": "output_text", "text": a.transcript}
        else:
            self._emit({"type": "response.output_audio.done", **ids})
            self._emit({"type": "response.output_audio_transcript.done", **ids,
                        "transcript": a.transcript})
            part = {"type": "audio", "transcript": a.transcript}
            content = {"type": "output_audio", "transcript": a.transcript}
        self._emit({"type": "response.content_part.done", **ids, "part": part})
        self._close_item(a, {**item, "status": status, "content": [content]})

    def _run_call(self, a: Active, call: Call) -> None:
        item_id, call_id = self._id("item"), self._id("call")
        self._conv.calls[call_id] = call.name
        record = AssistantItemRecord(item_id, a.rid, "function_call", name=call.name,
                                     call_id=call_id, arguments=call.arguments)
        self.record.assistant_items[item_id] = record
        self._open_item(a, {"id": item_id, "object": "realtime.item", "type": "function_call",
                            "status": "in_progress", "name": call.name, "call_id": call_id,
                            "arguments": ""})
        ids = {"response_id": a.rid, "item_id": item_id, "output_index": a.output_index,
               "call_id": call_id}
        half = len(call.arguments) // 2
        for piece in (call.arguments[:half], call.arguments[half:]):
            if piece:
                self._emit({"type": "response.function_call_arguments.delta", **ids,
                            "delta": piece})
        self._emit({"type": "response.function_call_arguments.done", **ids, "name": call.name,
                    "arguments": call.arguments})
        record.status = "completed"
        assert a.item is not None
        self._close_item(a, {**a.item, "status": "completed", "arguments": call.arguments})

    def _finish(self, a: Active, status: str, details: dict[str, Any] | None) -> None:
        a.record.status = status
        a.record.reason = (details or {}).get("reason")
        a.record.output_text = "".join(
            self.record.assistant_items[i].transcript for i in a.record.item_ids
            if self.record.assistant_items[i].kind == "message")
        self._emit({"type": "response.done", "response": self._response_obj(a, status, details)})
        if a.oob:
            self.oob.pop(a.rid, None)
            return
        self._active = None
        self._input.reply_finished(a.audio_ms)

    def cancel(self, reason: str, rid: str | None = None) -> None:
        """Stop the conversation's response in progress (or the one with id ``rid``) and
        close what it left open."""
        a = self._active if rid is None else self.find(rid)
        assert a is not None
        if a.gen is not None:
            a.gen.close()
            a.gen = None
        if a.item is not None:
            if a.item["type"] == "message":
                self._end_message(a, "incomplete")
            else:
                self._close_item(a, {**a.item, "status": "incomplete"})
        self._finish(a, "cancelled", {"type": "cancelled", "reason": reason})
