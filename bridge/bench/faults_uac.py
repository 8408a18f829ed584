"""The callers of ``voicebridge bench faults``: small asyncio SIP UACs with RTP, and what
their received audio says.

One :class:`UacCall` is one caller on UDP: INVITE with a G.711 µ-law offer (retransmitted
every 500 ms until a response), ACK for the 200, then a 20 ms RTP frame every 20 ms (a
1.5 s warbling tone at each time the plan says, silence between: the emulator's VAD sees
turns and echoes them), and BYE at the end. A BYE or REFER from the bridge is answered
and remembered. Every RTP packet received is kept as (arrival time, RMS of its PCM), which
is all the analysis needs: a frame whose RMS is below :data:`SILENT_RMS` is silence, and a
gap in packets is silence too; "dead air" is the same without the stretches in which the
caller was talking. The agent is a voiced stretch at :data:`AGENT_RMS` or more.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from bridge.codecs.g711 import alaw_decode, ulaw_decode, ulaw_encode

#: RMS (PCM16) below which a received 20 ms frame is silence (about -44 dBFS).
SILENT_RMS = 200.0
#: The callers speak a turn every this many seconds (``bridge.bench.faults.burst_plan``).
TURN_EVERY_S = 4.0
#: RMS a voiced stretch must reach to be the agent (about -27 dBFS): the echo of a caller's
#: turn and the greeting are far louder; the bridge's hold chime (-28 dBFS peaks) and
#: comfort beeps (-24 dBFS) are not the agent, though they do break a silence.
AGENT_RMS = 1500.0
BURST_S = 1.5
FRAME_S = 0.020
_ULAW_SILENCE = b"\xff" * 160
_TABLES = {0: np.frombuffer(ulaw_decode(bytes(range(256))), dtype="<i2").astype(np.float64),
           8: np.frombuffer(alaw_decode(bytes(range(256))), dtype="<i2").astype(np.float64)}


def warble(seconds: float = BURST_S, rate: int = 8000) -> bytes:
    """µ-law: a warbling tone (speech-like energy for the VAD)."""
    n = int(rate * seconds)
    pcm = struct.pack(f"<{n}h", *(int(7000 * math.sin(2 * math.pi * (220 + 80 * math.sin(
        2 * math.pi * 3 * i / rate)) * i / rate)) for i in range(n)))
    return ulaw_encode(pcm)


_BURST = warble()


def frame_rms(payload_type: int, payload: bytes) -> float:
    table = _TABLES.get(payload_type)
    if table is None or not payload:
        return 0.0
    samples = table[np.frombuffer(payload, dtype=np.uint8)]
    return float(np.sqrt(np.mean(samples * samples)))


# ---- SIP text -----------------------------------------------------------------------------

_COMPACT = {"v": "via", "f": "from", "t": "to", "i": "call-id", "m": "contact",
            "l": "content-length", "c": "content-type"}


@dataclass
class SipText:
    first: str
    headers: dict[str, list[str]]
    body: str

    @classmethod
    def parse(cls, data: bytes) -> SipText | None:
        text = data.decode("utf-8", "replace")
        head, _, body = text.partition("\r\n\r\n")
        lines = head.split("\r\n")
        if not lines or not lines[0]:
            return None
        headers: dict[str, list[str]] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep:
                continue
            key = name.strip().lower()
            headers.setdefault(_COMPACT.get(key, key), []).append(value.strip())
        return cls(lines[0], headers, body)

    def one(self, name: str) -> str:
        return (self.headers.get(name) or [""])[0]

    @property
    def status(self) -> int:
        if not self.first.startswith("SIP/2.0 "):
            return 0
        try:
            return int(self.first.split()[1])
        except (IndexError, ValueError):
            return 0

    @property
    def method(self) -> str:
        return "" if self.status else self.first.split(" ", 1)[0]


def caller_ip(index: int) -> str:
    """Each caller its own loopback address (127.0.1.N), as separate phones are: the
    bridge's per-source limits judge one phone, not the whole campaign."""
    return f"127.0.1.{index % 250 + 1}"


