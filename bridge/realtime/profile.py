"""Agent profile -> ``session.update`` in the GA or the preview dialect.

GA (``openai/types/realtime/realtime_session_create_request.py``) nests audio settings under
``session.audio.{input,output}`` and requires ``session.type = "realtime"``; preview
(``openai/types/beta/realtime/session_update_event.py``) is flat.
docs/realtime-protocol.md §2 has the table. Audio is PCM16 at 24 kHz by default (the only
PCM rate the service accepts, §7); ``pcmu``/``pcma`` let a G.711 caller pass through
without transcoding.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bridge.errors import ConfigError

AUDIO_FORMATS = ("pcm16", "pcmu", "pcma")
TURN_DETECTION_TYPES = ("server_vad", "semantic_vad")
NOISE_REDUCTION_TYPES = ("near_field", "far_field")
EAGERNESS = ("low", "medium", "high", "auto")

#: Bytes of audio per millisecond in each format (docs/realtime-protocol.md §7).
BYTES_PER_MS = {"pcm16": 48, "pcmu": 8, "pcma": 8}
#: Sample rate of each format.
SAMPLE_RATE = {"pcm16": 24000, "pcmu": 8000, "pcma": 8000}

_GA_FORMAT: dict[str, dict[str, Any]] = {
    "pcm16": {"type": "audio/pcm", "rate": 24000},
    "pcmu": {"type": "audio/pcmu"},
    "pcma": {"type": "audio/pcma"},
}
_PREVIEW_FORMAT = {"pcm16": "pcm16", "pcmu": "g711_ulaw", "pcma": "g711_alaw"}


@dataclass(frozen=True)
class TurnDetection:
    """Server-side turn detection (docs/realtime-protocol.md §9). ``None`` on the profile =
    manual turns."""

    type: str = "server_vad"
    threshold: float | None = None
    prefix_padding_ms: int | None = None
    silence_duration_ms: int | None = None
    idle_timeout_ms: int | None = None
    eagerness: str | None = None
    create_response: bool = True
    interrupt_response: bool = True

    def __post_init__(self) -> None:
        if self.type not in TURN_DETECTION_TYPES:
            raise ConfigError(f"turn_detection.type: {self.type!r} is not one of "
                              f"{', '.join(TURN_DETECTION_TYPES)}")
        if self.eagerness is not None and self.eagerness not in EAGERNESS:
            raise ConfigError(f"turn_detection.eagerness: {self.eagerness!r} is not one of "
                              f"{', '.join(EAGERNESS)}")
        if self.threshold is not None and not 0.0 <= self.threshold <= 1.0:
            raise ConfigError(f"turn_detection.threshold: {self.threshold} is not in 0..1")


@dataclass(frozen=True)
class ToolSpec:
    """A function the model may call; ``parameters`` is a JSON Schema object."""

    name: str
    description: str
    parameters: dict[str, Any]


@dataclass(frozen=True)
class SessionProfile:
    """What the agent is: everything that goes into ``session.update``.

    ``transcription_model`` is an Azure *deployment name* on Azure (docs/realtime-protocol.md §1).
    """

    instructions: str = ""
    voice: str = "alloy"
    audio_format: str = "pcm16"  # or "pcmu" / "pcma"
    turn_detection: TurnDetection | None = field(default_factory=TurnDetection)
    transcription_model: str | None = None
    transcription_language: str | None = None
    noise_reduction: str | None = None
    tools: tuple[ToolSpec, ...] = ()
    max_output_tokens: int | None = None

    def __post_init__(self) -> None:
        if self.audio_format not in AUDIO_FORMATS:
            raise ConfigError(f"audio_format: {self.audio_format!r} is not one of "
                              f"{', '.join(AUDIO_FORMATS)}")
        if self.noise_reduction is not None and self.noise_reduction not in NOISE_REDUCTION_TYPES:
            raise ConfigError(f"noise_reduction: {self.noise_reduction!r} is not one of "
                              f"{', '.join(NOISE_REDUCTION_TYPES)}")
        if self.max_output_tokens is not None and not 1 <= self.max_output_tokens <= 4096:
            raise ConfigError(f"max_output_tokens: {self.max_output_tokens} is not in 1..4096")

    @property
    def bytes_per_ms(self) -> int:
        return BYTES_PER_MS[self.audio_format]

    @property
    def interrupt_response(self) -> bool:
        """Whether the server cancels a running response itself on speech_started."""
        return self.turn_detection is not None and self.turn_detection.interrupt_response


def _turn_detection(td: TurnDetection | None, dialect: str) -> dict[str, Any] | None:
    if td is None:
        return None
    out: dict[str, Any] = {"type": td.type}
    if td.type == "server_vad":
        optional: dict[str, Any] = {
            "threshold": td.threshold,
            "prefix_padding_ms": td.prefix_padding_ms,
            "silence_duration_ms": td.silence_duration_ms,
        }
        # The preview session model has no idle_timeout_ms (beta SessionTurnDetection).
        if dialect == "ga":
            optional["idle_timeout_ms"] = td.idle_timeout_ms
    else:
        optional = {"eagerness": td.eagerness}
    out.update({k: v for k, v in optional.items() if v is not None})
    out["create_response"] = td.create_response
    out["interrupt_response"] = td.interrupt_response
    return out


def _transcription(profile: SessionProfile) -> dict[str, Any] | None:
    if profile.transcription_model is None:
        return None
    out = {"model": profile.transcription_model}
    if profile.transcription_language:
        out["language"] = profile.transcription_language
    return out


def _tools(profile: SessionProfile) -> list[dict[str, Any]]:
    return [{"type": "function", "name": t.name, "description": t.description,
             "parameters": t.parameters} for t in profile.tools]


def _ga_session(profile: SessionProfile) -> dict[str, Any]:
    audio_in: dict[str, Any] = {
        "format": dict(_GA_FORMAT[profile.audio_format]),
        "turn_detection": _turn_detection(profile.turn_detection, "ga"),
    }
    transcription = _transcription(profile)
    if transcription is not None:
        audio_in["transcription"] = transcription
    if profile.noise_reduction is not None:
        audio_in["noise_reduction"] = {"type": profile.noise_reduction}
    session: dict[str, Any] = {
        "type": "realtime",
        "instructions": profile.instructions,
        "output_modalities": ["audio"],
        "audio": {
            "input": audio_in,
            "output": {"format": dict(_GA_FORMAT[profile.audio_format]),
                       "voice": profile.voice},
        },
        "tools": _tools(profile),
        "tool_choice": "auto",
    }
    if profile.max_output_tokens is not None:
        session["max_output_tokens"] = profile.max_output_tokens
    return session


def _preview_session(profile: SessionProfile) -> dict[str, Any]:
    fmt = _PREVIEW_FORMAT[profile.audio_format]
    session: dict[str, Any] = {
        "instructions": profile.instructions,
        # The preview API wants text alongside audio ("audio" alone was refused there).
        "modalities": ["audio", "text"],
        "voice": profile.voice,
        "input_audio_format": fmt,
        "output_audio_format": fmt,
        "turn_detection": _turn_detection(profile.turn_detection, "preview"),
        "tools": _tools(profile),
        "tool_choice": "auto",
    }
    transcription = _transcription(profile)
    if transcription is not None:
        session["input_audio_transcription"] = transcription
    if profile.noise_reduction is not None:
        session["input_audio_noise_reduction"] = {"type": profile.noise_reduction}
    if profile.max_output_tokens is not None:
        session["max_response_output_tokens"] = profile.max_output_tokens
    return session


_BUILDERS = {"ga": _ga_session, "preview": _preview_session}


def build_session_update(profile: SessionProfile, dialect: str) -> dict[str, Any]:
    """The ``session.update`` client event for ``profile`` in ``dialect`` ("ga"/"preview")."""
    try:
        builder = _BUILDERS[dialect]
    except KeyError:
        raise ValueError(f"unknown Realtime dialect {dialect!r}") from None
    return {"type": "session.update", "session": builder(profile)}
