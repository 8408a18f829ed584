"""A WebRTC caller in Python that behaves like the softphone page.

Used by the tests and by ``voicebridge bench webrtc``: it opens the same data channels as
the page (``dtmf``, ``bye``, ``events``), sends audio from a PCM source paced in real time,
and keeps what it receives (levels and arrival times) for checks and jitter figures.

``light=True`` (the benchmark's peers) makes a peer cheap enough that dozens of them do
not starve on a shared machine: it sends pre-encoded G.711 packets (aiortc only packetizes
them: no encoder call in a thread pool per frame) and counts received RTP packets from the
receiver's packet hook (arrival time and level of the decoded payload, no decoder thread).
"""

from __future__ import annotations

import asyncio
import fractions
import json
import math
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import av
import httpx
import numpy as np
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.rtp import RtpPacket

from bridge.codecs import g711
from bridge.internals import aiortc as internals

if sys.version_info >= (3, 13):  # pragma: no cover - audioop-lts provides the same module
    import audioop
else:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import audioop


class PcmSourceTrack(MediaStreamTrack):
    """Plays ``pcm`` (PCM16 mono at ``rate``) in a loop, one 20 ms frame per period."""

    kind = "audio"

    def __init__(self, pcm: bytes, rate: int = 8000, loop: bool = True,
                 encoded: str = "") -> None:
        super().__init__()
        #: "pcmu"/"pcma": return encoded ``av.Packet``s (8 kHz only) instead of frames.
        self.encoded = encoded if rate == 8000 else ""
        self.sent = 0
        self.rate = rate
        self.samples = rate // 50
        self.pcm = pcm or bytes(2 * self.samples)
        self.loop_audio = loop
        self._offset = 0
        self._pts = 0
        self._start: float | None = None
        self._base = fractions.Fraction(1, rate)

    async def recv(self) -> av.AudioFrame | av.Packet[Any]:
        if self.readyState != "live":
            raise MediaStreamError
        loop = asyncio.get_running_loop()
        if self._start is None:
            self._start = loop.time()
        due = self._start + self._pts / self.rate
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        size = 2 * self.samples
        chunk = self.pcm[self._offset:self._offset + size]
        self._offset += size
        if self._offset >= len(self.pcm):
            self._offset = 0
            if not self.loop_audio:
                self.pcm = bytes(size)
        chunk = chunk.ljust(size, b"\0")
        self.sent += 1
        if self.encoded:
            packet = av.Packet(g711.encode(self.encoded, chunk))
            packet.pts = self._pts
            packet.time_base = self._base
            self._pts += self.samples
            return packet
        frame = av.AudioFrame(format="s16", layout="mono", samples=self.samples)
        frame.planes[0].update(chunk)
        frame.sample_rate = self.rate
        frame.time_base = self._base
        frame.pts = self._pts
        self._pts += self.samples
        return frame


def frame_dbfs(frame: av.AudioFrame) -> float:
    samples = frame.to_ndarray().astype(np.float64)
    if samples.size == 0:
        return -120.0
    rms = math.sqrt(float(np.mean(samples * samples)))
    return 20 * math.log10(rms / 32768) if rms > 0 else -120.0


@dataclass
class Received:
    """What the caller heard: per-frame level and arrival time (loop clock)."""

    levels: list[float] = field(default_factory=list)
    arrivals: list[float] = field(default_factory=list)
    samples: int = 0

    def loud_frames(self, threshold_dbfs: float = -40.0) -> int:
        return sum(1 for level in self.levels if level > threshold_dbfs)