def _token() -> str:
    return f"{random.getrandbits(64):016x}"


# ---- one caller ----------------------------------------------------------------------------

@dataclass
class CallOutcome:
    """What one caller saw (times are ``time.monotonic()``)."""

    index: int
    status: int = 0                      # final response to the INVITE (0: none)
    started_at: float = 0.0              # INVITE sent
    answered_at: float | None = None     # 200 received
    ended_at: float = 0.0                # our BYE sent, or the bridge's BYE received
    bridge_bye_at: float | None = None
    bridge_refer_at: float | None = None
    frames: list[tuple[float, float]] = field(default_factory=list)   # (arrival, RMS)
    bursts: list[float] = field(default_factory=list)                 # burst starts sent
    error: str = ""

    @property
    def hung_up_by_bridge(self) -> float | None:
        times = [t for t in (self.bridge_bye_at, self.bridge_refer_at) if t is not None]
        return min(times) if times else None

    def voiced(self, start: float = 0.0, end: float = math.inf,
               level: float = SILENT_RMS) -> list[float]:
        return [at for at, rms in self.frames if start <= at < end and rms >= level]


class _SipProto(asyncio.DatagramProtocol):
    def __init__(self, call: UacCall) -> None:
        self.call = call

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.call.on_sip(data, addr)


class _RtpProto(asyncio.DatagramProtocol):
    def __init__(self, out: CallOutcome) -> None:
        self.out = out

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if len(data) < 12 or data[0] >> 6 != 2:
            return
        pt = data[1] & 0x7F
        if 72 <= pt <= 76:
            return                                   # RTCP
        offset = 12 + 4 * (data[0] & 0x0F)
        if data[0] & 0x10 and len(data) >= offset + 4:
            offset += 4 + 4 * struct.unpack_from("!H", data, offset + 2)[0]
        if data[0] & 0x20 and len(data) > offset:
            data = data[:len(data) - data[-1]]
        self.out.frames.append((time.monotonic(), frame_rms(pt, data[offset:])))


