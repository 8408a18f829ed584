"""The emulator's Chat Completions: requests in, a status and a body (or SSE chunks) out.

Sans-I/O: :meth:`ChatCore.handle` takes the method, the request target, the headers
(lower-case names) and the body, and returns a :class:`ChatReply`; the HTTP adapter
(``bridge.realtime.emulator.chat_http``) writes it, pausing ``delay_s`` between chunks.

Paths, as the real services have them (POST only):

- Azure GA ``/openai/v1/chat/completions`` and OpenAI ``/v1/chat/completions``: the
  ``model`` (deployment) is in the body;
- Azure ``/openai/deployments/{deployment}/chat/completions?api-version=V``.

Answers: 404 for another path, 405 for another method, 401 for bad credentials (the
Realtime leg's check: ``api-key`` header, ``Authorization: Bearer``), 400 for a body that
is not a Chat Completions request (with OpenAI's ``error`` object), and 429 with
``Retry-After`` while a test has asked for refusals (:meth:`ChatCore.refuse`). Otherwise
``stream: true`` gets ``chat.completion.chunk`` events (a role chunk, content pieces of
:data:`PIECE_CHARS`, a ``finish_reason`` chunk, a usage chunk when
``stream_options.include_usage``) and ``data: [DONE]``; without it, one
``chat.completion``. What is said: the deterministic summary of
``bridge.realtime.emulator.summariser`` when the system message asks to summarise, else
``(response to: <last user text>)``.
"""

from __future__ import annotations

import itertools
import json
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from bridge.realtime.emulator.summariser import summarise

__all__ = ["PIECE_CHARS", "ChatCore", "ChatReply", "ChatRequestRecord"]

PIECE_CHARS = 8
STREAM_MAX_S = 8.0
_DEPLOYMENT_PATH = re.compile(r"^/openai/deployments/([^/]+)/chat/completions$")
_MODEL_PATHS = frozenset({"/openai/v1/chat/completions", "/v1/chat/completions"})

#: ``authorized(headers, query, dialect)``: the emulator's credential check.
Authorize = Callable[[Mapping[str, str], dict[str, str], str], bool]


@dataclass
class ChatReply:
    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    #: SSE events (a streamed answer), written ``delay_s`` apart
    chunks: list[bytes] | None = None
    delay_s: float = 0.0


@dataclass(frozen=True)
class ChatRequestRecord:
    """One request as the emulator saw it (no credentials)."""

    path: str
    status: int
    model: str = ""
    stream: bool = False
    body: dict[str, Any] = field(default_factory=dict)


def _error(status: int, message: str, *, kind: str = "invalid_request_error",
           code: str | None = None, param: str | None = None,
           headers: list[tuple[str, str]] | None = None) -> ChatReply:
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return ChatReply(status, [("content-type", "application/json"), *(headers or [])],
                     json.dumps(body).encode())


def _problem(body: Any) -> tuple[str, str] | None:
    """What is wrong with a request body, as (param, message); None when nothing is."""
    if not isinstance(body, dict):
        return "", "The request body must be a JSON object."
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "messages", "'messages' must be a non-empty array."
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            return f"messages[{i}]", "Each message needs a 'role'."
        if m["role"] not in ("system", "developer", "user", "assistant", "tool"):
            return f"messages[{i}].role", f"Invalid role {m['role']!r}."
        if not isinstance(m.get("content"), str | list | None):
            return f"messages[{i}].content", "Invalid 'content'."
    if "stream" in body and not isinstance(body["stream"], bool):
        return "stream", "'stream' must be a boolean."
    return None


def _text_of(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, list):
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return content if isinstance(content, str) else ""


def answer_text(messages: list[dict[str, Any]]) -> str:
    system = " ".join(_text_of(m) for m in messages if m["role"] in ("system", "developer"))
    users = [_text_of(m) for m in messages if m["role"] == "user"]
    if "summar" in system.lower():
        return json.dumps(summarise(system, users), ensure_ascii=False)
    last = users[-1][:80] if users else ""
    return f"(response to: {last})"


