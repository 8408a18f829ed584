"""Session configuration and the two wire dialects of the Realtime protocol.

The emulator keeps one canonical session configuration in the GA shape (``type``,
``audio.input.{format, transcription, noise_reduction, turn_detection}``,
``audio.output.{format, voice, speed}``, ``output_modalities``, ...). A preview
(``/openai/realtime?api-version=...``) session is translated at the edge: its flat
``session.update`` is mapped onto the GA shape before merging, and every event leaving a
preview session is renamed and reshaped by :func:`to_preview_event` (docs/realtime-protocol.md §2).

:func:`apply_update` validates a whole update before changing anything: a rejected
``session.update`` changes nothing and surfaces as :class:`SessionUpdateError` carrying the
``error`` event's ``code``, ``message`` and ``param``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import Any

from bridge.errors import EmulatorError
from bridge.realtime.emulator.audio import AUDIO_FORMATS, PREVIEW_FORMATS, AudioFormat

__all__ = [
    "SessionUpdateError",
    "apply_update",
    "default_session",
    "from_preview_item",
    "input_format",
    "output_format",
    "to_preview_event",
    "to_preview_session",
    "turn_detection",
]

DEFAULT_INSTRUCTIONS = (
    "You are the voicebridge Realtime emulator: an echo agent with energy-based VAD. "
    "It plays the caller's last utterance back and does not understand speech."
)

SERVER_VAD_DEFAULTS: dict[str, Any] = {
    "type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 300,
    "silence_duration_ms": 500, "idle_timeout_ms": None, "create_response": True,
    "interrupt_response": True,
}
SEMANTIC_VAD_DEFAULTS: dict[str, Any] = {
    "type": "semantic_vad", "eagerness": "auto", "create_response": True,
    "interrupt_response": True,
}
# semantic_vad has no silence setting; the emulator stands in with the energy VAD and a
# silence that follows the eagerness (low waits longest), which is what callers notice.
EAGERNESS_SILENCE_MS = {"low": 1500, "medium": 800, "auto": 800, "high": 400}

GA_SESSION_KEYS = frozenset({
    "type", "model", "instructions", "audio", "output_modalities", "tools", "tool_choice",
    "max_output_tokens", "tracing", "truncation", "prompt", "include", "id", "object",
    "expires_at",
})
PREVIEW_SESSION_KEYS = frozenset({
    "modalities", "instructions", "voice", "input_audio_format", "output_audio_format",
    "input_audio_transcription", "turn_detection", "tools", "tool_choice", "temperature",
    "max_response_output_tokens", "input_audio_noise_reduction", "speed", "tracing", "model",
    "id", "object", "expires_at",
})
_AUDIO_INPUT_KEYS = frozenset({"format", "transcription", "noise_reduction", "turn_detection"})
_AUDIO_OUTPUT_KEYS = frozenset({"format", "voice", "speed"})
_TD_KEYS = {
    "server_vad": frozenset(SERVER_VAD_DEFAULTS),
    "semantic_vad": frozenset(SEMANTIC_VAD_DEFAULTS),
}


class SessionUpdateError(EmulatorError):
    """A ``session.update`` the server refuses; becomes one ``error`` event."""

    def __init__(self, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.param = param


def default_session(session_id: str, model: str, expires_at: int) -> dict[str, Any]:
    """The configuration ``session.created`` announces (GA shape)."""
    return {
        "type": "realtime",
        "object": "realtime.session",
        "id": session_id,
        "model": model,
        "output_modalities": ["audio"],
        "instructions": DEFAULT_INSTRUCTIONS,
        "tools": [],
        "tool_choice": "auto",
        "max_output_tokens": "inf",
        "tracing": None,
        "truncation": "auto",
        "prompt": None,
        "expires_at": expires_at,
        "audio": {
            "input": {
                "format": {"type": "audio/pcm", "rate": 24000},
                "transcription": None,
                "noise_reduction": None,
                "turn_detection": dict(SERVER_VAD_DEFAULTS),
            },
            "output": {
                "format": {"type": "audio/pcm", "rate": 24000},
                "voice": "alloy",
                "speed": 1.0,
            },
        },
    }


def input_format(session: Mapping[str, Any]) -> AudioFormat:
    return AUDIO_FORMATS[session["audio"]["input"]["format"]["type"]]


def output_format(session: Mapping[str, Any]) -> AudioFormat:
    return AUDIO_FORMATS[session["audio"]["output"]["format"]["type"]]


def turn_detection(session: Mapping[str, Any]) -> dict[str, Any] | None:
    td: dict[str, Any] | None = session["audio"]["input"]["turn_detection"]
    return td


# --- validation -------------------------------------------------------------------------

def _unknown(keys: Any, known: frozenset[str], prefix: str) -> None:
    for key in keys:
        if key not in known:
            raise SessionUpdateError("unknown_parameter", f"Unknown parameter: '{prefix}{key}'.",
                                     f"{prefix}{key}")


def _format(value: Any, param: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise SessionUpdateError("invalid_type", f"Invalid type for '{param}': expected an object.",
                                 param)
    kind = value.get("type")
    if kind not in AUDIO_FORMATS:
        raise SessionUpdateError(
            "invalid_value",
            f"Invalid value: '{kind}'. Supported values are: 'audio/pcm', 'audio/pcmu', and "
            "'audio/pcma'.", f"{param}.type")
    _unknown(value, frozenset({"type", "rate"}), f"{param}.")
    if kind == "audio/pcm":
        rate = value.get("rate", 24000)
        if rate != 24000:
            raise SessionUpdateError(
                "invalid_value", f"Invalid value: {rate}. Supported values are: 24000.",
                f"{param}.rate")
        return {"type": "audio/pcm", "rate": 24000}
    if "rate" in value:
        raise SessionUpdateError("unknown_parameter", f"Unknown parameter: '{param}.rate'.",
                                 f"{param}.rate")
    return {"type": kind}


def _int_at_least(td: dict[str, Any], key: str, low: int, param: str) -> None:
    value = td.get(key)
    if value is None:
        return
    if not isinstance(value, int) or isinstance(value, bool):
        raise SessionUpdateError("invalid_type", f"Invalid type for '{param}.{key}': expected an "
                                 "integer.", f"{param}.{key}")
    if value < low:
        raise SessionUpdateError(
            "integer_below_min_value",
            f"Invalid '{param}.{key}': integer below minimum value. Expected a value >= {low}, "
            f"but got {value} instead.", f"{param}.{key}")


def _turn_detection(value: Any, param: str) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise SessionUpdateError("invalid_type", f"Invalid type for '{param}': expected an object.",
                                 param)
    kind = value.get("type", "server_vad")
    if kind not in _TD_KEYS:
        raise SessionUpdateError(
            "invalid_value",
            f"Invalid value: '{kind}'. Supported values are: 'server_vad' and 'semantic_vad'.",
            f"{param}.type")
    _unknown(value, _TD_KEYS[kind], f"{param}.")
    defaults = SERVER_VAD_DEFAULTS if kind == "server_vad" else SEMANTIC_VAD_DEFAULTS
    td = dict(defaults)
    td.update({k: v for k, v in value.items() if v is not None or k == "idle_timeout_ms"})
    td["type"] = kind
    if kind == "server_vad":
        threshold = td["threshold"]
        if not isinstance(threshold, int | float) or isinstance(threshold, bool):
            raise SessionUpdateError("invalid_type", f"Invalid type for '{param}.threshold': "
                                     "expected a number.", f"{param}.threshold")
        if threshold < 0.0:
            raise SessionUpdateError("decimal_below_min_value", f"Invalid '{param}.threshold': "
                                     "decimal below minimum value. Expected a value >= 0.0.",
                                     f"{param}.threshold")
        if threshold > 1.0:
            raise SessionUpdateError("decimal_above_max_value", f"Invalid '{param}.threshold': "
                                     "decimal above maximum value. Expected a value <= 1.0.",
                                     f"{param}.threshold")
        _int_at_least(td, "prefix_padding_ms", 0, param)
        _int_at_least(td, "silence_duration_ms", 0, param)
        _int_at_least(td, "idle_timeout_ms", 5000, param)
    elif td["eagerness"] not in EAGERNESS_SILENCE_MS:
        raise SessionUpdateError(
            "invalid_value", f"Invalid value: '{td['eagerness']}'. Supported values are: 'low', "
            "'medium', 'high', and 'auto'.", f"{param}.eagerness")
    for key in ("create_response", "interrupt_response"):
        if not isinstance(td[key], bool):
            raise SessionUpdateError("invalid_type", f"Invalid type for '{param}.{key}': expected "
                                     "a boolean.", f"{param}.{key}")
    return td


def _optional_object(value: Any, param: str) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise SessionUpdateError("invalid_type", f"Invalid type for '{param}': expected an object.",
                                 param)
    return dict(value)


def _tools(value: Any, param: str) -> list[dict[str, Any]]:
    if not isinstance(value, list):
        raise SessionUpdateError("invalid_type", f"Invalid type for '{param}': expected an array.",
                                 param)
    tools = []
    for i, tool in enumerate(value):
        if not isinstance(tool, dict) or tool.get("type", "function") != "function":
            raise SessionUpdateError("invalid_value", f"Invalid value for '{param}[{i}]': only "
                                     "function tools are emulated.", f"{param}[{i}]")
        if not isinstance(tool.get("name"), str) or not tool["name"]:
            raise SessionUpdateError("missing_required_parameter", "Missing required parameter: "
                                     f"'{param}[{i}].name'.", f"{param}[{i}].name")
        _unknown(tool, frozenset({"type", "name", "description", "parameters"}), f"{param}[{i}].")
        tools.append({"type": "function", **{k: v for k, v in tool.items() if k != "type"}})
    return tools


_GA_AUDIO_INPUT: dict[str, Callable[[Any, str], Any]] = {
    "format": _format,
    "transcription": _optional_object,
    "noise_reduction": _optional_object,
    "turn_detection": _turn_detection,
}


def _ga_audio(session: dict[str, Any], audio: Any) -> None:
    if not isinstance(audio, dict):
        raise SessionUpdateError("invalid_type", "Invalid type for 'session.audio': expected an "
                                 "object.", "session.audio")
    _unknown(audio, frozenset({"input", "output"}), "session.audio.")
    inp = audio.get("input")
    if inp is not None:
        if not isinstance(inp, dict):
            raise SessionUpdateError("invalid_type", "Invalid type for 'session.audio.input'.",
                                     "session.audio.input")
        _unknown(inp, _AUDIO_INPUT_KEYS, "session.audio.input.")
        for key, check in _GA_AUDIO_INPUT.items():
            if key in inp:
                session["audio"]["input"][key] = check(inp[key], f"session.audio.input.{key}")
    out = audio.get("output")
    if out is not None:
        if not isinstance(out, dict):
            raise SessionUpdateError("invalid_type", "Invalid type for 'session.audio.output'.",
                                     "session.audio.output")
        _unknown(out, _AUDIO_OUTPUT_KEYS, "session.audio.output.")
        if "format" in out:
            session["audio"]["output"]["format"] = _format(out["format"],
                                                           "session.audio.output.format")
        if "voice" in out:
            session["audio"]["output"]["voice"] = out["voice"]
        if "speed" in out:
            speed = out["speed"]
            if not isinstance(speed, int | float) or not 0.25 <= speed <= 1.5:
                raise SessionUpdateError("invalid_value", "Invalid 'session.audio.output.speed': "
                                         "expected a value between 0.25 and 1.5.",
                                         "session.audio.output.speed")
            session["audio"]["output"]["speed"] = float(speed)


def _modalities(value: Any, param: str) -> list[str]:
    if not isinstance(value, list) or not value or any(m not in ("text", "audio") for m in value):
        raise SessionUpdateError("invalid_value", f"Invalid value for '{param}': expected "
                                 "['audio'] or ['text'].", param)
    return ["audio"] if "audio" in value else ["text"]


def _apply_ga(session: dict[str, Any], update: dict[str, Any]) -> None:
    _unknown(update, GA_SESSION_KEYS, "session.")
    kind = update.get("type")
    if kind is None:
        raise SessionUpdateError("missing_required_parameter",
                                 "Missing required parameter: 'session.type'.", "session.type")
    if kind != "realtime":
        raise SessionUpdateError(
            "invalid_value", f"Invalid value: '{kind}'. This emulator serves realtime sessions "
            "only ('realtime').", "session.type")
    if "audio" in update:
        _ga_audio(session, update["audio"])
    if "output_modalities" in update:
        session["output_modalities"] = _modalities(update["output_modalities"],
                                                   "session.output_modalities")
    if "tools" in update:
        session["tools"] = _tools(update["tools"], "session.tools")
    for key in ("instructions", "tool_choice", "max_output_tokens", "tracing", "truncation",
                "prompt", "model", "include"):
        if key in update:
            session[key] = update[key]


def _apply_preview(session: dict[str, Any], update: dict[str, Any],
                   extras: dict[str, Any]) -> None:
    _unknown(update, PREVIEW_SESSION_KEYS, "session.")
    audio_in = session["audio"]["input"]
    audio_out = session["audio"]["output"]
    for key, target in (("input_audio_format", audio_in), ("output_audio_format", audio_out)):
        if key in update:
            fmt = PREVIEW_FORMATS.get(update[key])
            if fmt is None:
                raise SessionUpdateError(
                    "invalid_value", f"Invalid value: '{update[key]}'. Supported values are: "
                    "'pcm16', 'g711_ulaw', and 'g711_alaw'.", f"session.{key}")
            target["format"] = fmt.ga_dict()
    if "turn_detection" in update:
        audio_in["turn_detection"] = _turn_detection(update["turn_detection"],
                                                     "session.turn_detection")
    if "input_audio_transcription" in update:
        audio_in["transcription"] = _optional_object(update["input_audio_transcription"],
                                                     "session.input_audio_transcription")
    if "input_audio_noise_reduction" in update:
        audio_in["noise_reduction"] = _optional_object(update["input_audio_noise_reduction"],
                                                       "session.input_audio_noise_reduction")
    if "voice" in update:
        audio_out["voice"] = update["voice"]
    if "speed" in update:
        audio_out["speed"] = update["speed"]
    if "modalities" in update:
        session["output_modalities"] = _modalities(update["modalities"], "session.modalities")
    if "max_response_output_tokens" in update:
        session["max_output_tokens"] = update["max_response_output_tokens"]
    if "tools" in update:
        session["tools"] = _tools(update["tools"], "session.tools")
    for key in ("instructions", "tool_choice", "tracing", "model"):
        if key in update:
            session[key] = update[key]
    if "temperature" in update:
        temperature = update["temperature"]
        if not isinstance(temperature, int | float) or not 0.6 <= temperature <= 1.2:
            raise SessionUpdateError("invalid_value", "Invalid 'session.temperature': expected a "
                                     "value between 0.6 and 1.2.", "session.temperature")
        extras["temperature"] = float(temperature)


def apply_update(current: Mapping[str, Any], update: Any, dialect: str,
                 extras: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Return the merged (session, preview extras), or raise :class:`SessionUpdateError`.

    ``current`` is left untouched either way: a rejected update changes nothing.
    """
    if not isinstance(update, dict):
        raise SessionUpdateError("missing_required_parameter",
                                 "Missing required parameter: 'session'.", "session")
    session = copy.deepcopy(dict(current))
    new_extras = dict(extras)
    if dialect == "preview":
        _apply_preview(session, update, new_extras)
    else:
        _apply_ga(session, update)
    return session, new_extras