class WebRtcCaller:
    """One aiortc peer calling ``POST /webrtc/offer`` on a running bridge."""

    def __init__(self, base_url: str, pcm: bytes = b"", rate: int = 8000,
                 codecs: tuple[str, ...] = (), called: str = "", *, light: bool = False,
                 token: str = "") -> None:
        """``token``: sent as ``Authorization: Bearer`` with the offer (the operator's
        ``[http] token`` or a call token), unless empty (a public softphone)."""
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.pc = RTCPeerConnection()
        self.light = light
        self.source = PcmSourceTrack(pcm, rate)
        self.received = Received()
        self.events: list[dict[str, Any]] = []
        self.on_event: Callable[[dict[str, Any]], None] | None = None
        self.dtmf_in: list[str] = []
        self.call_id = ""
        self.codec = ""
        self.bye = asyncio.Event()
        self.called = called
        self._codecs = codecs
        self._reader: asyncio.Task[None] | None = None
        self.dtmf = self.pc.createDataChannel("dtmf")
        self.bye_channel = self.pc.createDataChannel("bye")
        self.events_channel = self.pc.createDataChannel("events")
        self.events_channel.on("message", self._on_event)
        self.dtmf.on("message", self.dtmf_in.append)
        self.bye_channel.on("message", lambda _m: self.bye.set())
        self.pc.on("track", self._on_track)

    def _on_event(self, message: Any) -> None:
        event = json.loads(message)
        self.events.append(event)
        if self.on_event is not None:
            self.on_event(event)

    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind == "audio":
            self._reader = asyncio.ensure_future(self._read(track))

    async def _read(self, track: MediaStreamTrack) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            if isinstance(frame, av.AudioFrame):
                self.received.levels.append(frame_dbfs(frame))
                self.received.arrivals.append(loop.time())
                self.received.samples += frame.samples

    async def _count_packet(self, packet: RtpPacket, arrival_time_ms: int) -> None:
        loop = asyncio.get_running_loop()
        payload = packet.payload
        if payload:
            rms = audioop.rms(g711.ulaw_decode(payload), 2)
            self.received.levels.append(20 * math.log10(rms / 32768) if rms > 0 else -120.0)
            self.received.arrivals.append(loop.time())
            self.received.samples += len(payload)

    async def make_offer(self) -> str:
        """Gather and return a complete offer (no trickle ICE), as the page does."""
        transceiver = self.pc.addTransceiver(self.source, direction="sendrecv")
        if self.light:
            # Only G.711 (sent pre-encoded), and packets counted at the receiver's hook.
            from bridge.webrtc.leg import _preferred_codecs  # noqa: PLC0415

            transceiver.setCodecPreferences(_preferred_codecs(("pcmu",)))
            self.source.encoded = "pcmu"
            internals.hook_receiver(transceiver.receiver, self._count_packet)
        elif self._codecs:
            from bridge.webrtc.leg import _preferred_codecs  # noqa: PLC0415

            transceiver.setCodecPreferences(_preferred_codecs(self._codecs))
        await self.pc.setLocalDescription(await self.pc.createOffer())
        return str(self.pc.localDescription.sdp)

    async def accept_answer(self, sdp: str) -> None:
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="answer"))

    async def call(self, client: httpx.AsyncClient | None = None) -> dict[str, Any]:
        """Offer to ``POST /webrtc/offer`` and apply the answer."""
        body = {"sdp": await self.make_offer(), "type": "offer", "called": self.called}
        own = client is None
        client = client or httpx.AsyncClient()
        try:
            headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
            response = await client.post(f"{self.base_url}/webrtc/offer", json=body,
                                         headers=headers, timeout=30)
        finally:
            if own:
                await client.aclose()
        response.raise_for_status()
        answer: dict[str, Any] = response.json()
        self.call_id = str(answer.get("call_id", ""))
        self.codec = str(answer.get("codec", ""))
        await self.accept_answer(answer["sdp"])
        return answer

    def send_dtmf(self, digit: str) -> None:
        self.dtmf.send(digit)

    async def hang_up(self) -> None:
        if self.bye_channel.readyState == "open":
            self.bye_channel.send("bye")
            await asyncio.sleep(0.05)
        await self.close()

    async def close(self) -> None:
        self.source.stop()
        await self.pc.close()     # ends the remote track: the reader returns by itself
        if self._reader is not None:
            await asyncio.wait([self._reader], timeout=2)
            self._reader.cancel()