class UacCall:
    """One caller from ``local_ip`` to the bridge at ``127.0.0.1:sip_port`` (see the module
    docstring). ``bursts``: monotonic times at which the caller starts a 1.5 s turn."""

    def __init__(self, index: int, sip_port: int, *, local_ip: str = "127.0.0.2",
                 bursts: Sequence[float] = (), user: str = "agent") -> None:
        self.out = CallOutcome(index)
        self.sip_port, self.local_ip, self.user = sip_port, local_ip, user
        self.burst_times = sorted(bursts)
        self.call_id = f"{_token()}@{local_ip}"
        self.from_tag = _token()[:10]
        self.to_header = f"<sip:{user}@127.0.0.1>"
        self.remote_target = f"sip:{user}@127.0.0.1:{sip_port}"
        self.remote_rtp: tuple[str, int] | None = None
        self._sip: asyncio.DatagramTransport | None = None
        self._rtp: asyncio.DatagramTransport | None = None
        self._responses: dict[str, asyncio.Queue[SipText]] = {}
        self._ack: str | None = None          # sent again for each retransmitted 200
        self.ended = asyncio.Event()

    # -- wire ----------------------------------------------------------------------------

    @property
    def _local(self) -> tuple[str, int]:
        assert self._sip is not None
        return tuple(self._sip.get_extra_info("sockname")[:2])

    def _send(self, text: str) -> None:
        if self._sip is not None and not self._sip.is_closing():
            self._sip.sendto(text.encode(), ("127.0.0.1", self.sip_port))

    def _request(self, method: str, cseq: int, branch: str, body: str = "", *,
                 uri: str | None = None) -> str:
        host, port = self._local
        lines = [f"{method} {uri or self.remote_target} SIP/2.0",
                 f"Via: SIP/2.0/UDP {host}:{port};branch=z9hG4bK{branch};rport",
                 "Max-Forwards: 70",
                 f"From: <sip:caller{self.out.index}@{host}>;tag={self.from_tag}",
                 f"To: {self.to_header}", f"Call-ID: {self.call_id}",
                 f"CSeq: {cseq} {method}",
                 f"Contact: <sip:caller{self.out.index}@{host}:{port}>",
                 "User-Agent: voicebridge-bench-faults"]
        if body:
            lines.append("Content-Type: application/sdp")
        lines.append(f"Content-Length: {len(body.encode())}")
        return "\r\n".join(lines) + "\r\n\r\n" + body

    def _sdp(self, rtp_port: int) -> str:
        return ("v=0\r\n"
                f"o=- {random.getrandbits(31)} 1 IN IP4 {self.local_ip}\r\n"
                "s=-\r\n"
                f"c=IN IP4 {self.local_ip}\r\n"
                "t=0 0\r\n"
                f"m=audio {rtp_port} RTP/AVP 0\r\n"
                "a=rtpmap:0 PCMU/8000\r\na=ptime:20\r\na=sendrecv\r\n")

    def on_sip(self, data: bytes, addr: tuple[str, int]) -> None:
        msg = SipText.parse(data)
        if msg is None:
            return
        if msg.status:
            method = msg.one("cseq").split(" ")[-1].upper()
            if method == "INVITE" and self._ack is not None and 200 <= msg.status < 300:
                self._send(self._ack)
                return
            queue = self._responses.get(method)
            if queue is not None:
                queue.put_nowait(msg)
            return
        method = msg.method
        now = time.monotonic()
        if method == "BYE" and self.out.bridge_bye_at is None:
            self.out.bridge_bye_at = now
        elif method == "REFER" and self.out.bridge_refer_at is None:
            self.out.bridge_refer_at = now
        status = "202 Accepted" if method == "REFER" else "200 OK"
        if method == "ACK":
            return
        reply = [f"SIP/2.0 {status}", *(f"Via: {v}" for v in msg.headers.get("via", [])),
                 f"From: {msg.one('from')}", f"To: {msg.one('to')}",
                 f"Call-ID: {msg.one('call-id')}", f"CSeq: {msg.one('cseq')}",
                 "Content-Length: 0"]
        if self._sip is not None and not self._sip.is_closing():
            self._sip.sendto(("\r\n".join(reply) + "\r\n\r\n").encode(), addr)
        if method == "BYE":
            self.ended.set()

    async def _transact(self, method: str, text: str, limit_s: float) -> SipText | None:
        """Send (retransmitting every 500 ms until any response) and wait for the final."""
        queue: asyncio.Queue[SipText] = asyncio.Queue()
        self._responses[method] = queue
        deadline = time.monotonic() + limit_s
        provisional = False
        self._send(text)
        while time.monotonic() < deadline:
            try:
                msg = await asyncio.wait_for(queue.get(), 0.5)
            except TimeoutError:
                if not provisional:
                    self._send(text)
                continue
            if msg.status >= 200:
                return msg
            provisional = True
        return None

    # -- the call --------------------------------------------------------------------------

    async def run(self, until: float, *, setup_limit_s: float = 10.0) -> CallOutcome:
        """Place the call, stream until ``until`` (monotonic) or the bridge hangs up."""
        loop = asyncio.get_running_loop()
        try:
            self._sip, _ = await loop.create_datagram_endpoint(
                lambda: _SipProto(self), local_addr=(self.local_ip, 0))
            self._rtp, _ = await loop.create_datagram_endpoint(
                lambda: _RtpProto(self.out), local_addr=(self.local_ip, 0))
            await self._place(until, setup_limit_s)
        except OSError as exc:
            self.out.error = f"{type(exc).__name__}: {exc}"
        finally:
            for transport in (self._sip, self._rtp):
                if transport is not None:
                    transport.close()
        return self.out

    async def _place(self, until: float, setup_limit_s: float) -> None:
        assert self._rtp is not None
        rtp_port = self._rtp.get_extra_info("sockname")[1]
        self.out.started_at = time.monotonic()
        branch = _token()
        invite = self._request("INVITE", 1, branch, self._sdp(rtp_port))
        reply = await self._transact("INVITE", invite, setup_limit_s)
        if reply is None:
            self.out.error = "no final response to the INVITE"
            self.out.ended_at = time.monotonic()
            return
        self.out.status = reply.status
        self.to_header = reply.one("to")
        if reply.status >= 300:
            self._send(self._request("ACK", 1, branch))
            self.out.ended_at = time.monotonic()
            return
        self.out.answered_at = time.monotonic()
        contact = reply.one("contact")
        if "<" in contact:
            self.remote_target = contact.split("<", 1)[1].split(">", 1)[0]
        self.remote_rtp = _sdp_media(reply.body)
        self._ack = self._request("ACK", 1, _token(), uri=self.remote_target)
        self._send(self._ack)
        await self._stream(until)
        self.out.ended_at = time.monotonic()
        if self.out.bridge_bye_at is None:
            bye = self._request("BYE", 2, _token(), uri=self.remote_target)
            await self._transact("BYE", bye, 4.0)

    async def _stream(self, until: float) -> None:
        assert self._rtp is not None
        ssrc, seq, ts = random.getrandbits(32), random.getrandbits(16), random.getrandbits(32)
        start = time.monotonic()
        n = 0
        bursts = list(self.burst_times)
        while not self.ended.is_set():
            now = time.monotonic()
            if now >= until:
                return
            while len(bursts) > 1 and bursts[1] <= now:
                bursts.pop(0)
            payload = _ULAW_SILENCE
            if bursts and bursts[0] <= now < bursts[0] + BURST_S:
                if not self.out.bursts or self.out.bursts[-1] != bursts[0]:
                    self.out.bursts.append(bursts[0])
                at = int((now - bursts[0]) * 8000) // 160 * 160
                payload = _BURST[at:at + 160].ljust(160, b"\xff")
            if self.remote_rtp is not None and not self._rtp.is_closing():
                header = struct.pack("!BBHII", 0x80, 0, seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc)
                self._rtp.sendto(header + payload, self.remote_rtp)
            seq, ts, n = seq + 1, ts + 160, n + 1
            delay = start + n * FRAME_S - time.monotonic()
            if delay < -0.2:                 # far behind (a stalled loop): do not burst-send
                start, n = time.monotonic(), 0
                delay = 0.0
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.ended.wait(), max(delay, 0.0))


