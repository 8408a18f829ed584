"""Transcription sessions in the emulator: the session type that only transcribes.

Theory of operation
-------------------
A transcription session takes caller audio and answers each committed turn with
``conversation.item.input_audio_transcription.delta`` events (one per word) and one
``...completed``; it never creates a response. It is asked for in either dialect:

- GA: ``session.update`` with ``session.type = "transcription"`` (``audio.input`` holds
  ``format``, ``transcription`` -- its ``model`` is the Azure transcription deployment's
  name -- ``noise_reduction`` and ``turn_detection``; ``include`` may ask for logprobs);
- preview: the URL carries ``intent=transcription`` and the client sends
  ``transcription_session.update`` (flat: ``input_audio_format``,
  ``input_audio_transcription``, ``turn_detection``, ``input_audio_noise_reduction``,
  ``include``), answered by ``transcription_session.updated``.

Either way the configuration is kept in the GA shape (``type: "transcription"``), as every
other session is. The words come from pocketsphinx (the ``transcribe`` extra; its wheel
ships an English model) run on the turn's audio at 16 kHz; without it the transcript is a
deterministic placeholder naming the audio's length. Recognition costs about a second of
CPU for a few seconds of audio (bounded by :data:`MAX_RECOGNISE_MS`), so the sans-I/O core
hands each committed turn out as a :class:`TranscriptionJob` and the server runs it in a
worker thread (one at a time per emulator), keeping the event loop -- and, in ``voicebridge
serve``'s built-in emulator, the media clock -- free.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from bridge.realtime.emulator.audio import AUDIO_FORMATS, PREVIEW_FORMATS, AudioFormat, convert
from bridge.realtime.emulator.dialect import SessionUpdateError, _turn_detection

try:   # the ``transcribe`` extra
    from pocketsphinx import Decoder  # type: ignore[import-untyped]
except ImportError:  # pragma: no cover - without the extra: the placeholder
    Decoder = None

__all__ = [
    "MAX_RECOGNISE_MS", "apply_transcription_update",
    "TranscriptionJob", "is_transcription", "recognise", "transcription_events",
    "transcription_view",
]

#: Audio beyond this much of one turn is not recognised (the placeholder covers it).
MAX_RECOGNISE_MS = 120_000
_PREVIEW_KEYS = frozenset({"input_audio_format", "input_audio_transcription",
                           "turn_detection", "input_audio_noise_reduction", "include",
                           "modalities", "client_secret"})
_GA_KEYS = frozenset({"type", "audio", "include"})
_GA_INPUT_KEYS = frozenset({"format", "transcription", "noise_reduction", "turn_detection"})
#: 20 ms at 16 kHz (bytes) louder than this RMS is speech (about -45 dBFS)
SPEECH_RMS = 180.0
_FRAME = 640
_MARGIN = 15
_PCM16_16K = AudioFormat("audio/pcm", "pcm16", 16000, 2)


def is_transcription(session: Mapping[str, Any]) -> bool:
    return session.get("type") == "transcription"


def _object(value: Any, param: str) -> dict[str, Any] | None:
    if value is not None and not isinstance(value, dict):
        raise SessionUpdateError("invalid_value",
                                 f"Invalid type for '{param}': expected an object.", param)
    return value


def _unknown(keys: Any, known: frozenset[str], prefix: str) -> None:
    for key in keys:
        if key not in known:
            raise SessionUpdateError("unknown_parameter",
                                     f"Unknown parameter: '{prefix}{key}'.", f"{prefix}{key}")


def _no_responses(td: dict[str, Any] | None) -> dict[str, Any] | None:
    """A transcription session's turn detection never creates a response."""
    if td is None:
        return None
    td = dict(td)
    td["create_response"] = False
    td["interrupt_response"] = False
    return td


def apply_transcription_update(current: Mapping[str, Any], update: Any, dialect: str
                               ) -> dict[str, Any]:
    """The merged GA-shaped transcription session, or raise
    :class:`SessionUpdateError` (``current`` is left untouched)."""
    if not isinstance(update, dict):
        raise SessionUpdateError("missing_required_parameter",
                                 "Missing required parameter: 'session'.", "session")
    session = copy.deepcopy(dict(current))
    session["type"] = "transcription"
    audio_in = session["audio"]["input"]
    if dialect == "preview":
        _unknown(update, _PREVIEW_KEYS, "session.")
        if "input_audio_format" in update:
            fmt = PREVIEW_FORMATS.get(update["input_audio_format"])
            if fmt is None:
                raise SessionUpdateError("invalid_value",
                    f"Invalid value: '{update['input_audio_format']}'.",
                    "session.input_audio_format")
            audio_in["format"] = fmt.ga_dict()
        pairs = (("input_audio_transcription", "transcription"),
                 ("turn_detection", "turn_detection"),
                 ("input_audio_noise_reduction", "noise_reduction"))
    else:
        _unknown(update, _GA_KEYS, "session.")
        inp = _object(update.get("audio"), "session.audio") or {}
        _unknown(inp, frozenset({"input"}), "session.audio.")
        inp = _object(inp.get("input"), "session.audio.input") or {}
        _unknown(inp, _GA_INPUT_KEYS, "session.audio.input.")
        if "format" in inp:
            fmt_obj = _object(inp["format"], "session.audio.input.format") or {}
            if fmt_obj.get("type") not in AUDIO_FORMATS:
                raise SessionUpdateError("invalid_value", "Invalid value for the input format.",
                                               "session.audio.input.format.type")
            audio_in["format"] = AUDIO_FORMATS[fmt_obj["type"]].ga_dict()
        update = inp
        pairs = (("transcription", "transcription"), ("turn_detection", "turn_detection"),
                 ("noise_reduction", "noise_reduction"))
    for key, target in pairs:
        if key in update:
            check = _turn_detection if target == "turn_detection" else _object
            audio_in[target] = check(update[key], f"session.{key}")
    audio_in["turn_detection"] = _no_responses(audio_in["turn_detection"])
    if audio_in["transcription"] is None:
        raise SessionUpdateError("invalid_value", "A transcription session needs a transcription "
                                       "model.", "session.audio.input.transcription")
    return session


