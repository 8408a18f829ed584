"""Loaded dialplans: the values the call engine reads, and the matching of a call to one.

Matching
--------
``DialplanSet.match(called=, caller=, source=)`` picks, among the plans whose rules all
hold, the one with the highest ``priority``; between equal priorities the more specific
rules win (more rules, then more of them exact, then more literal characters in the
patterns that matched); then the file name decides, so the choice never depends on directory order.
The default plan is considered only when no other plan matches, whatever its priority.

A pattern is exact (``"+15550100"``), a glob when it has ``*``, ``?`` or ``[``
(``"+1555*"``), or a regular expression when written ``"re:..."``; globs and regular
expressions must match the whole string.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from bridge.call.leg import Source
from bridge.dialplans.analysis import AnalysisConfig
from bridge.dialplans.recording import RecordingPolicy, RedactionPolicy
from bridge.dialplans.summary import SummaryConfig
from bridge.dialplans.tools import ToolRegistry
from bridge.dialplans.turns import TurnsConfig
from bridge.dialplans.voicemail import Voicemail
from bridge.errors import DialplanError
from bridge.realtime.profile import SessionProfile, TurnDetection

_EXACT, _REGEX, _GLOB = 2, 1, 0


@dataclass(frozen=True)
class Pattern:
    """One ``called``/``caller`` pattern."""

    text: str
    kind: int
    regex: re.Pattern[str] | None = field(default=None, compare=False)

    @classmethod
    def parse(cls, text: str) -> Pattern:
        if text.startswith("re:"):
            return cls(text, _REGEX, re.compile(text[3:]))
        if any(ch in text for ch in "*?["):
            return cls(text, _GLOB, re.compile(fnmatch.translate(text)))
        return cls(text, _EXACT)

    @property
    def literal_chars(self) -> int:
        if self.kind == _GLOB:
            return sum(ch not in "*?[]" for ch in self.text)
        return len(self.text)

    def matches(self, value: str) -> bool:
        if self.regex is None:
            return value == self.text
        return self.regex.fullmatch(value) is not None


@dataclass(frozen=True)
class MatchRule:
    """``[match]`` of one plan; an empty list means "any"."""

    called: tuple[Pattern, ...] = ()
    caller: tuple[Pattern, ...] = ()
    sources: frozenset[str] = frozenset()
    default: bool = False
    priority: int = 0

    def specificity(self, *, called: str, caller: str, source: str) -> tuple[int, ...] | None:
        """None if the rule does not hold; else a sort key, larger = more specific."""
        exact = rules = literal = 0
        for patterns, value in ((self.called, called), (self.caller, caller)):
            if not patterns:
                continue
            hits = [p for p in patterns if p.matches(value)]
            if not hits:
                return None
            best = max(hits, key=lambda p: (p.kind, p.literal_chars))
            rules += 1
            exact += best.kind == _EXACT
            literal += best.literal_chars
        if self.sources:
            if source not in self.sources:
                return None
            rules += 1
        return (rules, exact, literal)

    def describe(self) -> str:
        if self.default:
            return "default (any call no other plan takes)"
        parts = []
        if self.called:
            parts.append("called " + " | ".join(p.text for p in self.called))
        if self.caller:
            parts.append("caller " + " | ".join(p.text for p in self.caller))
        if self.sources:
            parts.append("source " + " | ".join(sorted(self.sources)))
        return (", ".join(parts) or "any call") + f" (priority {self.priority})"


@dataclass(frozen=True)
class AgentConfig:
    """``[agent]``: the Realtime session profile of the plan."""

    instructions: str = ""
    voice: str = "alloy"
    audio_format: Literal["pcm16", "g711"] = "pcm16"
    #: Turn detection settings (keys of ``TurnDetection``); None = manual turns.
    turn_detection: Mapping[str, Any] | None = None
    transcription_model: str | None = None
    transcription_language: str | None = None
    noise_reduction: str | None = None
    #: Instructions for the first response; None = the caller speaks first.
    greeting: str | None = None
    language: str | None = None
    max_output_tokens: int | None = None


@dataclass(frozen=True)
class Limits:
    max_call_s: float = 3600.0
    caller_silence_s: float | None = None


@dataclass(frozen=True)
class DtmfAction:
    kind: Literal["transfer", "hangup", "say"]
    target: str | None = None
    text: str | None = None


@dataclass(frozen=True)
class DtmfConfig:
    #: Digits with no action go to the model as a text item when True (else are ignored).
    to_model: bool = False
    actions: Mapping[str, DtmfAction] = field(default_factory=dict)


@dataclass(frozen=True)
class Fallback:
    """What runs when the agent cannot be had: play, then transfer or hang up.

    ``announcement`` is a bundled sound name or an absolute WAV path, ``tones`` a tone
    spec; either is passed as is to ``load_announcement(spec, rate)``.
    """

    announcement: str | None = None
    tones: str | None = None
    action: Literal["transfer", "hangup"] = "hangup"
    target: str | None = None
    #: how long to try to get a lost upstream back (None: the process default, 10 s;
    #: 0: the fallback at once)
    reconnect_budget_s: float | None = None
    #: played in a loop while reconnecting (a sound or tone spec; None: a soft chime)
    hold: str | None = None


@dataclass(frozen=True, eq=False)
class Dialplan:
    """One loaded, validated dialplan file."""

    name: str
    file: Path
    match: MatchRule
    agent: AgentConfig
    tools: ToolRegistry
    targets: dict[str, str]
    limits: Limits = field(default_factory=Limits)
    dtmf: DtmfConfig = field(default_factory=DtmfConfig)
    fallback: Fallback = field(default_factory=Fallback)
    description: str = ""
    target_descriptions: dict[str, str] = field(default_factory=dict)
    summary: SummaryConfig = field(default_factory=SummaryConfig)
    #: ``[turns]``: the bridge's own turn handling (None: the server's alone)
    turns: TurnsConfig | None = None
    analysis: AnalysisConfig = field(default_factory=AnalysisConfig)
    recording: RecordingPolicy = field(default_factory=RecordingPolicy)
    redaction: RedactionPolicy = field(default_factory=RedactionPolicy)
    #: ``[voicemail]`` (bridge.dialplans.voicemail), None when the plan has none
    voicemail: Voicemail | None = None

    def session_profile(self, *, leg_g711: str | None = None) -> SessionProfile:
        """The Realtime session profile, tools included.

        ``audio_format = "g711"`` passes G.711 through untranscoded when the leg carries it:
        ``leg_g711`` is the leg's ``g711`` ("pcmu"/"pcma"; "" for a non-G.711 leg, which
        then gets PCM16). None (not known yet) means µ-law.
        """
        agent = self.agent
        audio_format = "pcm16"
        if agent.audio_format == "g711":
            audio_format = "pcmu" if leg_g711 is None else (leg_g711 or "pcm16")
        td = None
        if agent.turn_detection is not None:
            td = TurnDetection(**dict(agent.turn_detection))
        return SessionProfile(
            instructions=agent.instructions,
            voice=agent.voice,
            audio_format=audio_format,
            turn_detection=td,
            transcription_model=agent.transcription_model,
            transcription_language=agent.transcription_language,
            noise_reduction=agent.noise_reduction,
            tools=tuple(self.tools.specs()),
            max_output_tokens=agent.max_output_tokens,
        )


class DialplanSet:
    """All plans of a folder; exactly one is the default."""

    def __init__(self, plans: list[Dialplan]) -> None:
        defaults = [plan for plan in plans if plan.match.default]
        if len(defaults) != 1:
            raise DialplanError(
                f"{len(defaults)} default dialplans; exactly one needs [match] default = true",
                file=str(defaults[1].file if len(defaults) > 1 else ""), field="match.default",
            )
        self.default = defaults[0]
        self._ranked = sorted(
            (plan for plan in plans if not plan.match.default),
            key=lambda plan: (-plan.match.priority, plan.file.name),
        )
        self._by_name = {plan.name: plan for plan in plans}

    def match(self, *, called: str, caller: str, source: str | Source) -> Dialplan:
        """The plan for a call (see the module docstring for the order)."""
        if isinstance(source, Source):
            source = source.value
        best: tuple[tuple[int, ...], Dialplan] | None = None
        for plan in self._ranked:
            if best is not None and plan.match.priority < best[1].match.priority:
                break
            spec = plan.match.specificity(called=called, caller=caller, source=source)
            if spec is not None and (best is None or spec > best[0]):
                best = (spec, plan)
        return self.default if best is None else best[1]

    def __getitem__(self, name: str) -> Dialplan:
        return self._by_name[name]

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __iter__(self) -> Iterator[Dialplan]:
        """Plans in matching order, the default last."""
        return iter([*self._ranked, self.default])

    def __len__(self) -> int:
        return len(self._by_name)