def _sdp_media(body: str) -> tuple[str, int] | None:
    host, port = "127.0.0.1", 0
    for line in body.splitlines():
        if line.startswith("c=IN IP4 "):
            host = line.split()[-1]
        elif line.startswith("m=audio "):
            with contextlib.suppress(IndexError, ValueError):
                port = int(line.split()[1])
    return (host, port) if port else None


# ---- what the audio says --------------------------------------------------------------------

#: A voiced stretch this long is agent audio; the bridge's comfort beeps are shorter.
AGENT_SPAN_S = 0.4


def voiced_spans(out: CallOutcome, origin: float = 0.0,
                 level: float = SILENT_RMS) -> list[tuple[float, float]]:
    """The voiced stretches of what the caller received, seconds after ``origin``
    (frames less than 60 ms apart joined)."""
    spans: list[list[float]] = []
    for at in out.voiced(level=level):
        if spans and at - spans[-1][1] < 0.06:
            spans[-1][1] = at + FRAME_S
        else:
            spans.append([at, at + FRAME_S])
    return [(round(a - origin, 3), round(b - origin, 3)) for a, b in spans]


def agent_audio(out: CallOutcome, start: float, end: float) -> bool:
    """A stretch of at least :data:`AGENT_SPAN_S` at the agent's level begins in
    [start, end)."""
    return any(start <= a < end and b - a >= AGENT_SPAN_S
               for a, b in voiced_spans(out, level=AGENT_RMS))