def transcription_view(session: Mapping[str, Any], preview: bool) -> dict[str, Any]:
    """The session as ``session.updated`` (GA) or ``transcription_session.updated``
    (preview) shows it."""
    audio_in = session["audio"]["input"]
    if not preview:
        return {"type": "transcription", "object": "realtime.transcription_session",
                "id": session["id"], "expires_at": session["expires_at"],
                "audio": {"input": dict(audio_in)}}
    td = audio_in["turn_detection"]
    return {
        "client_secret": {"value": "", "expires_at": session["expires_at"]},
        "input_audio_format": AUDIO_FORMATS[audio_in["format"]["type"]].preview_name,
        "input_audio_transcription": audio_in["transcription"],
        "modalities": ["text"],
        "turn_detection": None if td is None else {
            k: td[k] for k in ("type", "threshold", "prefix_padding_ms",
                               "silence_duration_ms") if k in td},
    }


def _trim(pcm: bytes) -> bytes:
    """``pcm`` (16 kHz) without the silence before and after the speech, 300 ms kept each
    side: the service's own voice detection does as much, and long silent edges make
    pocketsphinx's English model hear words in the noise."""
    x = np.frombuffer(pcm[:len(pcm) // _FRAME * _FRAME], dtype="<i2").astype(np.float32)
    if not x.size:
        return pcm
    rms = np.sqrt(np.mean(x.reshape(-1, _FRAME // 2) ** 2, axis=1))
    voiced = np.nonzero(rms > SPEECH_RMS)[0]
    if not voiced.size:
        return pcm
    lo = max(int(voiced[0]) - _MARGIN, 0)
    hi = min(int(voiced[-1]) + 1 + _MARGIN, rms.size)
    return pcm[lo * _FRAME:hi * _FRAME]


def recognise(audio: bytes, fmt: AudioFormat) -> str | None:
    """The words pocketsphinx hears in ``audio`` (``fmt``), or None without pocketsphinx."""
    if Decoder is None:
        return None
    pcm = _trim(convert(fmt, audio[:int(MAX_RECOGNISE_MS * fmt.bytes_per_ms)], _PCM16_16K))
    decoder = Decoder(samprate=16000, loglevel="FATAL")
    decoder.start_utt()
    decoder.process_raw(pcm, full_utt=True)
    decoder.end_utt()
    hyp = decoder.hyp()
    return hyp.hypstr.strip() if hyp is not None else ""


@dataclass(frozen=True)
class TranscriptionJob:
    """One committed turn of a transcription session waiting for its words: the core
    hands it out (``SessionCore.take_jobs``), the adapter recognises it off the event loop
    and gives the text back (``SessionCore.finish_job``)."""

    item_id: str
    audio: bytes
    fmt: AudioFormat
    committed_ms: float

    def run(self) -> str | None:
        return recognise(self.audio, self.fmt)


def transcription_events(item_id: str, audio_s: float, committed_ms: float,
                         text: str | None, *, words: bool) -> list[dict[str, Any]]:
    """What one committed turn is answered with: deltas (``words``: a transcription
    session), then ``...completed``; ``text`` None is the placeholder."""
    if text is None:
        text = f"({audio_s:.1f} s of caller audio; the emulator does not transcribe)"
    events: list[dict[str, Any]] = []
    if words:
        parts = text.split(" ")
        for i, part in enumerate(parts):
            events.append({
                "type": "conversation.item.input_audio_transcription.delta",
                "item_id": item_id, "content_index": 0,
                "delta": part if i == 0 else " " + part})
    events.append({
        "type": "conversation.item.input_audio_transcription.completed",
        "item_id": item_id, "content_index": 0, "transcript": text,
        "usage": {"type": "duration", "seconds": round(committed_ms / 1000.0, 3)},
    })
    return events
