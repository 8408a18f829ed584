"""A Realtime transcription session: caller audio in, the words of it out, no agent.

Theory of operation
-------------------
The voicemail (``bridge.call.voicemail``) streams a caller's message into one of these.
It is the same WebSocket as a conversation's, opened differently per dialect:

- GA (``/openai/v1/realtime``): the URL names the transcription deployment as its
  ``model``; the session becomes a transcription session with ``session.update`` of
  ``session.type = "transcription"`` (``audio.input.transcription.model`` is the
  deployment name again), answered by ``session.updated``;
- preview (``/openai/realtime?api-version=...``): the URL carries ``intent=transcription``
  instead of a deployment, and the session is configured by
  ``transcription_session.update`` (flat: ``input_audio_format``,
  ``input_audio_transcription``, ``turn_detection``), answered by
  ``transcription_session.updated``.

Turn detection is off: the caller's audio goes in with ``input_audio_buffer.append`` as it
arrives and the message is committed once (``input_audio_buffer.commit``) when it ends.
The server answers the committed item with
``conversation.item.input_audio_transcription.delta`` events and one ``...completed`` (or
``...failed``); ``finish`` returns the completed transcript. The ``openai`` package's
models accept every client event sent here in both dialects, with one difference: the
preview model lists the transcription models by name (``gpt-4o-transcribe``,
``gpt-4o-mini-transcribe``, ``whisper-1``), while the GA one takes any string, as an Azure
deployment name must be.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import logging
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import websockets
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from bridge.errors import RealtimeUnavailable
from bridge.internals.websockets import FrameWriter, Masks
from bridge.realtime.auth import TokenProvider, handshake_headers
from bridge.realtime.config import RealtimeTarget

__all__ = ["TranscriptionClient", "TranscriptionFailed", "transcription_url",
           "transcription_update"]

Logger = logging.Logger | logging.LoggerAdapter[Any]
#: Bound on the audio one session buffers before a commit (base64 of 24 kHz PCM16).
MAX_MESSAGE = 16 * 1024 * 1024
_PREVIEW_FORMATS = {"pcm16": "pcm16", "pcmu": "g711_ulaw", "pcma": "g711_alaw"}
_GA_FORMATS = {"pcm16": {"type": "audio/pcm", "rate": 24000}, "pcmu": {"type": "audio/pcmu"},
               "pcma": {"type": "audio/pcma"}}


class TranscriptionFailed(RealtimeUnavailable):
    """The transcription session could not be opened, or gave no transcript."""


def transcription_url(target: RealtimeTarget, model: str) -> str:
    """The URL of a transcription session on ``target`` (see the module docstring)."""
    parts = urlsplit(target.url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True)
             if k not in ("model", "deployment", "intent")]
    if target.dialect == "preview":
        query.append(("intent", "transcription"))
    else:
        query.append(("model", model))
    return urlunsplit(parts._replace(query=urlencode(query)))


def transcription_update(dialect: str, model: str, language: str | None,
                         audio_format: str) -> dict[str, Any]:
    """The client event that makes the session a transcription session."""
    transcription: dict[str, Any] = {"model": model}
    if language:
        transcription["language"] = language
    if dialect == "preview":
        return {"type": "transcription_session.update", "session": {
            "input_audio_format": _PREVIEW_FORMATS[audio_format],
            "input_audio_transcription": transcription,
            "turn_detection": None}}
    return {"type": "session.update", "session": {
        "type": "transcription",
        "audio": {"input": {"format": _GA_FORMATS[audio_format],
                            "transcription": transcription, "turn_detection": None}}}}


class TranscriptionClient:
    """One transcription session. ``open``, ``append`` as audio comes, ``finish``."""

    def __init__(self, target: RealtimeTarget, model: str, *, language: str | None = None,
                 audio_format: str = "pcm16", log: Logger,
                 on_delta: Callable[[str], None] | None = None,
                 token_provider: TokenProvider | None = None,
                 open_timeout_s: float = 10.0) -> None:
        self.target = target
        self.model = model
        self.language = language
        self.audio_format = audio_format
        self._log = log
        self._on_delta = on_delta
        self._tokens = token_provider
        self._open_timeout_s = open_timeout_s
        self._ws: ClientConnection | None = None
        self._writer: FrameWriter | None = None
        self._ids = itertools.count(1)
        self.deltas: list[str] = []
        self.appended_bytes = 0

    def _send(self, event: dict[str, Any]) -> None:
        event["event_id"] = f"vm_{next(self._ids)}"
        if self._writer is not None:
            # one text frame, never awaited, as the conversation client writes
            self._writer.send(json.dumps(event, separators=(",", ":")).encode())

    async def open(self) -> None:
        """Connect and configure; raises ``TranscriptionFailed``."""
        headers = await handshake_headers(self.target, self._tokens)
        url = transcription_url(self.target, self.model)
        try:
            async with asyncio.timeout(self._open_timeout_s):
                self._ws = await websockets.connect(
                    url, additional_headers=headers, compression=None, max_size=MAX_MESSAGE,
                    open_timeout=self._open_timeout_s, close_timeout=2.0)
                self._writer = FrameWriter(self._ws, Masks())
                self._send(transcription_update(self.target.dialect, self.model,
                                                self.language, self.audio_format))
                await self._until_updated()
        except (OSError, TimeoutError, websockets.InvalidHandshake, ConnectionClosed) as exc:
            await self.close()
            raise TranscriptionFailed(f"no transcription session: {type(exc).__name__}"
                                      ) from None

    async def _until_updated(self) -> None:
        assert self._ws is not None
        wanted = ("session.updated" if self.target.dialect == "ga"
                  else "transcription_session.updated")
        while True:
            event = json.loads(await self._ws.recv())
            if event.get("type") == wanted:
                return
            if event.get("type") == "error":
                error = event.get("error") or {}
                raise TranscriptionFailed(
                    f"transcription session refused: {error.get('code')}: "
                    f"{str(error.get('message'))[:200]}")

    def append(self, audio: bytes) -> None:
        """Append caller audio (``audio_format``; 24 kHz for pcm16). Never blocks."""
        if self._ws is None or not audio:
            return
        self.appended_bytes += len(audio)
        self._send({"type": "input_audio_buffer.append",
                    "audio": base64.b64encode(audio).decode()})

    async def finish(self, timeout_s: float = 30.0) -> str:
        """Commit what was appended and return its transcript (deltas go to ``on_delta``
        as they come); raises ``TranscriptionFailed``."""
        if self._ws is None:
            raise TranscriptionFailed("the transcription session is not open")
        self._send({"type": "input_audio_buffer.commit"})
        try:
            async with asyncio.timeout(timeout_s):
                return await self._transcript()
        except (TimeoutError, ConnectionClosed) as exc:
            raise TranscriptionFailed(f"no transcript: {type(exc).__name__}") from None

    async def _transcript(self) -> str:
        assert self._ws is not None
        while True:
            event = json.loads(await self._ws.recv())
            kind = event.get("type")
            if kind == "conversation.item.input_audio_transcription.delta":
                delta = str(event.get("delta", ""))
                self.deltas.append(delta)
                if self._on_delta is not None:
                    self._on_delta(delta)
            elif kind == "conversation.item.input_audio_transcription.completed":
                return str(event.get("transcript", ""))
            elif kind in ("conversation.item.input_audio_transcription.failed", "error"):
                error = event.get("error") or {}
                raise TranscriptionFailed(f"transcription failed: {error.get('code')}")

    async def close(self) -> None:
        ws, self._ws = self._ws, None
        self._writer = None
        if ws is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2.0):
                    await ws.close(1000)
