"""A deterministic stand-in for the model's text analysis, for out-of-band responses.

Theory of operation
-------------------
A client asks for analysis with an out-of-band text response (``response.conversation``
``"none"``, text output) whose instructions, or whose input text, mention one of
:data:`ASK_WORDS` ("analyse", "analyze", "analysis", "classify", "sentiment", "intent",
"label", "json"). The emulator then answers with one JSON object derived from the input's
text (the texts of the referenced or given items, else the conversation's user texts) by
keyword rules, whole words, case-insensitive:

- ``sentiment``: "negative" if more :data:`NEGATIVE` words ("angry", "terrible",
  "furious", "worst", "awful", "hate", ...) than :data:`POSITIVE` ones ("thanks", "great",
  "perfect", ...), "positive" if more positive ones, else "neutral".
- ``escalate``: true when the sentiment is negative or an :data:`ESCALATE` word
  ("manager", "supervisor", "human", "complaint", "lawyer") occurs.
- ``intent``: the intent of :data:`INTENTS` whose keyword occurs first in the text
  ("refund", "money back" -> "refund"; "bill", "invoice", "charge" -> "billing"; "order",
  "delivery", "package" -> "order"; "cancel" -> "cancellation"; "appointment", "booking"
  -> "appointment"), "general" when none does.
- ``labels``: every intent matched, in the table's order, then "angry" when a negative word
  occurs and "escalation" when ``escalate`` is true.

A JSON schema in the instructions (the first ``{...}`` that parses as a JSON object: its
``properties`` if it has them, else its own keys) limits the answer to those keys, in that
order; a key the rules do not know is answered with null. (The Realtime ``response.create``
has no structured-output field, so instructions are the only place a schema can be given.)
Without an analysis request the answer is a short plain-text acknowledgement.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

__all__ = ["ASK_WORDS", "ESCALATE", "INTENTS", "NEGATIVE", "POSITIVE", "analyse", "answer",
           "schema_keys", "wants_analysis"]

ASK_WORDS = ("analyse", "analyze", "analysis", "classify", "sentiment", "intent", "label",
             "json")
NEGATIVE = frozenset({"angry", "terrible", "furious", "worst", "awful", "hate", "useless",
                      "ridiculous", "unacceptable", "horrible", "disgusting", "annoyed",
                      "upset", "outraged"})
POSITIVE = frozenset({"thanks", "thank", "great", "excellent", "perfect", "love", "wonderful",
                      "happy", "awesome", "helpful"})
ESCALATE = frozenset({"manager", "supervisor", "human", "complaint", "lawyer"})
INTENTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("refund", ("refund", "refunds", "money back", "reimburse")),
    ("billing", ("bill", "bills", "billing", "invoice", "charge", "charged", "payment")),
    ("order", ("order", "orders", "delivery", "package", "parcel", "shipping")),
    ("cancellation", ("cancel", "cancellation", "unsubscribe")),
    ("appointment", ("appointment", "booking", "reschedule")),
)
_WORD_RE = re.compile(r"[a-z']+")
_MAX_SCHEMA_CHARS = 4096


def wants_analysis(instructions: str | None, texts: Sequence[str]) -> bool:
    """Whether the instructions (or the input text) ask for an analysis."""
    hay = " ".join([instructions or "", *texts]).lower()
    return any(word in hay for word in ASK_WORDS)


def _first(text: str, phrase: str) -> int | None:
    m = re.search(r"\b" + re.escape(phrase) + r"\b", text)
    return m.start() if m else None


def analyse(texts: Sequence[str]) -> dict[str, Any]:
    """The keyword rules of the module docstring applied to ``texts``."""
    text = " ".join(texts).lower()
    words = _WORD_RE.findall(text)
    neg = sum(1 for w in words if w in NEGATIVE)
    pos = sum(1 for w in words if w in POSITIVE)
    sentiment = "negative" if neg > pos else "positive" if pos > neg else "neutral"
    escalate = sentiment == "negative" or any(w in ESCALATE for w in words)
    found: list[tuple[int, str]] = []
    for intent, phrases in INTENTS:
        at = [p for p in (_first(text, phrase) for phrase in phrases) if p is not None]
        if at:
            found.append((min(at), intent))
    labels = [intent for intent, _ in INTENTS if any(i == intent for _, i in found)]
    if neg:
        labels.append("angry")
    if escalate:
        labels.append("escalation")
    return {"intent": min(found)[1] if found else "general", "sentiment": sentiment,
            "escalate": escalate, "labels": labels}


def schema_keys(instructions: str | None) -> list[str] | None:
    """The keys a JSON schema (or example object) in the instructions asks for."""
    text = (instructions or "")[:_MAX_SCHEMA_CHARS]
    decoder = json.JSONDecoder()
    for m in re.finditer(r"\{", text):
        try:
            obj, _ = decoder.raw_decode(text, m.start())
        except ValueError:
            continue
        if isinstance(obj, dict) and obj:
            props = obj.get("properties")
            keys = props if isinstance(props, dict) and props else obj
            return [str(k) for k in keys]
    return None


def answer(instructions: str | None, texts: Sequence[str]) -> str:
    """The text an out-of-band text response says (module docstring)."""
    if not wants_analysis(instructions, texts):
        last = texts[-1][:80] if texts else ""
        return f"(response to: {last})" if last else "(response to an empty input)"
    result = analyse(texts)
    keys = schema_keys(instructions)
    if keys is not None:
        result = {k: result.get(k) for k in keys}
    return json.dumps(result, separators=(",", ":"))
