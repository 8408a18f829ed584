"""A deterministic stand-in for a chat model summarising a call, for Chat Completions.

Theory of operation
-------------------
The bridge sends a system message (its instructions, with a JSON schema of the fields a
dialplan wants) and a user message holding the call: transcript lines
``Caller: ...`` / ``Agent: ...``, then tool calls and analysis. The answer is one JSON
object, the shape the bridge asks for with ``response_format`` (``json_schema``)::

    {"summary": "...", "disposition": "...", "fields": {...}}

- ``summary``: "The caller said: <the caller's lines, joined>. The agent answered N
  time(s)." (at most :data:`MAX_QUOTE` characters quoted); "The call ended before anyone
  spoke." when there are no lines.
- ``disposition``: by rule on the caller's words (``bridge.realtime.emulator.analysis``):
  "escalated" when the analysis says escalate, "no_conversation" without caller lines,
  "resolved" when the sentiment is positive, else "handled".
- ``fields``: each key of the schema's ``fields`` properties (the keys the instructions'
  first JSON object names under ``fields``, else none), answered from the keyword analysis
  (``intent``, ``sentiment``, ``escalate``, ``labels``) or from ``caller_turns`` /
  ``agent_turns``; any other key is null.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

from bridge.realtime.emulator.analysis import analyse

__all__ = ["MAX_QUOTE", "call_lines", "field_keys", "summarise"]

MAX_QUOTE = 400
_LINE = re.compile(r"^\s*(caller|agent)\s*:\s*(.*\S)\s*$", re.IGNORECASE | re.MULTILINE)
_MAX_SCHEMA_CHARS = 16384


def call_lines(text: str) -> list[tuple[str, str]]:
    """``(role, words)`` of every ``Caller:`` / ``Agent:`` line of ``text``."""
    return [(m.group(1).lower(), m.group(2)) for m in _LINE.finditer(text)]


def field_keys(system: str) -> list[str]:
    """The keys of ``fields`` in the first JSON object of ``system`` that has them."""
    text = system[:_MAX_SCHEMA_CHARS]
    decoder = json.JSONDecoder()
    for m in re.finditer(r"\{", text):
        try:
            obj, _ = decoder.raw_decode(text, m.start())
        except ValueError:
            continue
        if not isinstance(obj, dict):
            continue
        props = obj.get("properties", obj)
        fields = props.get("fields") if isinstance(props, dict) else None
        if isinstance(fields, dict):
            inner = fields.get("properties", fields)
            if isinstance(inner, dict):
                return [str(k) for k in inner]
    return []


def summarise(system: str, user_texts: Sequence[str]) -> dict[str, Any]:
    """The answer of the module docstring."""
    lines = [line for text in user_texts for line in call_lines(text)]
    said = [words for role, words in lines if role == "caller"]
    answers = sum(1 for role, _ in lines if role == "agent")
    analysis = analyse(said)
    if said:
        quote = " ".join(said)
        if len(quote) > MAX_QUOTE:
            quote = quote[:MAX_QUOTE].rstrip() + "..."
        summary = (f"The caller said: {quote.rstrip('.')}. The agent answered "
                   f"{answers} time{'s' if answers != 1 else ''}.")
    else:
        summary = "The call ended before anyone spoke."
    if not said:
        disposition = "no_conversation"
    elif analysis["escalate"]:
        disposition = "escalated"
    elif analysis["sentiment"] == "positive":
        disposition = "resolved"
    else:
        disposition = "handled"
    known = dict(analysis, caller_turns=len(said), agent_turns=answers)
    fields = {key: known.get(key) for key in field_keys(system)}
    return {"summary": summary, "disposition": disposition, "fields": fields}
