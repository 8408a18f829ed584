"""Declarative HTTP webhook tools (``[[webhook]]`` in a dialplan file).

A webhook tool is an HTTP request whose URL is a template with ``{arg}`` placeholders::

    [[webhook]]
    name = "order_status"
    description = "Delivery status of an order."
    url = "${ORDER_API_URL:-http://127.0.0.1:8089}/orders/{order_id}"
    headers = { Authorization = "Bearer ${ORDERS_TOKEN}" }
    response = ["status", "data.eta"]
    [webhook.parameters]
    type = "object"
    required = ["order_id"]
    properties.order_id = { type = "string", pattern = "^[0-9]{4,12}$" }

* ``${NAME}`` / ``${NAME:-default}`` in the URL and header values are read from the
  environment once, at load; a missing variable is a load error naming the field. Header
  values are secrets: they are kept out of ``repr`` and never logged.
* Argument values are percent-encoded into the placeholders (``/`` included), so an argument
  can never change the host or climb the path; placeholders are refused in the scheme and
  host. Arguments not in the URL go in the query string (GET, DELETE) or a JSON body.
* ``parameters`` is a JSON Schema object restricted to what can be enforced here (types,
  enum, pattern, lengths, bounds, arrays of those); it is turned into a pydantic model so
  that the registry validates webhook arguments exactly like Python tool arguments.
* A 2xx answer becomes the tool output: the fields selected by ``response`` (dotted paths,
  list indices as numbers), or the whole JSON / text. Any other status is an error output.
"""

from __future__ import annotations

import functools
import json
import logging
import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from string import Formatter
from typing import Annotated, Any, Literal
from urllib.parse import quote, urlsplit

import httpx
from pydantic import Field, create_model

from bridge.dialplans.tools import ARGUMENTS_CONFIG, Tool, ToolContext, ToolFailed
from bridge.errors import ConfigError

log = logging.getLogger(__name__)

MAX_RESPONSE_BYTES = 256 * 1024
_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class SchemaProblem(ConfigError, ValueError):
    """A ``parameters`` schema this module cannot enforce; ``path`` is where, below it."""

    def __init__(self, message: str, path: tuple[str | int, ...] = ()) -> None:
        self.path = path
        super().__init__(message)


class MissingEnv(ConfigError, KeyError):
    """``${NAME}`` names an environment variable that is not set (and has no default)."""

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(name)


def expand_env(text: str, env: Mapping[str, str]) -> str:
    """Replace ``${NAME}`` and ``${NAME:-default}``; raise ``MissingEnv`` for an unset name."""

    def one(m: re.Match[str]) -> str:
        value = env.get(m.group(1))
        if value is None or (value == "" and m.group(2) is not None):
            if m.group(2) is None:
                raise MissingEnv(m.group(1))
            return m.group(2)
        return value

    return _ENV.sub(one, text)


# -- parameters schema -> pydantic model --------------------------------------------------

_TYPES: dict[str, type] = {"string": str, "integer": int, "number": float, "boolean": bool}
_CONSTRAINTS = {
    "pattern": "pattern", "minLength": "min_length", "maxLength": "max_length",
    "minimum": "ge", "maximum": "le", "exclusiveMinimum": "gt", "exclusiveMaximum": "lt",
    "minItems": "min_length", "maxItems": "max_length",
}
_PROPERTY_KEYS = {"type", "description", "enum", "items", "default", *_CONSTRAINTS}
_OBJECT_KEYS = {"type", "properties", "required", "additionalProperties", "description"}


