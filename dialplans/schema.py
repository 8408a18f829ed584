"""The shape of a dialplan file, as pydantic models of the parsed TOML.

These models check what one field can check alone (types, ranges, patterns, a regex that
compiles, a voice that exists). Checks across fields and files (a DTMF action naming an
unknown target, a tool that is not registered, two defaults) are the loader's. Every model
forbids unknown keys, so a misspelt key is an error on its own line rather than a setting
silently ignored.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from bridge.dialplans.analysis import AnalysisModel
from bridge.dialplans.recording import RecordingModel, RedactionModel
from bridge.dialplans.summary import SummaryModel
from bridge.dialplans.turns import TurnsModel
from bridge.dialplans.voicemail import VoicemailModel

#: Voices the Realtime API offers (docs/realtime-protocol.md §9).
VOICES = frozenset(
    {"alloy", "ash", "ballad", "coral", "echo", "sage", "shimmer", "verse", "marin", "cedar"}
)
SOURCES = ("sip", "webrtc", "memory")
TARGET_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
TOOL_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,63}$")
DIGIT = re.compile(r"^[0-9*#A-D]$")
# A SIP/SIPS URI with a host, a tel URI, or a dialable number / extension.
_SIP_URI = re.compile(r"^sips?:(?:[^@\s<>\"]+@)?[A-Za-z0-9.\-\[\]:]+(?::\d{1,5})?(?:;[^\s<>\"]*)?$")
_TEL_URI = re.compile(r"^tel:\+?[0-9\-.()]{2,32}(?:;[^\s<>\"]*)?$")
_NUMBER = re.compile(r"^\+?[0-9]{2,20}$")
DEFAULT_GREETING = "Greet the caller briefly and ask how you can help."


def _as_list(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


def _digit(key: str) -> str:
    if not DIGIT.match(key):
        raise ValueError(f"{key!r} is not a DTMF digit (0-9 * # A-D)")
    return key


def _target_name(key: str) -> str:
    if not TARGET_NAME.match(key):
        raise ValueError(f"target name {key!r}: a lower-case letter, then letters, digits, - or _")
    return key


Patterns = Annotated[list[str], BeforeValidator(_as_list)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MatchModel(_Model):
    """``[match]``: which calls this plan answers."""

    called: Patterns = Field(default_factory=list)
    caller: Patterns = Field(default_factory=list)
    source: Annotated[list[Literal["sip", "webrtc", "memory"]], BeforeValidator(_as_list)] = (
        Field(default_factory=list)
    )
    default: bool = False
    priority: int = Field(default=0, ge=-1000, le=1000)

    @field_validator("called", "caller")
    @classmethod
    def _patterns_compile(cls, value: list[str]) -> list[str]:
        for pattern in value:
            if not pattern:
                raise ValueError("empty pattern")
            if pattern.startswith("re:"):
                try:
                    re.compile(pattern[3:])
                except re.error as exc:
                    raise ValueError(f"bad regular expression {pattern[3:]!r}: {exc}") from None
        return value

    @model_validator(mode="after")
    def _default_alone(self) -> MatchModel:
        if self.default and (self.called or self.caller or self.source):
            raise ValueError("a default plan matches every call: remove called/caller/source")
        return self


class TurnDetectionModel(_Model):
    """``[agent.turn_detection]`` (docs/realtime-protocol.md §9); type "none" means manual turns."""

    type: Literal["server_vad", "semantic_vad", "none"] = "server_vad"
    threshold: float | None = Field(default=None, ge=0.0, le=1.0)
    prefix_padding_ms: int | None = Field(default=None, ge=0, le=5000)
    silence_duration_ms: int | None = Field(default=None, ge=0, le=10000)
    idle_timeout_ms: int | None = Field(default=None, ge=5000, le=30000)
    eagerness: Literal["low", "medium", "high", "auto"] | None = None
    create_response: bool = True
    interrupt_response: bool = True

    @model_validator(mode="after")
    def _fits_type(self) -> TurnDetectionModel:
        vad_only = ("threshold", "prefix_padding_ms", "silence_duration_ms", "idle_timeout_ms")
        if self.type == "semantic_vad":
            given = [name for name in vad_only if getattr(self, name) is not None]
            if given:
                raise ValueError(f"{', '.join(given)}: server_vad settings, not semantic_vad")
        elif self.eagerness is not None:
            raise ValueError("eagerness applies to semantic_vad only")
        return self


class TranscriptionModel(_Model):
    """``[agent.transcription]``: the caller-side transcript (a deployment name on Azure)."""

    model: str = Field(min_length=1)
    language: str | None = Field(default=None, pattern=r"^[a-z]{2,3}(-[A-Za-z0-9]{2,8})?$")


def _greeting(value: Any) -> Any:
    if value is True:
        return DEFAULT_GREETING
    if value is False:
        return None
    return value


class AgentModel(_Model):
    """``[agent]``: the Realtime session profile."""

    instructions: str = ""
    voice: str = "alloy"
    audio_format: Literal["pcm16", "g711"] = "pcm16"
    turn_detection: TurnDetectionModel = Field(default_factory=TurnDetectionModel)
    transcription: TranscriptionModel | None = None
    noise_reduction: Literal["near_field", "far_field"] | None = None
    greeting: Annotated[str | None, BeforeValidator(_greeting)] = None
    language: str | None = Field(default=None, pattern=r"^[a-z]{2,3}(-[A-Za-z0-9]{2,8})?$")
    max_output_tokens: int | None = Field(default=None, ge=1, le=4096)

    @field_validator("voice")
    @classmethod
    def _known_voice(cls, value: str) -> str:
        if value not in VOICES:
            raise ValueError(f"unknown voice {value!r}; one of {', '.join(sorted(VOICES))}")
        return value


def _target_table(value: Any) -> Any:
    return {"uri": value} if isinstance(value, str) else value


class TargetModel(_Model):
    """One ``[targets]`` entry: ``name = "sip:..."`` or ``name = {uri=..., description=...}``."""

    uri: str
    description: str = ""

    @field_validator("uri")
    @classmethod
    def _dialable(cls, value: str) -> str:
        if not (_SIP_URI.match(value) or _TEL_URI.match(value) or _NUMBER.match(value)):
            raise ValueError(
                f"{value!r} is neither a sip:/sips:/tel: URI nor a number like +15551234567"
            )
        return value


class LimitsModel(_Model):
    """``[limits]``: how long a call may last, and how long the caller may stay silent."""

    max_call_s: float = Field(default=3600.0, gt=0, le=86400)
    caller_silence_s: float | None = Field(default=None, gt=0, le=3600)


class DtmfActionModel(_Model):
    """One ``[dtmf.actions]`` entry, e.g. ``"0" = { action = "transfer", target = "operator" }``."""

    action: Literal["transfer", "hangup", "say"]
    target: str | None = None
    text: str | None = None

    @model_validator(mode="after")
    def _complete(self) -> DtmfActionModel:
        if self.action == "transfer" and not self.target:
            raise ValueError("a transfer action needs a target")
        if self.action == "say" and not self.text:
            raise ValueError("a say action needs a text")
        if self.action != "transfer" and self.target is not None:
            raise ValueError(f"target is only for transfer, not {self.action}")
        return self


class DtmfModel(_Model):
    """``[dtmf]``: what key presses do."""

    to_model: bool = False
    actions: dict[Annotated[str, AfterValidator(_digit)], DtmfActionModel] = Field(
        default_factory=dict
    )


class FallbackModel(_Model):
    """``[fallback]``: what happens when the agent cannot be had."""

    announcement: str | None = None
    tones: str | None = None
    action: Literal["transfer", "hangup"] = "hangup"
    target: str | None = None
    #: seconds to try to get a lost upstream back before the fallback (unset: 10 s)
    reconnect_budget_s: float | None = Field(default=None, ge=0, le=300)
    #: what the caller hears while the upstream is being reconnected (a sound or tones)
    hold: str | None = None

    @model_validator(mode="after")
    def _complete(self) -> FallbackModel:
        if self.action == "transfer" and not self.target:
            raise ValueError("a transfer fallback needs a target")
        if self.action == "hangup" and self.target is not None:
            raise ValueError("target is only for action = \"transfer\"")
        return self


class WebhookModel(_Model):
    """One ``[[webhook]]`` tool: an HTTP request the model may make."""

    name: str = Field(pattern=TOOL_NAME.pattern)
    description: str = Field(min_length=1)
    url: str = Field(min_length=1)
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"] = "GET"
    headers: dict[str, str] = Field(default_factory=dict)
    timeout: float = Field(default=5.0, gt=0, le=60)
    parameters: dict[str, Any] = Field(
        default_factory=lambda: {"type": "object", "properties": {}}
    )
    response: Annotated[list[str], BeforeValidator(_as_list)] = Field(default_factory=list)

    @field_validator("method", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @field_validator("response")
    @classmethod
    def _paths(cls, value: list[str]) -> list[str]:
        for path in value:
            if not re.fullmatch(r"[A-Za-z0-9_\-]+(\.[A-Za-z0-9_\-]+)*", path):
                raise ValueError(f"{path!r} is not a dotted field path like \"data.eta\"")
        return value


class PythonToolModel(_Model):
    """One ``[[python]]`` tool: an async function of the operator's own module."""

    function: str = Field(pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
    name: str | None = Field(default=None, pattern=TOOL_NAME.pattern)
    description: str | None = None
    timeout: float = Field(default=5.0, gt=0, le=300)
    bind: dict[str, Any] = Field(default_factory=dict)


class DialplanModel(_Model):
    """A whole dialplan file."""

    description: str = ""
    tools: list[str] = Field(default_factory=list)
    match: MatchModel = Field(default_factory=MatchModel)
    agent: AgentModel = Field(default_factory=AgentModel)
    targets: dict[
        Annotated[str, AfterValidator(_target_name)],
        Annotated[TargetModel, BeforeValidator(_target_table)],
    ] = Field(default_factory=dict)
    limits: LimitsModel = Field(default_factory=LimitsModel)
    dtmf: DtmfModel = Field(default_factory=DtmfModel)
    fallback: FallbackModel = Field(default_factory=FallbackModel)
    webhook: list[WebhookModel] = Field(default_factory=list)
    python: list[PythonToolModel] = Field(default_factory=list)
    summary: SummaryModel = Field(default_factory=SummaryModel)
    turns: TurnsModel | None = None
    analysis: AnalysisModel | None = None
    recording: RecordingModel | None = None
    redaction: RedactionModel | None = None
    voicemail: VoicemailModel | None = None

