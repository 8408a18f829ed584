"""The tool registry: what a dialplan lets the model do, and the one boundary that runs it.

Theory of operation
-------------------
A ``Tool`` is a name, a description, a JSON Schema for its arguments (what the model is
told), a pydantic model that validates them (what is enforced), a handler and a timeout.
Tools come from three places, all ending up as the same ``Tool``:

* Python async functions (``tool_from_function``): the schema is derived from the type
  hints with pydantic, the description from the docstring;
* declarative HTTP webhooks from the dialplan file (``bridge.dialplans.webhook``);
* the built-in telephony tools (``bridge.dialplans.builtin``).

``ToolRegistry.dispatch`` is the boundary where tool failures become model input. The
arguments are model output, and a caller can talk a model into anything, so they are
parsed defensively and validated before any handler runs. Whatever goes wrong (an unknown
tool, JSON that does not parse, arguments that do not validate, an exception, a timeout)
comes back as ``ToolResult(ok=False)`` whose ``output`` is
``{"error": {"type": ..., "message": ...}}``: the model reads it and recovers. Nothing is
raised, except ``asyncio.CancelledError``, which always propagates (the call is ending).
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import time
import typing
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Protocol, runtime_checkable

import pydantic
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model
from pydantic.fields import FieldInfo

from bridge.call.leg import TransferOutcome
from bridge.errors import ToolError
from bridge.realtime.profile import ToolSpec

log = logging.getLogger(__name__)

#: Longest argument string accepted from the model, and longest output handed back.
MAX_ARGUMENTS_CHARS = 64 * 1024
MAX_OUTPUT_CHARS = 8000
DEFAULT_TIMEOUT_S = 5.0


@runtime_checkable
class ToolContext(Protocol):
    """What a tool may do to the call it runs in (implemented by the Call)."""

    call_id: str
    caller: str
    called: str

    async def transfer(self, target_name: str) -> TransferOutcome:
        """Blind-transfer the caller to the dialplan target called ``target_name``."""
        ...

    async def hang_up(self, reason: str) -> None:
        """End the call (after the model's last words have played)."""
        ...

    async def send_dtmf(self, digits: str) -> None:
        """Send DTMF digits to the far end."""
        ...


@dataclass(frozen=True)
class ToolResult:
    """What a tool answered: ``output`` goes to the model as ``function_call_output``."""

    ok: bool
    output: str
    duration_s: float
    error: str | None = None     # the error type when not ok ("timeout", "invalid_arguments", ...)


class ToolFailed(ToolError):
    """A tool's own, expected failure; ``kind`` and ``details`` reach the model as they are."""

    def __init__(self, message: str, *, kind: str = "tool_error", **details: Any) -> None:
        self.kind = kind
        self.details = details
        super().__init__(message)


Handler = Callable[[dict[str, Any], ToolContext], Awaitable[Any]]


@dataclass(frozen=True)
class Tool:
    """One callable tool. ``arguments`` validates; ``parameters`` is what the model sees."""

    name: str
    description: str
    parameters: dict[str, Any]
    arguments: type[BaseModel]
    handler: Handler = field(repr=False)
    timeout_s: float = DEFAULT_TIMEOUT_S
    kind: str = "python"         # "python" | "webhook" | "builtin"

    def spec(self) -> ToolSpec:
        return ToolSpec(name=self.name, description=self.description,
                        parameters=self.parameters)


# -- schema derivation --------------------------------------------------------------------

#: Model configuration for tool arguments: unknown arguments are refused (the model is told
#: so and retries) and numbers are accepted where strings are declared (order numbers).
ARGUMENTS_CONFIG = ConfigDict(extra="forbid", coerce_numbers_to_str=True)


def clean_schema(schema: Any) -> Any:
    """Drop pydantic's ``title`` keywords (noise for the model), keeping properties so named."""
    if isinstance(schema, list):
        return [clean_schema(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "title":
            continue
        if key in ("properties", "$defs", "definitions") and isinstance(value, dict):
            out[key] = {name: clean_schema(sub) for name, sub in value.items()}
        else:
            out[key] = clean_schema(value)
    return out


def object_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The JSON Schema the model is given for ``model``: an object, no extra properties."""
    schema: dict[str, Any] = clean_schema(model.model_json_schema())
    schema.setdefault("properties", {})
    schema["additionalProperties"] = False
    return schema


def _split_docstring(doc: str | None) -> tuple[str, dict[str, str]]:
    """Description (text before any section) and ``Args:`` entries of a Google docstring."""
    if not doc:
        return "", {}
    lines = inspect.cleandoc(doc).splitlines()
    summary: list[str] = []
    params: dict[str, str] = {}
    section = ""
    current = ""
    for line in lines:
        stripped = line.strip()
        if stripped in ("Args:", "Arguments:", "Parameters:", "Returns:", "Raises:"):
            section = stripped
            continue
        if not section:
            summary.append(line)
        elif section in ("Args:", "Arguments:", "Parameters:") and stripped:
            if line.startswith((" ", "\t")) and ":" in stripped and not line.startswith("        "):
                name, _, text = stripped.partition(":")
                current = name.split("(")[0].strip()
                params[current] = text.strip()
            elif current:
                params[current] = f"{params[current]} {stripped}".strip()
    return "\n".join(summary).strip(), params


def tool_from_function(
    fn: Callable[..., Awaitable[Any]],
    *,
    name: str | None = None,
    description: str | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    bind: Mapping[str, Any] | None = None,
) -> Tool:
    """Make a ``Tool`` of an async function; its JSON Schema comes from its type hints.

    A parameter annotated ``ToolContext`` receives the call's context and is not shown to
    the model; ``bind`` fixes parameters from configuration (also hidden from the model).
    Raises ``TypeError``/``ValueError`` when the function cannot be a tool.
    """
    if not inspect.iscoroutinefunction(fn):
        raise TypeError(f"{getattr(fn, '__qualname__', fn)!r} is not an async function")
    tool_name = name or fn.__name__
    summary, arg_docs = _split_docstring(fn.__doc__)
    bound = dict(bind or {})
    fields, ctx_param = _argument_fields(fn, tool_name, bound, arg_docs)
    model = create_model(f"{tool_name}_arguments", __config__=ARGUMENTS_CONFIG, **fields)

    async def handler(args: dict[str, Any], ctx: ToolContext) -> Any:
        kwargs = {**bound, **args}
        if ctx_param is not None:
            kwargs[ctx_param] = ctx
        return await fn(**kwargs)

    return Tool(
        name=tool_name,
        description=description or summary or tool_name.replace("_", " "),
        parameters=object_schema(model),
        arguments=model,
        handler=handler,
        timeout_s=timeout_s,
        kind="python",
    )


def _argument_fields(fn: Callable[..., Awaitable[Any]], tool_name: str, bound: dict[str, Any],
                     arg_docs: Mapping[str, str]) -> tuple[dict[str, Any], str | None]:
    """The pydantic fields the model fills in, and the parameter that takes the context.

    Validates the ``bound`` values in place against their parameters' type hints.
    """
    hints = typing.get_type_hints(fn, include_extras=True)
    fields: dict[str, Any] = {}
    ctx_param: str | None = None
    params = inspect.signature(fn).parameters
    for pname, param in params.items():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD, param.POSITIONAL_ONLY):
            raise TypeError(f"{tool_name}: parameter {pname!r} must be a plain keyword parameter")
        hint = hints.get(pname)
        if hint is ToolContext:
            ctx_param = pname
            continue
        if pname in bound:
            if hint is not None:
                try:
                    bound[pname] = pydantic.TypeAdapter(hint).validate_python(bound[pname])
                except ValidationError as exc:
                    raise ValueError(f"{tool_name}: bind {pname}: "
                                     f"{_validation_message(exc)}") from None
            continue
        if hint is None:
            raise TypeError(f"{tool_name}: parameter {pname!r} has no type hint")
        if pname in arg_docs and not _has_description(hint):
            hint = Annotated[hint, Field(description=arg_docs[pname])]
        default = ... if param.default is param.empty else param.default
        fields[pname] = (hint, default)
    unknown = sorted(set(bound) - set(params))
    if unknown:
        raise ValueError(f"{tool_name}: bind names no parameter: {', '.join(unknown)}")
    return fields, ctx_param


def _has_description(hint: Any) -> bool:
    return any(isinstance(meta, FieldInfo) and meta.description
               for meta in getattr(hint, "__metadata__", ()))


# -- the registry -------------------------------------------------------------------------


def error_output(kind: str, message: str, **details: Any) -> str:
    """The structured error a model can read and recover from."""
    return json.dumps({"error": {"type": kind, "message": message, **details}})


def _to_output(value: Any) -> str:
    if isinstance(value, str):
        text = value
    elif value is None:
        text = '{"ok": true}'
    else:
        text = json.dumps(pydantic.TypeAdapter(Any).dump_python(value, mode="json"))
    if len(text) > MAX_OUTPUT_CHARS:
        text = text[:MAX_OUTPUT_CHARS] + "…[truncated]"
    return text


def _validation_message(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors(include_input=False, include_url=False)[:5]:
        where = ".".join(str(p) for p in err["loc"]) or "arguments"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


class ToolRegistry:
    """The tools one dialplan enables, by name."""

    def __init__(self, tools: Iterable[Tool] = ()) -> None:
        self._tools: dict[str, Tool] = {}
        for tool in tools:
            self.add(tool)

    def add(self, tool: Tool) -> Tool:
        if tool.name in self._tools:
            raise ValueError(f"tool {tool.name!r} is already registered")
        self._tools[tool.name] = tool
        return tool

    def register(
        self,
        fn: Callable[..., Awaitable[Any]],
        *,
        name: str | None = None,
        description: str | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        bind: Mapping[str, Any] | None = None,
    ) -> Tool:
        """Register an async function under ``name`` (default: its own name)."""
        return self.add(tool_from_function(fn, name=name, description=description,
                                           timeout_s=timeout_s, bind=bind))

    def get(self, name: str) -> Tool | None:
        return self._tools.get(name)

    @property
    def names(self) -> list[str]:
        return list(self._tools)

    def __contains__(self, name: object) -> bool:
        return name in self._tools

    def __iter__(self) -> Iterator[Tool]:
        return iter(self._tools.values())

    def __len__(self) -> int:
        return len(self._tools)

    def specs(self) -> list[ToolSpec]:
        """What goes into ``session.tools``."""
        return [tool.spec() for tool in self._tools.values()]

    async def dispatch(self, name: str, arguments: str, ctx: ToolContext) -> ToolResult:
        """Run tool ``name`` with the model's ``arguments``; never raises but CancelledError."""
        started = time.monotonic()

        def fail(kind: str, message: str, **details: Any) -> ToolResult:
            duration = time.monotonic() - started
            # The name comes from the model: cut it short in the log.
            log.info("tool %.64r refused or failed: %s (%.0f ms)", name, kind,
                     duration * 1000)
            return ToolResult(ok=False, output=error_output(kind, message, **details),
                              duration_s=duration, error=kind)

        tool = self._tools.get(name)
        if tool is None:
            return fail("unknown_tool", f"there is no tool {name!r}; available: "
                        f"{', '.join(self._tools) or 'none'}")
        args = _parse_arguments(arguments)
        if isinstance(args, str):
            return fail("invalid_json", args)
        try:
            validated = tool.arguments.model_validate(args)
        except ValidationError as exc:
            return fail("invalid_arguments", _validation_message(exc))
        kwargs = {key: getattr(validated, key) for key in type(validated).model_fields}
        try:
            async with asyncio.timeout(tool.timeout_s) as scope:
                value = await tool.handler(kwargs, ctx)
        except TimeoutError:
            if scope.expired():
                return fail("timeout", f"{name} did not answer within {tool.timeout_s:g} s")
            return fail("tool_error", f"{name} timed out")
        except ToolFailed as exc:
            return fail(exc.kind, str(exc), **exc.details)
        except ToolError as exc:
            return fail("tool_error", str(exc))
        except Exception as exc:
            # An operator's code failed: the traceback goes to the log, only the kind to
            # the model (exception text can carry internals).
            log.warning("tool %s raised %s", name, type(exc).__name__, exc_info=True)
            return fail("tool_error", f"{name} failed ({type(exc).__name__})")
        duration = time.monotonic() - started
        log.info("tool %s ok (%.0f ms)", name, duration * 1000)
        return ToolResult(ok=True, output=_to_output(value), duration_s=duration)


def _parse_arguments(arguments: object) -> dict[str, Any] | str:
    """The argument object, or a message saying why it cannot be one."""
    if not isinstance(arguments, str):
        return "arguments must be a JSON object in a string"
    if len(arguments) > MAX_ARGUMENTS_CHARS:
        return f"arguments longer than {MAX_ARGUMENTS_CHARS} characters"
    if not arguments.strip():
        return {}
    try:
        value = json.loads(arguments)
    except (ValueError, RecursionError) as exc:
        return f"arguments are not valid JSON ({type(exc).__name__}: {str(exc)[:120]})"
    if not isinstance(value, dict):
        return f"arguments must be a JSON object, not {type(value).__name__}"
    return value