def _python_type(schema: Any, path: tuple[str | int, ...]) -> tuple[Any, dict[str, Any]]:
    """The Python type and pydantic ``Field`` arguments of one property schema."""
    if not isinstance(schema, dict):
        raise SchemaProblem("a property schema must be a table", path)
    for key in schema:
        if key not in _PROPERTY_KEYS:
            raise SchemaProblem(f"unsupported schema keyword {key!r}; supported: "
                                f"{', '.join(sorted(_PROPERTY_KEYS))}", (*path, key))
    kind = schema.get("type")
    constraints: dict[str, Any] = {}
    for key, arg in _CONSTRAINTS.items():
        if key in schema:
            constraints[arg] = schema[key]
    if "pattern" in schema:
        try:
            re.compile(schema["pattern"])
        except (re.error, TypeError) as exc:
            raise SchemaProblem(f"bad regular expression: {exc}", (*path, "pattern")) from None
    if "description" in schema:
        constraints["description"] = schema["description"]
    if "enum" in schema:
        values = schema["enum"]
        if not isinstance(values, list) or not values:
            raise SchemaProblem("enum must be a non-empty array", (*path, "enum"))
        return Literal[tuple(values)], constraints
    if kind == "array":
        items = schema.get("items")
        if items is None:
            raise SchemaProblem("an array needs items", (*path, "items"))
        item_type, item_constraints = _python_type(items, (*path, "items"))
        item_constraints.pop("description", None)
        if item_constraints:
            item_type = Annotated[item_type, Field(**item_constraints)]
        return list[item_type], constraints  # type: ignore[valid-type]
    if kind not in _TYPES:
        raise SchemaProblem(f"type must be one of string, integer, number, boolean, array; "
                            f"not {kind!r}", (*path, "type"))
    return _TYPES[kind], constraints


def arguments_model(name: str, schema: Mapping[str, Any]) -> Any:
    """A pydantic model enforcing ``schema`` (a JSON Schema object of simple properties)."""
    for key in schema:
        if key not in _OBJECT_KEYS:
            raise SchemaProblem(f"unsupported schema keyword {key!r}", (key,))
    if schema.get("type", "object") != "object":
        raise SchemaProblem('parameters must have type = "object"', ("type",))
    if schema.get("additionalProperties", False) is not False:
        raise SchemaProblem("additionalProperties must be false (or absent)",
                            ("additionalProperties",))
    properties = schema.get("properties", {})
    if not isinstance(properties, dict):
        raise SchemaProblem("properties must be a table", ("properties",))
    required = schema.get("required", [])
    if not isinstance(required, list):
        raise SchemaProblem("required must be an array of property names", ("required",))
    for index, prop in enumerate(required):
        if prop not in properties:
            raise SchemaProblem(f"required names {prop!r}, which is not in properties",
                                ("required", index))
    fields: dict[str, Any] = {}
    for prop, sub in properties.items():
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", prop):
            raise SchemaProblem(f"property name {prop!r}: letters, digits and _ only",
                                ("properties", prop))
        py_type, constraints = _python_type(sub, ("properties", prop))
        if prop in required:
            default: Any = ...
        else:
            default = sub.get("default") if isinstance(sub, dict) else None
            if default is None:
                py_type = py_type | None
        try:
            fields[prop] = (py_type, Field(default, **constraints))
        except TypeError as exc:
            raise SchemaProblem(str(exc), ("properties", prop)) from None
    return create_model(f"{name}_arguments", __config__=ARGUMENTS_CONFIG, **fields)


# -- the request --------------------------------------------------------------------------


@dataclass(frozen=True)
class Secret:
    """A header value: usable, never shown."""

    value: str = field(repr=False)

    def __repr__(self) -> str:
        return "Secret(***)"


def url_placeholders(template: str) -> list[str]:
    """Names of the ``{arg}`` placeholders of a URL template (ValueError if malformed)."""
    names = []
    for _text, name, spec, conv in Formatter().parse(template):
        if name is None:
            continue
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name) or spec or conv:
            raise ValueError(f"placeholder {{{name}}} must be a bare argument name")
        names.append(name)
    return names


def check_url(template: str, properties: Mapping[str, Any]) -> None:
    """Refuse a template the arguments could redirect, or that names unknown arguments."""
    names = url_placeholders(template)
    parts = urlsplit(template.replace("{", "").replace("}", ""))
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError("url must be an absolute http:// or https:// URL")
    scheme, _, after = template.partition("//")
    host = re.split(r"[/?#]", after, maxsplit=1)[0]
    if "{" in scheme or "{" in host:
        raise ValueError("placeholders are allowed only after the host (in the path or query)")
    unknown = [name for name in names if name not in properties]
    if unknown:
        raise ValueError(f"placeholder(s) {', '.join(unknown)} not in parameters.properties")


