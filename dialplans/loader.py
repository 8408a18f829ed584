"""Loading dialplan files: TOML -> validated ``Dialplan`` values, or a ``DialplanError``.

Every error names the file, the line and the field (``DialplanError(file=, line=,
field=)``). ``tomllib`` reports syntax errors with a line; everything found after parsing
(pydantic validation, then the checks across fields: targets, tools, sounds, environment)
is given a field path, and ``TomlLocator`` finds the line that writes it.

Python tools (``[[python]] function = "module:attr"``) are imported from the dialplan
folder first: the folder is mounted as a private package (one per folder), so an operator's
``frontdesk_tools.py`` beside the plans is importable without touching ``sys.path`` and two
folders may hold modules of the same name. A module not found there is imported normally
(an installed package).
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import os
import re
import sys
import tomllib
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NoReturn

from pydantic import ValidationError

from bridge.dialplans import analysis
from bridge.dialplans.announce import is_bundled_name, is_tone_spec, parse_tones, resolve_sound
from bridge.dialplans.builtin import BUILTINS
from bridge.dialplans.locate import TomlLocator
from bridge.dialplans.plan import (
    AgentConfig,
    Dialplan,
    DialplanSet,
    DtmfAction,
    DtmfConfig,
    Fallback,
    Limits,
    MatchRule,
    Pattern,
)
from bridge.dialplans.recording import recording_policy, redaction_policy
from bridge.dialplans.schema import DialplanModel
from bridge.dialplans.summary import build_summary
from bridge.dialplans.tools import Tool, ToolRegistry, tool_from_function
from bridge.dialplans.turns import TurnsConfig, build_turns
from bridge.dialplans.voicemail import Voicemail, build_voicemail
from bridge.dialplans.webhook import (
    MissingEnv,
    SchemaProblem,
    Secret,
    WebhookSpec,
    expand_env,
    webhook_tool,
)
from bridge.errors import DialplanError

log = logging.getLogger(__name__)

PACKAGED_DIR = Path(__file__).resolve().parent / "plans"
ENV_DIR = "VOICEBRIDGE_DIALPLANS"
FieldPath = tuple[str | int, ...]

# pydantic adds validator tags to an error's location ("function-after[...]", "[key]").
_LOC_NOISE = re.compile(r"^(\[key\]|function-\w+\[.*\]|list\[.*\]|dict\[.*\]|str|int|float|bool)$")


def default_dialplans_dir(env: Mapping[str, str] | None = None) -> Path:
    """``$VOICEBRIDGE_DIALPLANS``, else the dialplans shipped with the package."""
    value = (os.environ if env is None else env).get(ENV_DIR, "")
    return Path(value) if value else PACKAGED_DIR


def format_path(path: FieldPath) -> str:
    """``("webhook", 0, "url")`` -> ``"webhook[0].url"``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + part
    return out


class _Source:
    """One file being loaded: raises errors that point into it."""

    def __init__(self, file: Path, text: str) -> None:
        self.file = file
        self.text = text
        self._locator: TomlLocator | None = None

    @property
    def locator(self) -> TomlLocator:
        if self._locator is None:
            self._locator = TomlLocator(self.text)
        return self._locator

    def fail(self, message: str, path: FieldPath, value: object = None) -> NoReturn:
        raise DialplanError(message, file=str(self.file),
                            line=self.locator.line_of(path, value), field=format_path(path))


def load_dialplans(
    path: Path,
    *,
    env: Mapping[str, str] | None = None,
    tools: Mapping[str, Tool] | None = None,
) -> DialplanSet:
    """Load every ``*.toml`` of folder ``path`` (or one file); exactly one must be default.

    ``env`` (default ``os.environ``) resolves ``${NAME}`` references; ``tools`` are extra
    Python tools registered by code that any plan may enable by name.
    """
    path = Path(path)
    files = [path] if path.is_file() else sorted(path.glob("*.toml"))
    if not path.exists():
        raise DialplanError("no such file or folder", file=str(path))
    if not files:
        raise DialplanError("no dialplan files (*.toml) in this folder", file=str(path))
    plans = [load_dialplan_file(file, env=env, tools=tools) for file in files]
    defaults = [plan for plan in plans if plan.match.default]
    if not defaults:
        raise DialplanError("no default dialplan: set default = true in the [match] of one",
                            file=str(path), field="match.default")
    if len(defaults) > 1:
        second = defaults[1]
        _Source(second.file, second.file.read_text("utf-8")).fail(
            f"a second default dialplan ({defaults[0].file.name} is already the default)",
            ("match", "default"),
        )
    log.info("loaded %d dialplan(s) from %s", len(plans), path)
    return DialplanSet(plans)


