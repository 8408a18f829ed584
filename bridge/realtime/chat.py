"""Chat Completions: where the chat deployment is, and a client that streams from it.

Targets, derived from the Realtime leg's (same host, same credentials):

=============  ==============================================================================
Realtime kind  Chat Completions URL
=============  ==============================================================================
azure          ``https://RESOURCE/openai/v1/chat/completions`` (``model`` in the body)
azure + chat   ``https://RESOURCE/openai/deployments/DEPLOYMENT/chat/completions?api-version=V``
api_version
azure-preview  the deployments URL, with the Realtime API version unless one is given
openai         ``https://api.openai.com/v1/chat/completions``
emulator       ``http://127.0.0.1:PORT/openai/v1/chat/completions`` (the emulator's own port)
=============  ==============================================================================

Auth is the Realtime leg's (``bridge.realtime.auth.handshake_headers``): ``api-key`` for an
Azure key, ``Authorization: Bearer`` for OpenAI or an Entra ID token (fetched per attempt).

:class:`ChatClient` sends ``stream: true`` and reads the ``chat.completion.chunk`` events
with ``httpx-sse`` until ``data: [DONE]``, handing each content piece to ``on_delta``; or
one ``chat.completion`` with ``stream=False``. A 429 waits what ``retry-after-ms`` /
``Retry-After`` says (capped at ``max_backoff_s``); a 408/409/5xx, a network error or a
stream that breaks off before ``[DONE]`` waits ``backoff_s`` doubling per attempt; other
4xx fail at once. At most ``max_attempts`` requests within ``total_s``, answers up to
:data:`MAX_TEXT` characters. Every failed attempt is kept in :attr:`ChatResult.errors`
(status and a short reason, never a credential or a body); the final failure raises
:class:`~bridge.errors.ChatFailed`.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit

import httpx
from httpx_sse import SSEError, aconnect_sse

from bridge.errors import ChatAttemptFailed, ChatFailed, RealtimeAuthError
from bridge.realtime.auth import TokenProvider, handshake_headers
from bridge.realtime.config import RealtimeTarget, redact_url

__all__ = ["MAX_TEXT", "ChatClient", "ChatResult", "ChatTarget", "chat_target"]

log = logging.getLogger("bridge.realtime.chat")

MAX_TEXT = 64 * 1024
_HTTP = {"wss": "https", "https": "https", "ws": "http", "http": "http"}
_RETRY_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})


@dataclass(frozen=True)
class ChatTarget:
    """One Chat Completions endpoint: the URL, the body's ``model`` (None on a
    deployments URL) and the Realtime target whose credentials it uses."""

    url: str
    model: str | None
    auth: RealtimeTarget = field(repr=False)

    @property
    def safe_url(self) -> str:
        return redact_url(self.url)


def chat_target(realtime: RealtimeTarget, deployment: str,
                api_version: str | None = None) -> ChatTarget:
    """The chat deployment ``deployment`` beside ``realtime`` (module docstring)."""
    parts = urlsplit(realtime.url)
    base = f"{_HTTP.get(parts.scheme, 'https')}://{parts.netloc}"
    dep = quote(deployment, safe="")
    if realtime.kind == "azure-preview" and api_version is None:
        api_version = dict(parse_qsl(parts.query)).get("api-version")
    if realtime.kind in ("azure", "azure-preview") and api_version:
        return ChatTarget(f"{base}/openai/deployments/{dep}/chat/completions"
                          f"?api-version={quote(api_version, safe='')}", None, realtime)
    if realtime.kind == "openai":
        return ChatTarget(f"{base}/v1/chat/completions", deployment, realtime)
    return ChatTarget(f"{base}/openai/v1/chat/completions", deployment, realtime)


@dataclass
class ChatResult:
    text: str = ""
    finish_reason: str | None = None
    usage: dict[str, Any] = field(default_factory=dict)
    attempts: int = 0
    #: one line per failed attempt: "429 (retry after 1.0 s)", "ReadTimeout", ...
    errors: list[str] = field(default_factory=list)


def _retry_after(headers: httpx.Headers) -> float | None:
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = headers.get(name)
        if value:
            try:
                return max(0.0, float(value) * scale)
            except ValueError:
                continue
    return None


class ChatClient:
    """Requests to one :class:`ChatTarget` (module docstring)."""

    def __init__(self, target: ChatTarget, *, token_provider: TokenProvider | None = None,
                 http: httpx.AsyncClient | None = None, timeout_s: float = 30.0,
                 max_attempts: int = 4, backoff_s: float = 1.0, max_backoff_s: float = 30.0,
                 total_s: float = 120.0,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self.target = target
        self._tokens = token_provider
        self._http = http
        self._timeout = httpx.Timeout(timeout_s, connect=min(10.0, timeout_s))
        self.max_attempts = max_attempts
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.total_s = total_s
        self._sleep = sleep
        #: every parsed chunk (or completion), for checks against the openai models
        self.on_chunk: Callable[[dict[str, Any]], None] | None = None

    async def complete(self, messages: list[dict[str, Any]], *, stream: bool = True,
                       response_format: dict[str, Any] | None = None,
                       on_delta: Callable[[str], None] | None = None,
                       on_restart: Callable[[], None] | None = None) -> ChatResult:
        """The model's answer to ``messages``; raises ``ChatFailed`` after the retries.
        ``on_restart`` is called before a retry that follows delivered deltas."""
        body: dict[str, Any] = {"messages": messages, "stream": stream}
        if self.target.model is not None:
            body["model"] = self.target.model
        if stream:
            body["stream_options"] = {"include_usage": True}
        if response_format is not None:
            body["response_format"] = response_format
        result = ChatResult()
        own = self._http is None
        http = self._http or httpx.AsyncClient(timeout=self._timeout)
        try:
            async with asyncio.timeout(self.total_s):
                await self._attempts(http, body, result, on_delta, on_restart)
        except TimeoutError:
            result.errors.append(f"gave up after {self.total_s:g} s")
            raise ChatFailed(f"no answer within {self.total_s:g} s",
                             attempts=result.attempts) from None
        finally:
            if own:
                await http.aclose()
        return result

    async def _attempts(self, http: httpx.AsyncClient, body: dict[str, Any],
                        result: ChatResult, on_delta: Callable[[str], None] | None,
                        on_restart: Callable[[], None] | None) -> None:
        while True:
            result.attempts += 1
            result.text, result.finish_reason = "", None
            try:
                headers = dict(await handshake_headers(self.target.auth, self._tokens))
                if body["stream"]:
                    await self._stream(http, body, headers, result, on_delta)
                else:
                    await self._once(http, body, headers, result)
                return
            except ChatAttemptFailed as exc:
                wait = self._wait(exc, result.attempts)
                result.errors.append(str(exc))
                log.info("chat: attempt %d to %s failed (%s)", result.attempts,
                         self.target.safe_url, exc)
                if result.attempts >= self.max_attempts:
                    raise ChatFailed(f"failed after {result.attempts} attempts: {exc}",
                                     status=exc.status, attempts=result.attempts) from None
                if result.text and on_restart is not None:
                    on_restart()
                await self._sleep(wait)
            except ChatFailed as exc:
                exc.attempts = result.attempts
                result.errors.append(str(exc))
                raise
            except RealtimeAuthError as exc:
                result.errors.append(str(exc))
                raise ChatFailed(str(exc), attempts=result.attempts) from None

    def _wait(self, exc: ChatAttemptFailed, attempt: int) -> float:
        if exc.wait_s is not None:
            return min(exc.wait_s, self.max_backoff_s)
        return float(min(self.backoff_s * 2.0 ** (attempt - 1), self.max_backoff_s))

    async def _refused(self, response: httpx.Response) -> None:
        """Turn a non-200 answer into a retry or a failure."""
        status = response.status_code
        try:
            raw = await response.aread()
            detail = json.loads(raw[:4096])["error"]["message"][:200]
        except Exception:       # asyncio.CancelledError is not an Exception
            detail = response.reason_phrase
        if status == 429:
            after = _retry_after(response.headers)
            reason = f"429 {detail}" + (f" (retry after {after:g} s)" if after is not None
                                        else "")
            raise ChatAttemptFailed(reason, status, after)
        if status in _RETRY_STATUS:
            raise ChatAttemptFailed(f"{status} {detail}", status)
        raise ChatFailed(f"{status} {detail}", status=status)

    async def _once(self, http: httpx.AsyncClient, body: dict[str, Any],
                    headers: dict[str, str], result: ChatResult) -> None:
        try:
            response = await http.post(self.target.url, json=body, headers=headers,
                                       timeout=self._timeout)
        except httpx.TransportError as exc:
            raise ChatAttemptFailed(type(exc).__name__, None) from None
        if response.status_code != 200:
            await self._refused(response)
        try:
            data = response.json()
            choice = data["choices"][0]
            result.text = str(choice["message"].get("content") or "")[:MAX_TEXT]
            result.finish_reason = choice.get("finish_reason")
            result.usage = dict(data.get("usage") or {})
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):
            raise ChatAttemptFailed("malformed completion", 200) from None
        if self.on_chunk is not None:
            self.on_chunk(data)

    async def _stream(self, http: httpx.AsyncClient, body: dict[str, Any],
                      headers: dict[str, str], result: ChatResult,
                      on_delta: Callable[[str], None] | None) -> None:
        done = False
        try:
            async with aconnect_sse(http, "POST", self.target.url, json=body, headers=headers,
                                    timeout=self._timeout) as source:
                if source.response.status_code != 200:
                    await self._refused(source.response)
                async for sse in source.aiter_sse():
                    if sse.data.strip() == "[DONE]":
                        done = True
                        break
                    self._chunk(sse.data, result, on_delta)
        except httpx.TransportError as exc:
            raise ChatAttemptFailed(type(exc).__name__, None) from None
        except SSEError:
            raise ChatAttemptFailed("not an event stream", 200) from None
        if not done:
            raise ChatAttemptFailed("the stream ended before [DONE]", 200)

    def _chunk(self, data: str, result: ChatResult,
               on_delta: Callable[[str], None] | None) -> None:
        try:
            chunk = json.loads(data)
        except ValueError:
            raise ChatAttemptFailed("an event that is not JSON", 200) from None
        if not isinstance(chunk, dict):
            raise ChatAttemptFailed("an event that is not a JSON object", 200)
        if "error" in chunk:
            raise ChatAttemptFailed("an error event in the stream", 200)
        if self.on_chunk is not None:
            self.on_chunk(chunk)
        if chunk.get("usage"):
            result.usage = dict(chunk["usage"])
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or {}
            piece = delta.get("content")
            if isinstance(piece, str) and piece:
                if len(result.text) + len(piece) > MAX_TEXT:
                    raise ChatFailed(f"answer longer than {MAX_TEXT} characters",
                                     status=200, attempts=result.attempts)
                result.text += piece
                if on_delta is not None:
                    on_delta(piece)
            if choice.get("finish_reason"):
                result.finish_reason = choice["finish_reason"]
