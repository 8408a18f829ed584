"""A raw websockets client for the emulator's tests: it speaks JSON events, keeps every
event it received, and knows the handshake paths of both dialects."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

GA_PATH = "/openai/v1/realtime?model=gpt-realtime"
OPENAI_PATH = "/v1/realtime?model=gpt-realtime"
PREVIEW_PATH = "/openai/realtime?api-version=2025-04-01-preview&deployment=gpt-realtime"



class RawClient:
    """A bare websockets client speaking JSON events; keeps every event it received."""

    def __init__(self, ws: ClientConnection, dialect: str = "ga") -> None:
        self.ws = ws
        self.dialect = dialect
        self.events: list[dict[str, Any]] = []
        self._n = 0

    @classmethod
    async def open(cls, url: str, path: str = GA_PATH, **kwargs: Any) -> RawClient:
        # max_queue=None: a test that stops reading mid-response must still be able to
        # close (a full queue would stop the client reading the server's close frame).
        kwargs.setdefault("max_queue", None)
        ws = await connect(url + path, compression=None, **kwargs)
        return cls(ws, "preview" if path.startswith("/openai/realtime?") else "ga")

    async def close(self) -> None:
        await self.ws.close()

    async def send(self, event: dict[str, Any]) -> str:
        self._n += 1
        event_id = event.setdefault("event_id", f"evt_client_{self._n}")
        await self.ws.send(json.dumps(event))
        return str(event_id)

    async def send_audio(self, pcm: bytes, bytes_per_ms: int = 48, chunk_ms: int = 20) -> None:
        """Append ``pcm`` in ``chunk_ms`` appends, as fast as the socket takes them."""
        step = bytes_per_ms * chunk_ms
        for off in range(0, len(pcm), step):
            await self.ws.send(json.dumps({
                "type": "input_audio_buffer.append",
                "audio": base64.b64encode(pcm[off:off + step]).decode("ascii")}))

    async def recv(self, within: float = 5.0) -> dict[str, Any]:
        async with asyncio.timeout(within):
            raw = await self.ws.recv()
        assert isinstance(raw, str)
        event: dict[str, Any] = json.loads(raw)
        self.events.append(event)
        return event

    async def read_until(self, kind: str, within: float = 5.0) -> dict[str, Any]:
        """Read events until one of ``kind`` arrives; return it."""
        async with asyncio.timeout(within):
            while True:
                event = await self.recv(within)
                if event["type"] == kind:
                    return event

    async def error(self, within: float = 5.0) -> dict[str, Any]:
        return (await self.read_until("error", within))["error"]  # type: ignore[no-any-return]

    async def configure(self, session: dict[str, Any]) -> dict[str, Any]:
        if self.dialect == "ga":
            session = {"type": "realtime", **session}
        await self.send({"type": "session.update", "session": session})
        return await self.read_until("session.updated")

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == kind]


def vad(**overrides: Any) -> dict[str, Any]:
    """A GA ``audio.input.turn_detection`` (server_vad) session fragment."""
    td = {"type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 0,
          "silence_duration_ms": 300, **overrides}
    return {"audio": {"input": {"turn_detection": td}}}
