"""``[analysis]`` of a dialplan: what the model analyses beside the conversation, and what
its results make the call do.

After every caller turn whose transcription completed, the call asks for an out-of-band
text response (``bridge.realtime.outofband``) reading the last ``items`` conversation
items, with the plan's ``instructions`` and its ``schema`` (a JSON schema the answer must
validate against; it is also written into the instructions, the only place a Realtime
``response.create`` can carry one). Results are stored per turn and drive
``[[analysis.actions]]``.

Conditions are deliberately tiny (no expressions, nothing evaluated): ``when`` is
``FIELD == VALUE`` (a top-level field of the result equals a JSON literal: a quoted
string, a number, ``true``/``false``/``null``) or ``FIELD has VALUE`` (a list field holds
the value). ``count`` is how many results must match (``consecutive = true``: in a row,
the default; else in total). An action fires once per call.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import jsonschema
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

DEFAULT_INSTRUCTIONS = (
    "Analyse the caller's latest turns: intent, sentiment and whether a human should take "
    "over. Answer with one JSON object only, matching this JSON schema:")
DEFAULT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "intent": {"type": "string"},
        "sentiment": {"type": "string", "enum": ["positive", "neutral", "negative"]},
        "escalate": {"type": "boolean"},
        "labels": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["intent", "sentiment", "escalate", "labels"],
}
_WHEN = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]{0,63})\s*(==|has)\s*(.+?)\s*$")


@dataclass(frozen=True)
class Condition:
    """``FIELD == VALUE`` or ``FIELD has VALUE`` over one analysis result."""

    field: str
    op: Literal["==", "has"]
    value: Any

    @classmethod
    def parse(cls, text: str) -> Condition:
        m = _WHEN.match(text)
        if m is None:
            raise ValueError(f"{text!r}: write FIELD == VALUE or FIELD has VALUE")
        literal = m.group(3)
        if literal.startswith("'") and literal.endswith("'") and len(literal) >= 2:
            literal = json.dumps(literal[1:-1])
        try:
            value = json.loads(literal)
        except ValueError:
            raise ValueError(f"{m.group(3)!r} is not a quoted string, number, true, false "
                             "or null") from None
        if isinstance(value, dict | list):
            raise ValueError("the value must be a single literal")
        return cls(m.group(1), "has" if m.group(2) == "has" else "==", value)

    def holds(self, result: Mapping[str, Any]) -> bool:
        got = result.get(self.field)
        if self.op == "has":
            return isinstance(got, list) and self.value in got
        return bool(got == self.value and type(got) is type(self.value))


@dataclass(frozen=True)
class AnalysisAction:
    when: Condition
    do: Literal["transfer", "tag", "hangup"]
    count: int = 1
    consecutive: bool = True
    target: str | None = None
    tag: str | None = None


@dataclass(frozen=True)
class AnalysisConfig:
    enabled: bool = False
    instructions: str = DEFAULT_INSTRUCTIONS
    schema: Mapping[str, Any] = field(default_factory=lambda: DEFAULT_SCHEMA)
    #: conversation items the analysis reads (the latest ones)
    items: int = 4
    max_concurrent: int = 2
    timeout_s: float = 10.0
    actions: tuple[AnalysisAction, ...] = ()

    def request_instructions(self) -> str:
        return f"{self.instructions}\n{json.dumps(dict(self.schema), separators=(',', ':'))}"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AnalysisActionModel(_Model):
    """One ``[[analysis.actions]]``."""

    when: str
    do: Literal["transfer", "tag", "hangup"]
    count: int = Field(default=1, ge=1, le=100)
    consecutive: bool = True
    target: str | None = None
    tag: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.:-]{1,64}$")

    @field_validator("when")
    @classmethod
    def _parses(cls, value: str) -> str:
        Condition.parse(value)
        return value

    @model_validator(mode="after")
    def _complete(self) -> AnalysisActionModel:
        if (self.do == "transfer") != (self.target is not None):
            raise ValueError("target is needed for do = \"transfer\" and only for it")
        if (self.do == "tag") != (self.tag is not None):
            raise ValueError("tag is needed for do = \"tag\" and only for it")
        return self


class AnalysisModel(_Model):
    """``[analysis]``: the live analysis of the caller's turns."""

    enabled: bool = True
    instructions: str = Field(default=DEFAULT_INSTRUCTIONS, min_length=1, max_length=4000)
    schema_: dict[str, Any] = Field(default_factory=lambda: dict(DEFAULT_SCHEMA),
                                    alias="schema")
    items: int = Field(default=4, ge=1, le=20)
    max_concurrent: int = Field(default=2, ge=1, le=8)
    timeout_s: float = Field(default=10.0, gt=0, le=120)
    actions: list[AnalysisActionModel] = Field(default_factory=list)

    @field_validator("schema_")
    @classmethod
    def _valid_schema(cls, value: dict[str, Any]) -> dict[str, Any]:
        try:
            jsonschema.Draft202012Validator.check_schema(value)
        except jsonschema.SchemaError as exc:
            raise ValueError(f"not a valid JSON schema: {exc.message}") from None
        if value.get("type") != "object":
            raise ValueError("the schema must describe an object (type = \"object\")")
        return value


def build(model: AnalysisModel | None) -> AnalysisConfig:
    """The engine's view of a parsed ``[analysis]`` (disabled when absent)."""
    if model is None or not model.enabled:
        return AnalysisConfig()
    return AnalysisConfig(
        enabled=True, instructions=model.instructions, schema=model.schema_,
        items=model.items, max_concurrent=model.max_concurrent, timeout_s=model.timeout_s,
        actions=tuple(AnalysisAction(
            when=Condition.parse(a.when), do=a.do, count=a.count, consecutive=a.consecutive,
            target=a.target, tag=a.tag) for a in model.actions))


def unknown_targets(model: AnalysisModel | None, targets: Sequence[str]) -> list[int]:
    """Indexes of the actions that name a target the plan does not have."""
    if model is None:
        return []
    return [i for i, a in enumerate(model.actions)
            if a.target is not None and a.target not in targets]


__all__ = ["DEFAULT_INSTRUCTIONS", "DEFAULT_SCHEMA", "AnalysisAction", "AnalysisActionModel",
           "AnalysisConfig", "AnalysisModel", "Condition", "build", "unknown_targets"]
