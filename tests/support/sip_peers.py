"""SIP peers for the tests: Alice, a minimal sans-I/O UAC written the way RFC 3665's Alice
sends; Bob's UAS core on a virtual clock (``UasHarness``); and, on real loopback sockets, a
UDP peer, an ``on_call`` that records each leg with a sink, and a caller's SDP offer.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import cast

from bridge.call.leg import LegSink
from bridge.sip.message import Request, Response, parse_message, parse_response
from bridge.sip.sdp import answer_offer
from bridge.sip.service import SipLeg
from bridge.sip.settings import SipSettings
from bridge.sip.ua import Event, IncomingCall, UserAgent

# ------------------------------------------------------------------------------ in memory

ALICE = ("192.0.2.101", 5060)
BOB = ("192.0.2.200", 5060)

ALICE_SDP = (b"v=0\r\n"
             b"o=alice 2890844526 2890844526 IN IP4 client.atlanta.example.com\r\n"
             b"s=-\r\n"
             b"c=IN IP4 192.0.2.101\r\n"
             b"t=0 0\r\n"
             b"m=audio 49172 RTP/AVP 0\r\n"
             b"a=rtpmap:0 PCMU/8000\r\n")


class CountingIds:
    """Deterministic tags and branches, so that whole messages can be compared."""

    def __init__(self) -> None:
        self._n = itertools.count(1)

    def token(self) -> str:
        return f"t{next(self._n)}"


@dataclass
class Uac:
    """Alice: a minimal UAC for one call."""

    call_id: str = "3848276298220188511@atlanta.example.com"
    from_tag: str = "9fxced76sl"
    cseq: int = 1
    branches: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    invite_branch: str = ""
    remote_tag: str | None = None
    remote_target: str = "sip:bob@biloxi.example.com"
    route: list[str] = field(default_factory=list)
    rport: bool = False

    def _via(self) -> tuple[str, str]:
        branch = f"z9hG4bK74bf{next(self.branches)}"
        rport = ";rport" if self.rport else ""
        return f"SIP/2.0/UDP {ALICE[0]}:{ALICE[1]};branch={branch}{rport}", branch

    def _to(self) -> str:
        to = "Bob <sip:bob@biloxi.example.com>"
        return to + (f";tag={self.remote_tag}" if self.remote_tag else "")

    def _request(self, method: str, uri: str, via: str, cseq: int, body: bytes = b"",
                 extra: tuple[str, ...] = ()) -> bytes:
        lines = [f"{method} {uri} SIP/2.0", f"Via: {via}", "Max-Forwards: 70",
                 f"To: {self._to()}",
                 f"From: Alice <sip:alice@atlanta.example.com>;tag={self.from_tag}",
                 f"Call-ID: {self.call_id}", f"CSeq: {cseq} {method}",
                 "Contact: <sip:alice@client.atlanta.example.com>", *extra]
        if body:
            lines.append("Content-Type: application/sdp")
        lines.append(f"Content-Length: {len(body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + body

    def invite(self, sdp: bytes | None = ALICE_SDP, extra: tuple[str, ...] = ()) -> bytes:
        via, self.invite_branch = self._via()
        self.invite_via = via
        return self._request("INVITE", "sip:bob@biloxi.example.com", via, self.cseq,
                             sdp or b"", extra)

    def cancel(self) -> bytes:
        return self._request("CANCEL", "sip:bob@biloxi.example.com", self.invite_via,
                             self.cseq)

    def learn(self, response: Response) -> None:
        """Take the dialog state from a 2xx (RFC 3261 §12.1.2)."""
        self.remote_tag = response.to.tag
        if response.contact:
            self.remote_target = str(response.contact[0].uri)
        self.route = [str(rr) for rr in reversed(response.record_route)]

    def ack(self, response: Response, body: bytes = b"") -> bytes:
        if response.status >= 300:
            # §17.1.1.3: the ACK for a non-2xx goes in the INVITE's transaction.
            self.remote_tag = response.to.tag
            return self._request("ACK", "sip:bob@biloxi.example.com", self.invite_via,
                                 self.cseq)
        self.learn(response)
        via, _ = self._via()
        return self._request("ACK", self.remote_target, via, self.cseq, body,
                             tuple(f"Route: {r}" for r in self.route))

    def in_dialog(self, method: str, body: bytes = b"", extra: tuple[str, ...] = ()) -> bytes:
        self.cseq += 1
        via, _ = self._via()
        return self._request(method, self.remote_target, via, self.cseq, body,
                             tuple(f"Route: {r}" for r in self.route) + extra)


def respond(request: Request, status: int, reason: str, *, to_tag: str | None = None) -> bytes:
    """What Alice answers to a request from Bob (BYE, REFER, NOTIFY...)."""
    to = request.headers.get("To") or ""
    if to_tag and request.to.tag is None:
        to += f";tag={to_tag}"
    lines = [f"SIP/2.0 {status} {reason}"]
    lines += [f"Via: {v}" for v in request.headers.get_lines("Via")]
    lines += [f"From: {request.headers.get('From')}", f"To: {to}",
              f"Call-ID: {request.call_id}", f"CSeq: {request.cseq}", "Content-Length: 0"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


class UasHarness:
    """Bob's UAS core on a virtual clock, with Alice's datagrams going in and out."""

    def __init__(self, **config: object) -> None:
        self.now = 0.0
        self.ua = UserAgent(SipSettings(user_agent="voicebridge/test",
                                        **config),  # type: ignore[arg-type]
                            host=BOB[0], port=BOB[1], ids=CountingIds())
        self.log: list[tuple[float, bytes]] = []

    def send(self, data: bytes, addr: tuple[str, int] = ALICE) -> list[bytes]:
        self.ua.receive(data, addr, "udp", self.now)
        return self.out()

    def out(self) -> list[bytes]:
        sent = [data for data, _addr in self.ua.datagrams_to_send()]
        self.log += [(self.now, d) for d in sent]
        return sent

    def events(self) -> list[Event]:
        return self.ua.events()

    def advance_to(self, t: float) -> list[tuple[float, bytes]]:
        """Fire every timer up to ``t``; return what was sent, with when."""
        sent: list[tuple[float, bytes]] = []
        while True:
            deadline = self.ua.get_timer()
            if deadline is None or deadline > t:
                break
            self.now = deadline
            self.ua.handle_timer(deadline)
            sent += [(deadline, d) for d in self.out()]
        self.now = t
        return sent

    def incoming(self) -> IncomingCall:
        (call,) = [e for e in self.events() if isinstance(e, IncomingCall)]
        return call

    def answer(self, call: IncomingCall) -> Response:
        assert call.offer is not None
        sdp, media = answer_offer(call.offer, address=BOB[0], port=3456,
                                  session_id="1111", session_version=1)
        self.ua.answer(call.call, sdp, self.now, media)
        (data,) = self.out()
        return parse_response(data)


def statuses(datagrams: list[bytes]) -> list[int]:
    return [parse_response(d).status for d in datagrams]


# ---------------------------------------------------------------------- loopback sockets

class SipSink(LegSink):
    """The SIP service tests' sink: audio frames, digits, the last hang-up reason."""

    def __init__(self) -> None:
        self.audio: list[bytes] = []
        self.dtmf: list[str] = []
        self.hangup = asyncio.Event()
        self.reason = ""

    def on_leg_audio(self, pcm: bytes) -> None:
        self.audio.append(pcm)

    def on_leg_dtmf(self, digit: str) -> None:
        self.dtmf.append(digit)

    def on_leg_hangup(self, reason: str) -> None:
        self.reason = reason
        self.hangup.set()


