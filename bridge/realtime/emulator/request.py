"""What a ``response.create`` asks for: conversation, metadata, input, output modalities.

Theory of operation
-------------------
:func:`parse_request` checks the ``response`` object of a ``response.create`` the way the
real service does and returns either a :class:`Request` or a :class:`Refusal` (the code,
message and ``param`` of the one ``error`` event to answer). Both dialects are read:
``output_modalities`` (GA) or ``modalities`` (preview), and preview items in ``input`` are
translated to the GA shape first.

- ``conversation``: ``"auto"`` (the default: the response's items join the conversation
  and it is the conversation's one active response) or ``"none"`` (out of band: its items
  stay out of the conversation, and any number up to :data:`MAX_OUT_OF_BAND` run at once,
  beside the active response).
- ``metadata``: up to 16 string pairs (keys up to 64 characters, values up to 512), echoed
  on the response object.
- ``input``: item references (``{"type": "item_reference", "id": ...}``, resolved against
  the conversation; an unknown id is refused with ``invalid_value``) and full items (taken
  as given, validated like ``conversation.item.create``'s). When given, the response is
  generated from exactly these items instead of the conversation.

See docs/realtime-protocol.md §10 and §10.1.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bridge.realtime.emulator.conversation import Conversation
from bridge.realtime.emulator.dialect import from_preview_item

__all__ = ["MAX_INPUT_ITEMS", "MAX_OUT_OF_BAND", "Refusal", "Request", "item_texts",
           "parse_request"]

#: out-of-band responses one session may run at once (one more is refused)
MAX_OUT_OF_BAND = 8
#: items one ``response.input`` may carry
MAX_INPUT_ITEMS = 256
_MAX_METADATA = 16


@dataclass
class Request:
    params: dict[str, Any]
    out_of_band: bool = False
    #: the items of ``input``, resolved (None: no ``input``, the conversation is the input)
    items: list[dict[str, Any]] | None = None
    texts: list[str] = field(default_factory=list)

    @property
    def input_ids(self) -> list[str] | None:
        return None if self.items is None else [str(i.get("id")) for i in self.items]


@dataclass(frozen=True)
class Refusal:
    code: str
    message: str
    param: str | None = None


def item_texts(items: list[dict[str, Any]]) -> list[str]:
    """The words in ``items``: message texts and transcripts, call arguments and outputs."""
    out: list[str] = []
    for item in items:
        for part in item.get("content") or []:
            if isinstance(part, dict):
                text = part.get("text") or part.get("transcript")
                if isinstance(text, str) and text:
                    out.append(text)
        for key in ("arguments", "output"):
            if isinstance(item.get(key), str) and item[key]:
                out.append(item[key])
    return out


def _metadata(value: Any) -> Refusal | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        return Refusal("invalid_type", "Invalid type for 'response.metadata': expected an "
                       "object.", "response.metadata")
    if len(value) > _MAX_METADATA:
        return Refusal("object_above_max_properties", "Invalid 'response.metadata': too many "
                       f"properties. Expected an object with at most {_MAX_METADATA} "
                       f"properties, but got an object with {len(value)} properties instead.",
                       "response.metadata")
    for key, val in value.items():
        if len(key) > 64:
            return Refusal("string_above_max_length", "Invalid 'response.metadata': string too "
                           "long. Expected a key with maximum length 64.", "response.metadata")
        if not isinstance(val, str) or len(val) > 512:
            return Refusal("invalid_value", f"Invalid 'response.metadata.{key[:64]}': expected "
                           "a string of at most 512 characters.", f"response.metadata.{key}")
    return None


def _input(value: Any, conv: Conversation, preview: bool,
           req: Request) -> Refusal | None:
    if not isinstance(value, list):
        return Refusal("invalid_type", "Invalid type for 'response.input': expected an array.",
                       "response.input")
    if len(value) > MAX_INPUT_ITEMS:
        return Refusal("array_above_max_length", "Invalid 'response.input': array too long. "
                       f"Expected an array with maximum length {MAX_INPUT_ITEMS}, but got an "
                       f"array with length {len(value)} instead.", "response.input")
    items: list[dict[str, Any]] = []
    for i, raw in enumerate(value):
        param = f"response.input[{i}]"
        if not isinstance(raw, dict):
            return Refusal("invalid_type", f"Invalid type for '{param}': expected an object.",
                           param)
        if raw.get("type") == "item_reference":
            ref = raw.get("id")
            if not isinstance(ref, str) or ref not in conv.items:
                return Refusal("invalid_value", f"Item with id '{str(ref)[:80]}' not found.",
                               f"{param}.id")
            items.append(conv.items[ref])
            continue
        built = conv.build_item(from_preview_item(raw) if preview else raw, param)
        if isinstance(built, tuple):
            return Refusal(*built)
        items.append(built)
    req.items = items
    req.texts = item_texts(items)
    return None


def parse_request(params: Any, conv: Conversation, *, preview: bool) -> Request | Refusal:
    """Check a ``response.create``'s ``response`` (module docstring)."""
    if params is None:
        return Request({})
    if not isinstance(params, dict):
        return Refusal("invalid_type", "Invalid type for 'response': expected an object.",
                       "response")
    conversation = params.get("conversation", "auto")
    if conversation not in ("auto", "none", None):
        return Refusal("invalid_value", f"Invalid value: '{str(conversation)[:80]}'. Supported "
                       "values are: 'auto' and 'none'.", "response.conversation")
    key = "modalities" if preview else "output_modalities"
    modalities = params.get(key)
    if modalities is not None and (not isinstance(modalities, list) or not modalities
                                   or any(m not in ("text", "audio") for m in modalities)):
        return Refusal("invalid_value", f"Invalid 'response.{key}': supported values are "
                       "'text' and 'audio'.", f"response.{key}")
    instructions = params.get("instructions")
    if instructions is not None and not isinstance(instructions, str):
        return Refusal("invalid_type", "Invalid type for 'response.instructions': expected a "
                       "string.", "response.instructions")
    req = Request(params, out_of_band=conversation == "none")
    refusal = _metadata(params.get("metadata"))
    if refusal is None and "input" in params:
        refusal = _input(params["input"], conv, preview, req)
    return refusal if refusal is not None else req