def _select(document: Any, path: str) -> Any:
    node = document
    for part in path.split("."):
        if isinstance(node, dict):
            node = node.get(part)
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return None
    return node


@dataclass(frozen=True)
class WebhookSpec:
    """A validated ``[[webhook]]`` entry, environment already resolved."""

    name: str
    description: str
    url: str
    method: str
    headers: dict[str, Secret]
    timeout_s: float
    parameters: dict[str, Any]
    response: tuple[str, ...] = ()


@functools.cache
def _ssl_context() -> ssl.SSLContext:
    """One TLS context for every webhook request.

    Building one loads the CA bundle: ~100 ms of CPU, which a fresh ``AsyncClient`` would
    otherwise pay on every tool call. Made once, at load time.
    """
    return httpx.create_ssl_context()


def webhook_tool(spec: WebhookSpec) -> Tool:
    """Build the ``Tool`` for one webhook (raises ``SchemaProblem``/``ValueError``)."""
    model = arguments_model(spec.name, spec.parameters)
    check_url(spec.url, spec.parameters.get("properties", {}))
    _ssl_context()
    in_url = set(url_placeholders(spec.url))
    schema = {"type": "object", "properties": {}, **spec.parameters,
              "additionalProperties": False}

    async def handler(args: dict[str, Any], ctx: ToolContext) -> Any:
        return await _request(spec, in_url, args)

    return Tool(name=spec.name, description=spec.description, parameters=schema,
                arguments=model, handler=handler, timeout_s=spec.timeout_s, kind="webhook")


async def _request(spec: WebhookSpec, in_url: set[str], args: dict[str, Any]) -> Any:
    url = spec.url.format_map(
        {name: quote(_as_text(args.get(name)), safe="") for name in in_url}
    )
    rest = {k: v for k, v in args.items() if k not in in_url and v is not None}
    headers = {name: secret.value for name, secret in spec.headers.items()}
    use_query = spec.method in ("GET", "DELETE")
    # trust_env=False: a webhook goes where the dialplan says, not via a proxy the
    # environment happens to name (and never with credentials from ~/.netrc).
    async with httpx.AsyncClient(timeout=spec.timeout_s, trust_env=False, verify=_ssl_context(),
                                 follow_redirects=False) as client:
        try:
            target = httpx.URL(url)
            if use_query and rest:
                # Merged, not replaced: the template's own query (?lang=en) stays.
                target = target.copy_merge_params(rest)
            async with client.stream(
                spec.method, target, headers=headers,
                json=rest if not use_query else None,
            ) as response:
                body = await _read_limited(response)
        except httpx.TimeoutException:
            raise ToolFailed(f"{spec.name}: the service did not answer in time",
                             kind="timeout") from None
        except httpx.HTTPError as exc:
            raise ToolFailed(f"{spec.name}: request failed ({type(exc).__name__})",
                             kind="http_error") from None
    log.info("webhook %s: %s -> %d (%d bytes)", spec.name, spec.method,
             response.status_code, len(body))
    if not 200 <= response.status_code < 300:
        raise ToolFailed(f"{spec.name}: the service answered HTTP {response.status_code}",
                         kind="http_status", status=response.status_code)
    try:
        document = json.loads(body) if body else None
    except ValueError:
        text = body.decode("utf-8", "replace")
        if spec.response:
            raise ToolFailed(f"{spec.name}: the service did not answer JSON",
                             kind="bad_response") from None
        return text
    if spec.response:
        return {path: _select(document, path) for path in spec.response}
    return document


async def _read_limited(response: httpx.Response) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > MAX_RESPONSE_BYTES:
            raise ToolFailed(f"response larger than {MAX_RESPONSE_BYTES} bytes",
                             kind="bad_response")
        chunks.append(chunk)
    return b"".join(chunks)


def _as_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