class Recorder:
    """An ``on_call`` that records the leg and runs ``body`` for the call's duration."""

    def __init__(self, body: Callable[[SipLeg, SipSink], Awaitable[None]]) -> None:
        self.body = body
        self.legs: list[SipLeg] = []
        self.sinks: list[SipSink] = []
        self.started = asyncio.Event()
        self.finished = asyncio.Event()

    async def __call__(self, leg: SipLeg) -> None:
        sink = SipSink()
        leg.attach(sink)
        self.legs.append(leg)
        self.sinks.append(sink)
        self.started.set()
        try:
            await self.body(leg, sink)
        finally:
            self.finished.set()


class UdpPeer(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.queue: asyncio.Queue[bytes] = asyncio.Queue()
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (On 3.11 the selector datagram transport is not a DatagramTransport subclass.)
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.queue.put_nowait(data)

    async def recv(self, limit: float = 10.0) -> bytes:
        return await asyncio.wait_for(self.queue.get(), limit)

    async def recv_sip(self, limit: float = 10.0) -> Response:
        while True:
            message = parse_message(await self.recv(limit))
            if isinstance(message, Response):
                return message

    @property
    def port(self) -> int:
        assert self.transport is not None
        return int(self.transport.get_extra_info("sockname")[1])


async def udp_peer(host: str = "127.0.0.1") -> UdpPeer:
    """A ``UdpPeer`` on a free port of ``host``."""
    loop = asyncio.get_running_loop()
    _, peer = await loop.create_datagram_endpoint(UdpPeer, local_addr=(host, 0))
    return peer


def caller_sdp(rtp_port: int) -> bytes:
    return (b"v=0\r\no=alice 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
            + f"m=audio {rtp_port} RTP/AVP 0 101\r\n".encode()
            + b"a=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\n")