# --- preview shapes ---------------------------------------------------------------------

_PREVIEW_TYPES: dict[str, str | None] = {
    "response.output_audio.delta": "response.audio.delta",
    "response.output_audio.done": "response.audio.done",
    "response.output_audio_transcript.delta": "response.audio_transcript.delta",
    "response.output_audio_transcript.done": "response.audio_transcript.done",
    "response.output_text.delta": "response.text.delta",
    "response.output_text.done": "response.text.done",
    "conversation.item.added": "conversation.item.created",
    # events the preview protocol does not have
    "conversation.item.done": None,
    "input_audio_buffer.timeout_triggered": None,
}
_PREVIEW_CONTENT = {"output_audio": "audio", "output_text": "text"}
_GA_CONTENT = {"audio": "output_audio", "text": "output_text"}


def _preview_format(fmt: Mapping[str, Any]) -> str:
    return AUDIO_FORMATS[fmt["type"]].preview_name


def to_preview_session(session: Mapping[str, Any], extras: Mapping[str, Any]) -> dict[str, Any]:
    """The flat preview session object for a GA-shaped configuration."""
    audio_in = session["audio"]["input"]
    audio_out = session["audio"]["output"]
    modalities = ["text", "audio"] if session["output_modalities"] == ["audio"] else ["text"]
    out = {
        "id": session["id"],
        "object": "realtime.session",
        "model": session["model"],
        "expires_at": session["expires_at"],
        "modalities": modalities,
        "instructions": session["instructions"],
        "voice": audio_out["voice"],
        "input_audio_format": _preview_format(audio_in["format"]),
        "output_audio_format": _preview_format(audio_out["format"]),
        "input_audio_transcription": audio_in["transcription"],
        "input_audio_noise_reduction": audio_in["noise_reduction"],
        "turn_detection": _preview_td(audio_in["turn_detection"]),
        "tools": session["tools"],
        "tool_choice": session["tool_choice"] if isinstance(session["tool_choice"], str)
        else "auto",
        "temperature": extras.get("temperature", 0.8),
        "max_response_output_tokens": session["max_output_tokens"],
        "speed": audio_out["speed"],
        "tracing": session["tracing"],
    }
    return out