def load_dialplan_file(
    file: Path,
    *,
    env: Mapping[str, str] | None = None,
    tools: Mapping[str, Tool] | None = None,
) -> Dialplan:
    """Load and validate one dialplan file."""
    file = Path(file)
    try:
        text = file.read_text("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DialplanError(f"cannot read: {exc}", file=str(file)) from None
    src = _Source(file, text)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        m = re.search(r"\(at line (\d+), column \d+\)", str(exc))
        line = int(m.group(1)) if m else None
        raise DialplanError(f"TOML syntax: {exc}", file=str(file), line=line,
                            field=_key_on_line(text, line)) from None
    try:
        model = DialplanModel.model_validate(data)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        path = tuple(p for p in err["loc"] if not (isinstance(p, str) and _LOC_NOISE.match(p)))
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            message = "unknown setting (misspelt?)"
        more = len(exc.errors()) - 1
        if more:
            message += f" (and {more} more error{'s' if more > 1 else ''})"
        src.fail(message, path)
    return _build(src, model, os.environ if env is None else env, tools or {})


def _key_on_line(text: str, line: int | None) -> str:
    if line is None:
        return ""
    lines = text.splitlines()
    if not 0 < line <= len(lines):
        return ""
    m = re.match(r"\s*\[*\s*([A-Za-z0-9_.\"'-]+)", lines[line - 1])
    return m.group(1).strip("\"'") if m else ""


def _build(src: _Source, model: DialplanModel, env: Mapping[str, str],
           shared: Mapping[str, Tool]) -> Dialplan:
    targets = {name: t.uri for name, t in model.targets.items()}
    descriptions = {name: t.description for name, t in model.targets.items()}
    _check_actions(src, model, targets)
    fallback = _fallback(src, model)
    registry = _tools(src, model, env=env, shared=shared, targets=targets,
                      descriptions=descriptions)
    agent = model.agent
    td = agent.turn_detection
    turn_detection = None if td.type == "none" else {
        key: value for key, value in td.model_dump().items() if value is not None
    }
    transcription = agent.transcription
    return Dialplan(
        name=src.file.stem,
        file=src.file,
        description=model.description,
        match=MatchRule(
            called=tuple(Pattern.parse(p) for p in model.match.called),
            caller=tuple(Pattern.parse(p) for p in model.match.caller),
            sources=frozenset(model.match.source),
            default=model.match.default,
            priority=model.match.priority,
        ),
        agent=AgentConfig(
            instructions=agent.instructions,
            voice=agent.voice,
            audio_format=agent.audio_format,
            turn_detection=types.MappingProxyType(turn_detection) if turn_detection else None,
            transcription_model=transcription.model if transcription else None,
            transcription_language=(
                (transcription.language or agent.language) if transcription else None
            ),
            noise_reduction=agent.noise_reduction,
            greeting=agent.greeting,
            language=agent.language,
            max_output_tokens=agent.max_output_tokens,
        ),
        tools=registry,
        targets=targets,
        target_descriptions=descriptions,
        limits=Limits(max_call_s=model.limits.max_call_s,
                      caller_silence_s=model.limits.caller_silence_s),
        dtmf=DtmfConfig(
            to_model=model.dtmf.to_model,
            actions={digit: DtmfAction(kind=a.action, target=a.target, text=a.text)
                     for digit, a in model.dtmf.actions.items()},
        ),
        fallback=fallback,
        summary=build_summary(model.summary, env, src.fail),
        turns=_turns(src, model, registry),
        analysis=analysis.build(model.analysis),
        recording=recording_policy(model.recording, src.file.parent, src.fail),
        redaction=redaction_policy(model.redaction),
        voicemail=_voicemail(src, model, env),
    )


def _voicemail(src: _Source, model: DialplanModel, env: Mapping[str, str]) -> Voicemail | None:
    try:
        return build_voicemail(model.voicemail, env)
    except MissingEnv as exc:
        src.fail(f"environment variable {exc.name} is not set", ("voicemail", "webhook_headers"))


def _check_actions(src: _Source, model: DialplanModel, targets: Mapping[str, str]) -> None:
    known = ", ".join(targets) or "none defined in [targets]"
    for digit, action in model.dtmf.actions.items():
        if action.target is not None and action.target not in targets:
            src.fail(f"unknown target {action.target!r} (targets: {known})",
                     ("dtmf", "actions", digit, "target"), action.target)
    if model.analysis is not None and model.analysis.enabled and not model.agent.transcription:
        src.fail("analysis reads the caller's transcribed turns: it needs "
                 "[agent.transcription]", ("analysis", "enabled"))
    for index in analysis.unknown_targets(model.analysis, list(targets)):
        src.fail(f"unknown target (targets: {known})", ("analysis", "actions", index, "target"))
    target = model.fallback.target
    if target is not None and target not in targets:
        src.fail(f"unknown target {target!r} (targets: {known})", ("fallback", "target"),
                 target)


def _fallback(src: _Source, model: DialplanModel) -> Fallback:
    fb = model.fallback
    announcement, tones = fb.announcement, fb.tones
    if announcement is not None and is_tone_spec(announcement):
        announcement, tones = None, tones or announcement
        field_of_tones: FieldPath = ("fallback", "announcement")
    else:
        field_of_tones = ("fallback", "tones")
    if announcement is not None:
        path = resolve_sound(announcement, src.file.parent)
        if path is None:
            src.fail(f"no bundled sound or WAV file {announcement!r}",
                     ("fallback", "announcement"))
        if not is_bundled_name(announcement):
            # A file beside the plans: made absolute so that it plays from any directory.
            announcement = str(path.resolve())
    if tones is not None:
        try:
            parse_tones(tones)
        except ValueError as exc:
            src.fail(str(exc), field_of_tones)
    return Fallback(announcement=announcement, tones=tones, action=fb.action, target=fb.target,
                    reconnect_budget_s=fb.reconnect_budget_s, hold=_hold(src, fb.hold))


def _hold(src: _Source, hold: str | None) -> str | None:
    """The hold signal's spec, checked like an announcement (a file made absolute)."""
    if hold is None:
        return None
    if is_tone_spec(hold):
        try:
            parse_tones(hold)
        except ValueError as exc:
            src.fail(str(exc), ("fallback", "hold"))
        return hold
    path = resolve_sound(hold, src.file.parent)
    if path is None:
        src.fail(f"no bundled sound or WAV file {hold!r}", ("fallback", "hold"))
    return hold if is_bundled_name(hold) else str(path.resolve())


def _tools(src: _Source, model: DialplanModel, *, env: Mapping[str, str],
           shared: Mapping[str, Tool], targets: Mapping[str, str],
           descriptions: Mapping[str, str]) -> ToolRegistry:
    declared: dict[str, tuple[Tool, FieldPath]] = {}

    def declare(tool: Tool, path: FieldPath) -> None:
        if tool.name in declared or tool.name in BUILTINS:
            src.fail(f"tool name {tool.name!r} is already taken", (*path, "name"))
        declared[tool.name] = (tool, path)

    for index, hook in enumerate(model.webhook):
        declare(_webhook(src, index, hook, env), ("webhook", index))
    for index, py in enumerate(model.python):
        declare(_python(src, index, py), ("python", index))

    registry = ToolRegistry()
    for index, name in enumerate(model.tools):
        path: FieldPath = ("tools", index)
        if name in registry:
            src.fail(f"tool {name!r} is listed twice", path, name)
        if name in BUILTINS:
            if name == "transfer_call" and not targets:
                src.fail("transfer_call needs at least one entry in [targets]", path, name)
            registry.add(BUILTINS[name](targets, descriptions))
        elif name in declared:
            registry.add(declared[name][0])
        elif name in shared:
            registry.add(shared[name])
        else:
            available = sorted({*BUILTINS, *declared, *shared})
            src.fail(f"no tool {name!r} is registered (available: {', '.join(available)})",
                     path, name)
    for name, (_tool, path) in declared.items():
        if name not in registry:
            src.fail(f"tool {name!r} is declared but not enabled: add it to tools = [...]",
                     (*path, "name"))
    return registry


def _webhook(src: _Source, index: int, hook: Any, env: Mapping[str, str]) -> Tool:
    base: FieldPath = ("webhook", index)
    try:
        url = expand_env(hook.url, env)
    except MissingEnv as exc:
        src.fail(f"environment variable {exc.name} is not set", (*base, "url"))
    headers: dict[str, Secret] = {}
    for header, value in hook.headers.items():
        try:
            headers[header] = Secret(expand_env(value, env))
        except MissingEnv as exc:
            src.fail(f"environment variable {exc.name} is not set", (*base, "headers", header))
    spec = WebhookSpec(
        name=hook.name, description=hook.description, url=url, method=hook.method,
        headers=headers, timeout_s=hook.timeout, parameters=dict(hook.parameters),
        response=tuple(hook.response),
    )
    try:
        return webhook_tool(spec)
    except SchemaProblem as exc:
        src.fail(str(exc), (*base, "parameters", *exc.path))
    except ValueError as exc:
        src.fail(str(exc), (*base, "url"))


def _python(src: _Source, index: int, py: Any) -> Tool:
    base: FieldPath = ("python", index)
    module_name, _, attr = py.function.partition(":")
    try:
        module = _import_operator_module(src.file.parent, module_name)
    except Exception as exc:
        src.fail(f"cannot import {module_name}: {type(exc).__name__}: {exc}", (*base, "function"))
    fn = getattr(module, attr, None)
    if fn is None:
        src.fail(f"module {module_name} has no {attr!r}", (*base, "function"))
    try:
        return tool_from_function(fn, name=py.name, description=py.description,
                                  timeout_s=py.timeout, bind=py.bind)
    except (TypeError, ValueError) as exc:
        field: FieldPath = (*base, "bind") if "bind" in str(exc) else (*base, "function")
        src.fail(str(exc), field)


def _turns(src: _Source, model: DialplanModel, registry: ToolRegistry) -> TurnsConfig | None:
    """``[turns]``; a plan whose server does not answer turns gets the defaults."""
    td = model.agent.turn_detection
    bridge_decides = td.type == "none" or not td.create_response
    if model.turns is None:
        return TurnsConfig() if bridge_decides else None
    if not bridge_decides and model.turns.hook != "answer":
        src.fail("the hook runs only where the bridge decides the reply: set "
                 "[agent.turn_detection] create_response = false or type = \"none\"",
                 ("turns", "hook"))
    try:
        return build_turns(model.turns, tool_names=frozenset(registry.names),
                           import_module=lambda name: _import_operator_module(src.file.parent,
                                                                              name))
    except ValueError as exc:
        src.fail(str(exc), ("turns", "hook"))


def _import_operator_module(folder: Path, module_name: str) -> types.ModuleType:
    """Import ``module_name`` from ``folder`` (a private package per folder), else normally."""
    resolved = folder.resolve()
    package = "_voicebridge_plans_" + hashlib.sha1(str(resolved).encode()).hexdigest()[:12]
    if package not in sys.modules:
        mod = types.ModuleType(package)
        mod.__path__ = [str(resolved)]
        sys.modules[package] = mod
    top = module_name.split(".", maxsplit=1)[0]
    if (resolved / f"{top}.py").is_file() or (resolved / top / "__init__.py").is_file():
        return importlib.import_module(f"{package}.{module_name}")
    return importlib.import_module(module_name)