def summary(out: CallOutcome, origin: float) -> dict[str, object]:
    """One call for ``--keep``'s JSON: times in seconds after ``origin``."""
    def rel(t: float | None) -> float | None:
        return None if t is None else round(t - origin, 3)

    return {"index": out.index, "status": out.status, "error": out.error,
            "started": rel(out.started_at), "answered": rel(out.answered_at),
            "ended": rel(out.ended_at), "bridge_bye": rel(out.bridge_bye_at),
            "bridge_refer": rel(out.bridge_refer_at), "packets": len(out.frames),
            "turns_sent": [rel(t) for t in out.bursts],
            "voiced": voiced_spans(out, origin)}


def longest_silence(out: CallOutcome, start: float, end: float, *,
                    talking_counts: bool = False) -> float:
    """Seconds of the longest stretch in [start, end) in which the caller received nothing
    voiced. ``talking_counts``: a stretch in which the caller was talking is not silence
    either (their own turn is not dead air)."""
    if end <= start:
        return 0.0
    talk = ([(b, b + BURST_S) for b in out.bursts if b < end and b + BURST_S > start]
            if talking_counts else [])
    busy = sorted([(at, at + FRAME_S) for at in out.voiced(start, end)] + talk)
    longest, last = 0.0, start
    for a, b in busy:
        longest = max(longest, min(a, end) - last)
        last = max(last, b)
    return max(longest, end - last, 0.0)


@dataclass(frozen=True)
class Verdict:
    kind: str                 # "recovered", "fell back", "lost" ("ok"/"failed" for floods)
    silence_s: float          # longest caller-side silence from the fault to the call's end
    answered: bool            # a turn spoken during the fault answered after it
    dead_air_s: float = 0.0   # the same, not counting the caller's own turns


def judge(out: CallOutcome, fault_at: float, fault_end: float, answer_by: float) -> Verdict:
    """Classify a call of an upstream-fault scenario (see ``bridge.bench.faults``)."""
    end = out.ended_at or time.monotonic()
    hung_up = out.hung_up_by_bridge
    if out.answered_at is None:
        return Verdict("lost", 0.0, False)
    # Silence is measured up to the bridge's hang-up, and no later than one turn period
    # after the caller's last turn: the quiet tail after the last answer, while the caller
    # says nothing more, is the end of the scenario, not dead air.
    stop = min(end, hung_up or end, out.bursts[-1] + TURN_EVERY_S if out.bursts else end)
    silence = longest_silence(out, fault_at, stop)
    dead_air = longest_silence(out, fault_at, stop, talking_counts=True)
    heard_again = agent_audio(out, fault_end + 0.5, hung_up or end)
    # A call the bridge gave up on was not answered: what it heard was the announcement.
    answered = hung_up is None and agent_audio(out, fault_end, answer_by)
    if hung_up is not None:
        kind = "fell back"
    elif heard_again:
        kind = "recovered"
    else:
        kind = "lost"
    return Verdict(kind, silence, answered, dead_air)


def judge_plain(out: CallOutcome) -> Verdict:
    """A legitimate call placed during a flood: ok when answered, agent audio was heard and
    the bridge did not hang up on it."""
    if out.answered_at is None:
        return Verdict("failed", 0.0, False)
    end = out.ended_at or time.monotonic()
    silence = longest_silence(out, out.answered_at, end)
    dead_air = longest_silence(out, out.answered_at, end, talking_counts=True)
    ok = out.hung_up_by_bridge is None and agent_audio(out, out.answered_at - 0.1, end)
    return Verdict("ok" if ok else "failed", silence, False, dead_air)


__all__ = ["AGENT_SPAN_S", "BURST_S", "SILENT_RMS", "CallOutcome", "SipText", "UacCall",
           "Verdict", "agent_audio", "judge", "judge_plain", "longest_silence", "summary",
           "voiced_spans", "warble"]