class ChatCore:
    """Chat Completions of one emulator (module docstring)."""

    def __init__(self, authorize: Authorize, *, chunk_ms: int = 60) -> None:
        self._authorize = authorize
        self.chunk_ms = chunk_ms
        self.requests: list[ChatRequestRecord] = []
        self._refusals: list[tuple[int, float]] = []
        self._ids = itertools.count(1)

    def refuse(self, count: int, status: int = 429, retry_after_s: float = 1.0) -> None:
        """Answer the next ``count`` well-formed, authorised requests with ``status``
        (429: with ``Retry-After: retry_after_s``)."""
        self._refusals.extend([(status, retry_after_s)] * count)

    def handle(self, method: str, target: str, headers: Mapping[str, str],
               body: bytes) -> ChatReply:
        parts = urlsplit(target)
        reply, model, parsed = self._check(method, parts.path, parts.query, headers, body)
        stream = bool(parsed.get("stream")) if reply is None else False
        if reply is None:
            reply = self._answer(model, parsed, stream)
        self.requests.append(ChatRequestRecord(parts.path, reply.status, model, stream,
                                               parsed))
        return reply

    def _check(self, method: str, path: str, query_text: str, headers: Mapping[str, str],
               body: bytes) -> tuple[ChatReply | None, str, dict[str, Any]]:
        query = dict(parse_qsl(query_text, keep_blank_values=True))
        m = _DEPLOYMENT_PATH.match(path)
        if m is None and path not in _MODEL_PATHS:
            return _error(404, "Resource not found", code="404"), "", {}
        if method != "POST":
            return _error(405, "Method not allowed"), "", {}
        dialect = "preview" if m else "ga"
        if not self._authorize(headers, query, dialect):
            return _error(401, "Access denied due to invalid subscription key or wrong API "
                          "endpoint.", kind="invalid_request_error", code="401"), "", {}
        if m is not None and not query.get("api-version"):
            return _error(400, "Missing required query parameter 'api-version'.",
                          param="api-version"), "", {}
        try:
            parsed = json.loads(body or b"null")
        except ValueError:
            return _error(400, "The request body is not valid JSON."), "", {}
        problem = _problem(parsed)
        if problem is not None:
            return _error(400, problem[1], param=problem[0] or None), "", {}
        model = m.group(1) if m else parsed.get("model")
        if not isinstance(model, str) or not model:
            return _error(400, "Missing required parameter: 'model'.", param="model"), "", parsed
        if self._refusals:
            status, after = self._refusals.pop(0)
            extra = [("retry-after", f"{after:g}"), ("retry-after-ms", str(int(after * 1000)))]
            return _error(status, "Rate limit reached; retry later." if status == 429 else
                          "The server had an error.", kind="rate_limit_exceeded"
                          if status == 429 else "server_error", code=str(status),
                          headers=extra if status == 429 else None), model, parsed
        return None, model, parsed

    def _answer(self, model: str, body: dict[str, Any], stream: bool) -> ChatReply:
        text = answer_text(body["messages"])
        ident = f"chatcmpl-emu{next(self._ids)}"
        created = int(time.time())
        usage = {"prompt_tokens": sum(len(_text_of(m)) // 4 for m in body["messages"]),
                 "completion_tokens": max(1, len(text) // 4)}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        if not stream:
            out = {"id": ident, "object": "chat.completion", "created": created,
                   "model": model, "choices": [{
                       "index": 0, "finish_reason": "stop", "logprobs": None,
                       "message": {"role": "assistant", "content": text, "refusal": None}}],
                   "usage": usage}
            return ChatReply(200, [("content-type", "application/json")],
                             json.dumps(out).encode())
        head = {"id": ident, "object": "chat.completion.chunk", "created": created,
                "model": model}

        def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
            event = dict(head, choices=[{"index": 0, "delta": delta, "logprobs": None,
                                         "finish_reason": finish}])
            return b"data: " + json.dumps(event).encode() + b"\n\n"

        chunks = [chunk({"role": "assistant", "content": ""})]
        chunks += [chunk({"content": text[i:i + PIECE_CHARS]})
                   for i in range(0, len(text), PIECE_CHARS)]
        chunks.append(chunk({}, "stop"))
        options = body.get("stream_options")
        if isinstance(options, dict) and options.get("include_usage"):
            chunks.append(b"data: " + json.dumps(dict(head, choices=[], usage=usage)).encode()
                          + b"\n\n")
        chunks.append(b"data: [DONE]\n\n")
        # The whole stream within STREAM_MAX_S: the connection's handshake timeout
        # (``websockets``' open_timeout, 10 s) also bounds a plain HTTP exchange.
        delay = min(self.chunk_ms / 1000, STREAM_MAX_S / len(chunks))
        return ChatReply(200, [("content-type", "text/event-stream"),
                               ("cache-control", "no-cache")], chunks=chunks, delay_s=delay)
