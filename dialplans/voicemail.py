"""``[voicemail]``: take a message instead of (or when there is no) agent.

A dialplan's ``[voicemail]`` table makes the bridge greet the caller, record the message
(until ``silence_s`` of caller silence, the ``end_digit`` key, or ``max_s``), transcribe
it over a Realtime transcription session (``model`` is the transcription deployment's
name), keep the WAV and the transcript with the call record, and post both to a webhook.

``when`` says which calls get it:

- ``"always"``: every call on the plan is a voicemail call;
- ``"upstream_down"``: only when the agent's upstream cannot be had (instead of the
  ``[fallback]`` announcement);
- ``"after_hours"``: outside the weekly ``hours`` table (``mon = "09:00-17:00"``, in
  ``timezone``), and also when the upstream is down.
"""

from __future__ import annotations

import datetime as dt
import re
import zoneinfo
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from bridge.dialplans.webhook import expand_env

__all__ = ["DAYS", "Voicemail", "VoicemailModel", "build_voicemail"]

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_SPAN = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)-([01]\d|2[0-4]):([0-5]\d)$")
When = Literal["always", "upstream_down", "after_hours"]


class VoicemailModel(BaseModel):
    """The ``[voicemail]`` table as written."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    when: When = "always"
    greeting: str | None = None
    goodbye: str | None = None
    max_s: float = Field(default=120.0, gt=0, le=600)
    silence_s: float = Field(default=4.0, gt=0, le=60)
    end_digit: str = Field(default="#", pattern=r"^[0-9*#A-D]$")
    model: str = Field(default="gpt-4o-transcribe", min_length=1)
    language: str | None = None
    directory: str = "voicemail"
    webhook_url: str | None = None
    webhook_headers: dict[str, str] = Field(default_factory=dict)
    hours: dict[str, str] = Field(default_factory=dict)
    timezone: str = "UTC"

    @field_validator("hours")
    @classmethod
    def _hours(cls, value: dict[str, str]) -> dict[str, str]:
        for day, span in value.items():
            if day not in DAYS:
                raise ValueError(f"{day!r} is not a day ({', '.join(DAYS)})")
            for part in span.split(","):
                if not _SPAN.match(part.strip()):
                    raise ValueError(f"{span!r} is not like \"09:00-17:00\"")
        return value

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}") from None
        return value


@dataclass(frozen=True)
class Voicemail:
    """The resolved ``[voicemail]`` settings (environment expanded)."""

    when: When = "always"
    greeting: str | None = None
    goodbye: str | None = None
    max_s: float = 120.0
    silence_s: float = 4.0
    end_digit: str = "#"
    model: str = "gpt-4o-transcribe"
    language: str | None = None
    directory: Path = Path("voicemail")
    webhook_url: str | None = None
    webhook_headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    #: per weekday (0 = Monday): opening spans in minutes of the day
    hours: tuple[tuple[tuple[int, int], ...], ...] = ((),) * 7
    timezone: str = "UTC"

    def open_at(self, when: dt.datetime) -> bool:
        """Whether ``when`` (aware) falls within the opening hours."""
        local = when.astimezone(zoneinfo.ZoneInfo(self.timezone))
        minute = local.hour * 60 + local.minute
        return any(lo <= minute < hi for lo, hi in self.hours[local.weekday()])

    def takes_call(self, when: dt.datetime) -> bool:
        """Whether a call arriving at ``when`` goes to voicemail straight away."""
        if self.when == "always":
            return True
        return self.when == "after_hours" and not self.open_at(when)


def _spans(text: str) -> tuple[tuple[int, int], ...]:
    out = []
    for part in text.split(","):
        m = _SPAN.match(part.strip())
        assert m is not None          # validated by the model
        h1, m1, h2, m2 = (int(g) for g in m.groups())
        out.append((h1 * 60 + m1, h2 * 60 + m2))
    return tuple(out)


def build_voicemail(model: VoicemailModel | None, env: Mapping[str, str]) -> Voicemail | None:
    """The settings a loaded dialplan carries (None: no voicemail). Raises ``KeyError``-
    like ``ValueError`` from :func:`expand_env` for a missing environment variable."""
    if model is None or not model.enabled:
        return None
    return Voicemail(
        when=model.when, greeting=model.greeting, goodbye=model.goodbye, max_s=model.max_s,
        silence_s=model.silence_s, end_digit=model.end_digit, model=model.model,
        language=model.language, directory=Path(model.directory),
        webhook_url=model.webhook_url,
        webhook_headers={k: expand_env(v, env) for k, v in model.webhook_headers.items()},
        hours=tuple(_spans(model.hours[d]) if d in model.hours else () for d in DAYS),
        timezone=model.timezone)
