"""``[turns]``: how the bridge runs a caller's turn when the server does not.

With ``[agent.turn_detection] type = "none"`` the server never ends a caller's turn, and
with ``create_response = false`` it ends it but does not answer: in both the bridge
decides. Its voice activity detector (``bridge.call.turnvad``) ends the turn under
``type = "none"``; then the plan's ``hook`` decides the reply:

* ``"answer"`` (the default): a plain ``response.create``;
* ``"instructions"``: a reply with ``instructions`` added to the agent's own for it;
* ``"module:function"``: an async function of the operator's module beside the plan,
  called with a ``TurnContext`` (call id, caller, called, the item, its transcript when
  the plan transcribes); it returns ``True``/``None`` (answer), a string (answer with it
  as extra instructions) or ``False`` (stay silent: the turn stays in the conversation);
* a tool name the plan offers: run first with ``{"transcript": ...}`` when its schema
  takes a ``transcript`` (else ``{}``); its output is handed to the reply as extra
  instructions (a moderation or routing step before the model speaks).

``early_barge_in = true`` lets the detector cut the agent off the moment it hears the
caller's sustained speech, before the server's ``speech_started`` arrives. Under
``type = "none"`` the detector is the only one listening, so barge-in is always local.
"""

from __future__ import annotations

import inspect
import types
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

HOOK_PATTERN = r"^(answer|instructions|[A-Za-z_][\w.]*:[A-Za-z_]\w*|[A-Za-z_][A-Za-z0-9_-]{0,63})$"


@dataclass(frozen=True, slots=True)
class TurnContext:
    """What a Python turn hook is told about the caller's finished turn."""

    call_id: str
    caller: str
    called: str
    item_id: str
    #: the caller's words, when the plan transcribes and the transcript came in time
    transcript: str | None
    #: turns of this call so far, this one included
    turn: int


#: ``async def hook(turn: TurnContext) -> bool | str | None``
TurnHook = Callable[[TurnContext], Awaitable[bool | str | None]]


class TurnsModel(BaseModel):
    """``[turns]`` as written in the plan."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: 0 (lets most through as speech) to 3 (most aggressive in calling frames non-speech)
    aggressiveness: int = Field(default=2, ge=0, le=3)
    #: voiced audio before the caller counts as talking (a click or a cough does not)
    min_speech_ms: int = Field(default=200, ge=40, le=2000)
    #: silence after speech that ends the caller's turn (``type = "none"``)
    end_silence_ms: int = Field(default=700, ge=200, le=5000)
    hook: str = Field(default="answer", pattern=HOOK_PATTERN)
    #: extra instructions for ``hook = "instructions"``
    instructions: str | None = None
    #: how long to wait for the caller's transcript before deciding without it
    transcript_wait_ms: int = Field(default=1500, ge=0, le=10000)
    early_barge_in: bool = False

    @model_validator(mode="after")
    def _complete(self) -> TurnsModel:
        if self.hook == "instructions" and not self.instructions:
            raise ValueError('hook = "instructions" needs instructions')
        if self.hook != "instructions" and self.instructions is not None:
            raise ValueError('instructions are only for hook = "instructions"')
        return self


@dataclass(frozen=True)
class TurnsConfig:
    """``[turns]`` loaded: the hook resolved to what runs."""

    aggressiveness: int = 2
    min_speech_ms: int = 200
    end_silence_ms: int = 700
    kind: Literal["answer", "instructions", "python", "tool"] = "answer"
    instructions: str | None = None
    python: TurnHook | None = None
    tool: str | None = None
    #: the hook as written (for logs and the dashboard)
    hook: str = "answer"
    transcript_wait_ms: int = 1500
    early_barge_in: bool = False


def describe_turns(turns: TurnsConfig) -> str:
    """One line for ``check-dialplans``."""
    barge = ", early barge-in" if turns.early_barge_in else ""
    return (f"hook {turns.hook} ({turns.kind}); VAD aggressiveness {turns.aggressiveness}, "
            f"speech {turns.min_speech_ms} ms, end of turn {turns.end_silence_ms} ms{barge}")


def build_turns(model: TurnsModel, *, import_module: Callable[[str], types.ModuleType],
                tool_names: frozenset[str]) -> TurnsConfig:
    """Resolve ``model``'s hook; ValueError (with what is wrong) for a hook that is not."""
    hook = model.hook
    kind: Literal["answer", "instructions", "python", "tool"]
    python: TurnHook | None = None
    tool: str | None = None
    if hook in ("answer", "instructions"):
        kind = "answer" if hook == "answer" else "instructions"
    elif ":" in hook:
        kind = "python"
        python = _python_hook(hook, import_module)
    else:
        if hook not in tool_names:
            raise ValueError(f"hook {hook!r} is neither answer, instructions, module:function "
                             f"nor a tool of this plan ({', '.join(sorted(tool_names)) or 'none'})")
        kind, tool = "tool", hook
    return TurnsConfig(aggressiveness=model.aggressiveness, min_speech_ms=model.min_speech_ms,
                       end_silence_ms=model.end_silence_ms, kind=kind,
                       instructions=model.instructions, python=python, tool=tool, hook=hook,
                       transcript_wait_ms=model.transcript_wait_ms,
                       early_barge_in=model.early_barge_in)


def _python_hook(hook: str, import_module: Callable[[str], types.ModuleType]) -> TurnHook:
    module_name, _, attr = hook.partition(":")
    try:
        module = import_module(module_name)
    except Exception as exc:
        raise ValueError(f"cannot import {module_name}: {type(exc).__name__}: {exc}") from None
    fn: Any = getattr(module, attr, None)
    if fn is None:
        raise ValueError(f"module {module_name} has no {attr!r}")
    if not inspect.iscoroutinefunction(fn):
        raise ValueError(f"{hook}: a turn hook is an async function")
    return fn  # type: ignore[no-any-return]


__all__ = ["TurnContext", "TurnHook", "TurnsConfig", "TurnsModel", "build_turns", "describe_turns"]
