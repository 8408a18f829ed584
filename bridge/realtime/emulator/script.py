"""Scripted behaviour for the emulator: a TOML file of rules.

Format
------
::

    # Optional: how ``say`` texts are voiced: "auto" (espeak-ng when installed, else a
    # tone), "espeak" (required) or "tone".
    speech = "auto"

    [[rule]]
    on_turn = 1                      # trigger: the caller's 1st committed turn
    say = "Let me transfer you."     # the next response speaks this ...
    call = "transfer_call"           # ... then calls this function
    args = { target = "sales" }      # with these arguments (a table, sent as JSON)

    [[rule]]
    on_turn = 2
    heard = "my card is 4111 1111 1111 1111"  # the transcription of that turn (with
                                     # input transcription on) instead of a placeholder

    [[rule]]
    on_tool_output = "transfer_call" # trigger: a function_call_output for that function
    say = "You are being transferred."

    [[rule]]
    on_text = "caller pressed 4"     # trigger: a user input_text item containing this
    error = "server_error"           # send an ``error`` event with this code at once
    message = "Scripted failure"     # (optional message)

    [[rule]]
    on_turn = 3
    fail = "rate_limit_exceeded"     # the next response ends ``failed`` with this code

    [[rule]]
    on_turn = 2
    heard = "I am angry"             # the 2nd turn's transcription (and the item's
                                     # transcript, which out-of-band analysis reads)

    [[rule]]
    on_session = 1                   # trigger: the emulator's 1st session opens
    close = 1011                     # close the socket with this code (1006 = drop TCP)
    after_s = 2.5                    # ... this many seconds after the trigger

Triggers (exactly one per rule):

- ``on_turn = N``: the Nth caller audio turn committed in the session (by server VAD or by
  ``input_audio_buffer.commit``), counted from 1.
- ``on_text = "X"``: a user message item with ``input_text`` containing X (case-insensitive).
- ``on_tool_output = "NAME"``: a ``function_call_output`` answering a call of NAME
  (``"*"``: any function).
- ``on_session = N``: the Nth WebSocket session of this emulator opens (counted from 1).

``heard`` (``on_turn`` rules only) is not an action: it is the text the emulator's
transcription gives that turn, in place of its "(N s of caller audio ...)" stand-in.

Actions: ``error`` and ``close`` happen when the trigger happens. ``say``, ``call``/``args``,
``fail`` and ``echo = true`` (also play the caller's turn back before ``say``) shape the
*next response* of the session, whoever creates it (server VAD with ``create_response``, or
the client's ``response.create``). Without a matching rule the emulator echoes as usual.
A rule fires once per session unless ``repeat = true``; for one trigger only the first
matching rule (in file order) fires.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bridge.errors import ConfigError

__all__ = ["Rule", "Script", "load_script", "parse_script"]

_TRIGGERS = ("on_turn", "on_text", "on_tool_output", "on_session")
_KEYS = frozenset({*_TRIGGERS, "say", "call", "args", "error", "message", "fail", "close",
                   "after_s", "repeat", "echo", "heard"})
SPEECH_MODES = ("auto", "espeak", "tone")


@dataclass(frozen=True)
class Rule:
    number: int  # 1-based position in the file, for messages and bookkeeping
    trigger: str  # one of _TRIGGERS
    value: int | str
    say: str | None = None
    call: str | None = None
    args: str = "{}"
    error: str | None = None
    message: str | None = None
    fail: str | None = None
    close: int | None = None
    after_s: float = 0.0
    repeat: bool = False
    echo: bool = False
    heard: str | None = None

    @property
    def shapes_response(self) -> bool:
        return bool(self.say or self.call or self.fail or self.echo)

    def matches(self, trigger: str, value: int | str) -> bool:
        if trigger != self.trigger:
            return False
        if trigger == "on_text":
            return str(self.value).casefold() in str(value).casefold()
        if trigger == "on_tool_output":
            return self.value in ("*", value)
        return self.value == value


@dataclass(frozen=True)
class Script:
    rules: tuple[Rule, ...]
    speech: str = "auto"
    source: str = "<script>"

    def heard(self, turn: int) -> str | None:
        """The ``heard`` text of the first ``on_turn = turn`` rule that has one."""
        return next((r.heard for r in self.rules
                     if r.heard and r.trigger == "on_turn" and r.value == turn), None)

    def texts(self) -> set[str]:
        """Every text a rule may say (rendered to audio once, up front)."""
        return {r.say for r in self.rules if r.say}


def _fail(source: str, where: str, message: str) -> ConfigError:
    return ConfigError(f"{source}: {where}: {message}")


def _rule(source: str, number: int, raw: Any) -> Rule:
    where = f"rule {number}"
    if not isinstance(raw, dict):
        raise _fail(source, where, "must be a table")
    unknown = sorted(set(raw) - _KEYS)
    if unknown:
        raise _fail(source, where, f"unknown key(s) {', '.join(unknown)}")
    triggers = [t for t in _TRIGGERS if t in raw]
    if len(triggers) != 1:
        raise _fail(source, where, f"needs exactly one trigger of {', '.join(_TRIGGERS)}")
    trigger = triggers[0]
    value = raw[trigger]
    if trigger in ("on_turn", "on_session"):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise _fail(source, where, f"{trigger} must be an integer >= 1")
    elif not isinstance(value, str) or not value:
        raise _fail(source, where, f"{trigger} must be a non-empty string")
    if "heard" in raw and trigger != "on_turn":
        raise _fail(source, where, "heard is for on_turn rules only")
    for key in ("say", "call", "error", "message", "fail", "heard"):
        if key in raw and (not isinstance(raw[key], str) or not raw[key]):
            raise _fail(source, where, f"{key} must be a non-empty string")
    args = raw.get("args", {})
    if "args" in raw and "call" not in raw:
        raise _fail(source, where, "args without call")
    if isinstance(args, dict):
        args_json = json.dumps(args, separators=(",", ":"))
    elif isinstance(args, str):
        args_json = args  # sent verbatim: lets a script send malformed arguments on purpose
    else:
        raise _fail(source, where, "args must be a table or a string")
    close = raw.get("close")
    if close is not None and (not isinstance(close, int) or isinstance(close, bool)
                              or not (close == 1006 or 1000 <= close <= 4999)):
        raise _fail(source, where, "close must be a WebSocket close code (1000-4999)")
    after_s = raw.get("after_s", 0.0)
    if not isinstance(after_s, int | float) or isinstance(after_s, bool) or after_s < 0:
        raise _fail(source, where, "after_s must be a number >= 0")
    for key in ("repeat", "echo"):
        if key in raw and not isinstance(raw[key], bool):
            raise _fail(source, where, f"{key} must be true or false")
    rule = Rule(number=number, trigger=trigger, value=value, say=raw.get("say"),
                call=raw.get("call"), args=args_json, error=raw.get("error"),
                message=raw.get("message"), fail=raw.get("fail"), close=close,
                after_s=float(after_s), repeat=raw.get("repeat", False),
                echo=raw.get("echo", False), heard=raw.get("heard"))
    if not (rule.shapes_response or rule.error or rule.close is not None or rule.heard):
        raise _fail(source, where, "has no action (say, call, fail, echo, error or "
                    "close) nor heard")
    return rule


def parse_script(text: str, source: str = "<script>") -> Script:
    """Parse script text; raise :class:`ConfigError` naming the source and the rule."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    unknown = sorted(set(data) - {"rule", "speech"})
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {', '.join(unknown)}")
    speech = data.get("speech", "auto")
    if speech not in SPEECH_MODES:
        raise ConfigError(f"{source}: speech must be one of {', '.join(SPEECH_MODES)}")
    raw_rules = data.get("rule", [])
    if not isinstance(raw_rules, list):
        raise ConfigError(f"{source}: rule must be an array of tables ([[rule]])")
    rules = tuple(_rule(source, i, r) for i, r in enumerate(raw_rules, start=1))
    return Script(rules=rules, speech=speech, source=source)


def load_script(path: str | Path) -> Script:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read script: {exc.strerror}") from None
    return parse_script(text, str(path))
