"""``[recording]`` and ``[redaction]`` of a dialplan: what a call keeps, and what it must not.

``[recording]`` (``RecordingModel`` -> ``RecordingPolicy``): record the call as a stereo
WAV (caller left, agent right, at the leg's rate), announce it first (``consent``: a
bundled sound, a WAV file or tones played by the bridge before the agent speaks;
``consent_text``: words the agent says before its greeting), and keep the file
``retention_days``. Where the files go is the process's ``[records] recordings_path``.

``[redaction]`` (``RedactionModel`` -> ``RedactionPolicy``): the patterns whose matches
are masked in transcripts, tool arguments, events and records, and taken out of the
model's context once the tool that needed them has run (``bridge/call/redaction.py``).
``cards = true`` (the default once the table is there) adds the built-in rule: 13 to 19
digits, spaces or dashes between them allowed, that pass the Luhn check.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from pydantic import BaseModel, ConfigDict, Field, field_validator

from bridge.dialplans.announce import is_bundled_name, is_tone_spec, parse_tones, resolve_sound

#: ``fail(message, field path)``: the loader's error with file, line and field.
Fail = Callable[[str, tuple[str | int, ...]], NoReturn]


class RecordingModel(BaseModel):
    """``[recording]``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    consent: str | None = None
    consent_text: str | None = Field(default=None, min_length=1, max_length=500)
    retention_days: int = Field(default=30, ge=1, le=3650)


class RedactionModel(BaseModel):
    """``[redaction]``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cards: bool = True
    patterns: list[str] = Field(default_factory=list, max_length=32)
    #: the text a match is replaced with
    mask: str = Field(default="[redacted]", min_length=1, max_length=40)

    @field_validator("patterns")
    @classmethod
    def _compiles(cls, patterns: list[str]) -> list[str]:
        for p in patterns:
            try:
                rx = re.compile(p)
            except re.error as exc:
                raise ValueError(f"pattern {p!r} does not compile: {exc}") from None
            if rx.match(""):
                raise ValueError(f"pattern {p!r} matches the empty string")
        return patterns


@dataclass(frozen=True)
class RecordingPolicy:
    """A plan's recording; ``enabled`` False (the default without the table): none."""

    enabled: bool = False
    consent: str | None = None         # a sound spec for load_announcement
    consent_text: str | None = None
    retention_days: int = 30


@dataclass(frozen=True)
class RedactionPolicy:
    """A plan's redaction rules; no patterns and no ``cards``: nothing is redacted."""

    cards: bool = False
    patterns: tuple[str, ...] = ()
    mask: str = "[redacted]"

    @property
    def active(self) -> bool:
        return self.cards or bool(self.patterns)


def recording_policy(model: RecordingModel | None, base: Path, fail: Fail) -> RecordingPolicy:
    """The policy of a parsed ``[recording]`` (None: the table is absent, no recording)."""
    if model is None:
        return RecordingPolicy()
    consent = model.consent
    if consent is not None:
        if is_tone_spec(consent):
            try:
                parse_tones(consent)
            except ValueError as exc:
                fail(str(exc), ("recording", "consent"))
        else:
            path = resolve_sound(consent, base)
            if path is None:
                fail(f"no bundled sound or WAV file {consent!r}", ("recording", "consent"))
            if not is_bundled_name(consent):
                consent = str(path.resolve())
    return RecordingPolicy(enabled=model.enabled, consent=consent,
                           consent_text=model.consent_text,
                           retention_days=model.retention_days)


def redaction_policy(model: RedactionModel | None) -> RedactionPolicy:
    if model is None:
        return RedactionPolicy()
    return RedactionPolicy(cards=model.cards, patterns=tuple(model.patterns), mask=model.mask)


__all__ = ["RecordingModel", "RecordingPolicy", "RedactionModel", "RedactionPolicy",
           "recording_policy", "redaction_policy"]