def _preview_td(td: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if td is None:
        return None
    # The preview model has no idle_timeout_ms; leave it out rather than invent a field.
    return {k: v for k, v in td.items() if k != "idle_timeout_ms"}


def _preview_item(item: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(item)
    content = item.get("content")
    if content is not None:
        out["content"] = [
            {**part, "type": _PREVIEW_CONTENT.get(part.get("type", ""), part.get("type"))}
            for part in content
        ]
    return out


def from_preview_item(item: Mapping[str, Any]) -> dict[str, Any]:
    """A client item in preview shape (assistant ``text``/``audio``) in GA shape."""
    out = dict(item)
    content = item.get("content")
    if isinstance(content, list):
        out["content"] = [
            {**part, "type": _GA_CONTENT.get(part.get("type", ""), part.get("type"))}
            if isinstance(part, dict) else part
            for part in content
        ]
    return out


def _preview_response(resp: Mapping[str, Any], output_format: str,
                      extras: Mapping[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in resp.items() if k not in ("audio", "output_modalities")}
    out["modalities"] = (["text", "audio"] if resp.get("output_modalities") == ["audio"]
                         else ["text"])
    voice = resp.get("audio", {}).get("output", {}).get("voice")
    out["voice"] = voice
    out["output_audio_format"] = output_format
    out["temperature"] = extras.get("temperature", 0.8)
    out["output"] = [_preview_item(i) for i in resp.get("output", [])]
    return out


def to_preview_event(event: dict[str, Any], session: Mapping[str, Any],
                     extras: Mapping[str, Any]) -> dict[str, Any] | None:
    """Rename and reshape one GA event for a preview session (None: not sent there)."""
    kind = event["type"]
    if kind in _PREVIEW_TYPES:
        new = _PREVIEW_TYPES[kind]
        if new is None:
            return None
        event = {**event, "type": new}
    if "item" in event:
        event = {**event, "item": _preview_item(event["item"])}
    if kind in ("session.created", "session.updated"):
        event = {**event, "session": to_preview_session(session, extras)}
    elif kind in ("response.created", "response.done"):
        fmt = _preview_format(session["audio"]["output"]["format"])
        event = {**event, "response": _preview_response(event["response"], fmt, extras)}
    elif kind == "response.function_call_arguments.done":
        # The preview event carries no name (take it from response.output_item.added).
        event = {k: v for k, v in event.items() if k != "name"}
    return event
