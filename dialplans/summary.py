"""The ``[summary]`` table of a dialplan: a post-call summary over Chat Completions.

::

    [summary]
    enabled = true
    instructions = "Summarise the call for the support team."   # optional
    dispositions = ["resolved", "escalated", "handled", "no_conversation"]   # optional
    webhook_url = "${CRM_URL}/calls"              # optional: POST the summary there
    webhook_headers = { Authorization = "Bearer ${CRM_TOKEN}" }
    [summary.fields]
    order_number = { type = "string", description = "The order the caller asked about" }
    callback_wanted = { type = "boolean" }

``fields`` are the dialplan's own facts to pull out of the call (JSON Schema ``type``
string, number, integer or boolean, with an optional ``description`` and ``enum``); each
may be null when the call did not say. The model is asked for one JSON object
(``response_format`` ``json_schema``, strict): ``summary``, ``disposition`` (one of
``dispositions`` when given) and ``fields``. ``${NAME}`` in the webhook URL and header
values is read from the environment at load, as for webhook tools
(``bridge.dialplans.webhook``); header values are secrets, never shown or logged.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, NoReturn
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field

from bridge.dialplans.webhook import MissingEnv, Secret, expand_env

__all__ = ["DEFAULT_INSTRUCTIONS", "SummaryConfig", "SummaryFieldModel", "SummaryModel",
           "build_summary"]

DEFAULT_INSTRUCTIONS = (
    "Summarise this phone call for the team that follows up on it: what the caller wanted, "
    "what was done, and what is still open, in two to four sentences. Choose a disposition "
    "and fill in the fields from what was said (null when the call did not say).")


class SummaryFieldModel(BaseModel):
    """One field of ``[summary.fields]``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["string", "number", "integer", "boolean"] = "string"
    description: str = ""
    enum: list[str | int | float] | None = Field(default=None, min_length=1)


class SummaryModel(BaseModel):
    """``[summary]``: a post-call summary."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = False
    instructions: str = Field(default=DEFAULT_INSTRUCTIONS, min_length=1, max_length=8000)
    dispositions: list[str] = Field(default_factory=list, max_length=50)
    fields: dict[str, SummaryFieldModel] = Field(default_factory=dict, max_length=50)
    webhook_url: str | None = None
    webhook_headers: dict[str, str] = Field(default_factory=dict)
    webhook_timeout: float = Field(default=10.0, gt=0, le=60)


@dataclass(frozen=True)
class SummaryConfig:
    """A validated ``[summary]`` table, environment resolved."""

    enabled: bool = False
    instructions: str = DEFAULT_INSTRUCTIONS
    dispositions: tuple[str, ...] = ()
    fields: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    webhook_url: str | None = None
    webhook_headers: Mapping[str, Secret] = field(default_factory=dict)
    webhook_timeout_s: float = 10.0

    def describe(self) -> str:
        """One line for ``voicebridge check-dialplans`` (no secrets)."""
        fields = ", ".join(self.fields) or "none"
        hook = urlsplit(self.webhook_url).netloc if self.webhook_url else ""
        return (f"after the call; fields {fields}"
                + (f"; dispositions {', '.join(self.dispositions)}" if self.dispositions
                   else "") + (f"; webhook to {hook}" if hook else ""))

    def schema(self) -> dict[str, Any]:
        """The JSON schema of the answer (strict structured output)."""
        props: dict[str, Any] = {}
        for name, spec in self.fields.items():
            one: dict[str, Any] = {"type": [spec["type"], "null"]}
            if spec.get("description"):
                one["description"] = spec["description"]
            if spec.get("enum"):
                one["enum"] = [*spec["enum"], None]
            props[name] = one
        disposition: dict[str, Any] = {"type": "string"}
        if self.dispositions:
            disposition["enum"] = list(self.dispositions)
        return {"type": "object", "additionalProperties": False,
                "required": ["summary", "disposition", "fields"],
                "properties": {
                    "summary": {"type": "string"}, "disposition": disposition,
                    "fields": {"type": "object", "additionalProperties": False,
                               "required": list(props), "properties": props}}}


Fail = Callable[[str, tuple[str | int, ...]], NoReturn]


def build_summary(model: SummaryModel, env: Mapping[str, str], fail: Fail) -> SummaryConfig:
    """The ``SummaryConfig`` of a parsed table; ``fail(message, path)`` reports a problem."""
    url = None
    headers: dict[str, Secret] = {}
    try:
        if model.webhook_url is not None:
            url = expand_env(model.webhook_url, env)
    except MissingEnv as exc:
        fail(f"environment variable {exc.name} is not set", ("summary", "webhook_url"))
    if url is not None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            fail("not an http:// or https:// URL", ("summary", "webhook_url"))
    for name, value in model.webhook_headers.items():
        try:
            headers[name] = Secret(expand_env(value, env))
        except MissingEnv as exc:
            fail(f"environment variable {exc.name} is not set",
                 ("summary", "webhook_headers", name))
    if headers and url is None:
        fail("webhook_headers without a webhook_url", ("summary", "webhook_headers"))
    return SummaryConfig(
        enabled=model.enabled, instructions=model.instructions,
        dispositions=tuple(model.dispositions),
        fields={name: f.model_dump(exclude_none=True) for name, f in model.fields.items()},
        webhook_url=url, webhook_headers=headers, webhook_timeout_s=model.webhook_timeout)
