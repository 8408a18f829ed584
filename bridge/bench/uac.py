"""A small SIP caller in Python for benches and tests: plain RTP or SRTP with SDES keys.

SIPp streams only plain RTP, so the SRTP bench and the SRTP tests call through this
instead: INVITE over UDP with an offer (``RTP/SAVP`` and one ``a=crypto`` line of ours when
``suite`` is given), ACK the 200, read the bridge's key from its answer, then send one
µ-law packet per call every 20 ms (protected with our key) and unprotect what comes back
with the bridge's. Answers 200 to the bridge's BYE. Everything on real loopback sockets.

For a bench the same caller runs plain and SRTP calls, so the two CPU figures differ only
by SRTP.
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
import struct
import time
from dataclasses import dataclass, field

from bridge.rtp.srtp import SrtpContext
from bridge.sip.message import Request, Response, parse_message
from bridge.sip.sdes import format_crypto, parse_crypto
from bridge.sip.sdp import parse_sdp

_N = itertools.count(1)


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, owner: SipCaller | CallMedia) -> None:
        self.owner = owner
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.owner.received(data, addr)


@dataclass
class CallMedia:
    """One call's RTP socket and keys, and what it heard."""

    call_id: str
    local_tag: str
    suite: str | None
    local_key: bytes
    remote: tuple[str, int] = ("127.0.0.1", 0)
    remote_tag: str = ""
    srtp: SrtpContext | None = None
    transport: asyncio.DatagramTransport | None = None
    ssrc: int = field(default_factory=lambda: secrets.randbits(32))
    seq: int = field(default_factory=lambda: secrets.randbits(15))
    #: Packets that unprotected (or plain ones), and those that did not.
    packets: int = 0
    refused: int = 0
    sent: int = 0
    #: The payloads heard, in order (kept only when asked).
    heard: list[bytes] | None = None
    ended: bool = False
    cseq: int = 1

    @property
    def port(self) -> int:
        assert self.transport is not None
        return int(self.transport.get_extra_info("sockname")[1])

    def received(self, data: bytes, addr: tuple[str, int]) -> None:
        if self.srtp is not None:
            plain = self.srtp.unprotect(data)
            if plain is None:
                self.refused += 1
                return
            data = plain
        self.packets += 1
        if self.heard is not None and len(data) > 12:
            self.heard.append(data[12:])

    def packet(self, payload: bytes) -> bytes:
        """The next RTP packet of ours, protected when the call is SRTP."""
        self.seq = (self.seq + 1) & 0xFFFF
        rtp = struct.pack("!BBHII", 0x80, 0, self.seq, (self.seq * 160) & 0xFFFFFFFF,
                          self.ssrc) + payload
        return rtp if self.srtp is None else self.srtp.protect(rtp)

    def send(self, payload: bytes) -> None:
        if self.transport is not None and self.remote[1] and not self.ended:
            self.transport.sendto(self.packet(payload), self.remote)
            self.sent += 1

    def send_raw(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.sendto(data, self.remote)

    def offer(self) -> bytes:
        proto = "RTP/AVP" if self.suite is None else "RTP/SAVP"
        lines = ["v=0", "o=uac 1 1 IN IP4 127.0.0.1", "s=-", "c=IN IP4 127.0.0.1", "t=0 0",
                 f"m=audio {self.port} {proto} 0 101", "a=rtpmap:0 PCMU/8000",
                 "a=rtpmap:101 telephone-event/8000", "a=ptime:20"]
        if self.suite is not None:
            lines.append("a=crypto:" + format_crypto(1, self.suite, self.local_key))
        return ("\r\n".join(lines) + "\r\n").encode()

    def answered(self, body: bytes) -> None:
        sdp = parse_sdp(body)
        stream = next(m for m in sdp.media if m.port)
        conn = stream.connection or sdp.connection
        assert conn is not None
        self.remote = (conn.address, stream.port)
        if self.suite is not None:
            theirs = parse_crypto(next(v for v in stream.attr("crypto") if v))
            self.srtp = SrtpContext(theirs.suite, self.local_key, theirs.key_salt)

    def close(self) -> None:
        self.ended = True
        if self.transport is not None:
            self.transport.close()

    def __repr__(self) -> str:
        return f"CallMedia({self.call_id}, {self.suite or 'plain'})"


class SipCaller:
    """SIP over one UDP socket for many calls (see the module doc)."""

    def __init__(self, bridge: tuple[str, int]) -> None:
        self.bridge = bridge
        self._udp: _Udp | None = None
        self._waiting: dict[tuple[str, str], asyncio.Queue[Response]] = {}
        self.calls: dict[str, CallMedia] = {}

    async def open(self) -> SipCaller:
        loop = asyncio.get_running_loop()
        _, self._udp = await loop.create_datagram_endpoint(
            lambda: _Udp(self), local_addr=("127.0.0.1", 0))
        return self

    @property
    def port(self) -> int:
        assert self._udp is not None and self._udp.transport is not None
        return int(self._udp.transport.get_extra_info("sockname")[1])

    def close(self) -> None:
        for call in self.calls.values():
            call.close()
        if self._udp is not None and self._udp.transport is not None:
            self._udp.transport.close()

    def received(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            message = parse_message(data)
        except Exception:               # a test peer: ignore what it cannot read
            return
        if isinstance(message, Response):
            queue = self._waiting.get((message.call_id, message.cseq.method))
            if queue is not None:
                queue.put_nowait(message)
        elif isinstance(message, Request) and message.method == "BYE":
            call = self.calls.get(message.call_id)
            if call is not None:
                call.ended = True
            self._send(_response_to(data.decode(errors="replace"), 200, "OK"))

    def _send(self, text: str, body: bytes = b"") -> None:
        assert self._udp is not None and self._udp.transport is not None
        self._udp.transport.sendto(text.encode() + body, self.bridge)

    def _request(self, method: str, call: CallMedia, cseq: int, user: str, *,
                 body: bytes = b"", extra: tuple[str, ...] = (), branch: str = "") -> str:
        host, port = self.bridge
        branch = branch or f"z9hG4bKuac{next(_N)}"
        to = f"<sip:{user}@{host}:{port}>" + (f";tag={call.remote_tag}" if call.remote_tag
                                               else "")
        lines = [f"{method} sip:{user}@{host}:{port} SIP/2.0",
                 f"Via: SIP/2.0/UDP 127.0.0.1:{self.port};branch={branch};rport",
                 "Max-Forwards: 70", f"From: <sip:uac@127.0.0.1>;tag={call.local_tag}",
                 f"To: {to}", f"Call-ID: {call.call_id}", f"CSeq: {cseq} {method}",
                 f"Contact: <sip:uac@127.0.0.1:{self.port}>", *extra]
        if body:
            lines.append("Content-Type: application/sdp")
        lines.append(f"Content-Length: {len(body)}")
        return "\r\n".join(lines) + "\r\n\r\n"

    async def invite(self, user: str = "echo", *, suite: str | None = None,
                     offer: bytes | None = None, keep_audio: bool = False,
                     limit_s: float = 20.0) -> tuple[int, CallMedia]:
        """Place a call: the final status and the call (live when 200). ``offer`` replaces
        the offer the call would make."""
        loop = asyncio.get_running_loop()
        call = CallMedia(f"uac-{next(_N)}-{secrets.token_hex(4)}@127.0.0.1",
                         secrets.token_hex(4), suite, secrets.token_bytes(30),
                         heard=[] if keep_audio else None)
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _Udp(call), local_addr=("127.0.0.1", 0))
        call.transport = transport
        self.calls[call.call_id] = call
        queue: asyncio.Queue[Response] = asyncio.Queue()
        self._waiting[(call.call_id, "INVITE")] = queue
        body = offer if offer is not None else call.offer()
        branch = f"z9hG4bKuac{next(_N)}"
        self._send(self._request("INVITE", call, 1, user, body=body, branch=branch), body)
        try:
            async with asyncio.timeout(limit_s):
                while (response := await queue.get()).status < 200:
                    pass
        finally:
            del self._waiting[(call.call_id, "INVITE")]
        call.remote_tag = response.to.tag or ""
        # The ACK of a failure belongs to the INVITE's transaction: its branch (§17.1.1.3).
        self._send(self._request("ACK", call, 1, user,
                                 branch=branch if response.status >= 300 else ""))
        if response.status >= 300:
            call.close()
            return response.status, call
        call.answered(response.body)
        return response.status, call

    async def bye(self, call: CallMedia, user: str = "echo", limit_s: float = 10.0) -> int:
        if call.ended:
            call.close()
            return 0
        queue: asyncio.Queue[Response] = asyncio.Queue()
        self._waiting[(call.call_id, "BYE")] = queue
        call.cseq += 1
        self._send(self._request("BYE", call, call.cseq, user))
        try:
            async with asyncio.timeout(limit_s):
                status = (await queue.get()).status
        except TimeoutError:
            status = 0
        finally:
            del self._waiting[(call.call_id, "BYE")]
            call.close()
        return status


    async def reinvite(self, call: CallMedia, user: str = "echo", *,
                       suite: str | None = None, limit_s: float = 20.0) -> int:
        """Offer again in the dialog, with a new key of ours (in ``suite``, default the
        call's): the final status; on 200 the call uses the keys of the new answer."""
        call.cseq += 1
        queue: asyncio.Queue[Response] = asyncio.Queue()
        self._waiting[(call.call_id, "INVITE")] = queue
        old = (call.suite, call.local_key)
        call.suite, call.local_key = suite or call.suite, secrets.token_bytes(30)
        body = call.offer()
        branch = f"z9hG4bKuac{next(_N)}"
        self._send(self._request("INVITE", call, call.cseq, user, body=body, branch=branch),
                   body)
        try:
            async with asyncio.timeout(limit_s):
                while (response := await queue.get()).status < 200:
                    pass
        finally:
            del self._waiting[(call.call_id, "INVITE")]
        self._send(self._request("ACK", call, call.cseq, user,
                                 branch=branch if response.status >= 300 else ""))
        if response.status == 200:
            call.answered(response.body)
        else:
            call.suite, call.local_key = old
        return response.status


def _response_to(request: str, status: int, reason: str) -> str:
    head = request.split("\r\n\r\n", 1)[0].split("\r\n")
    keep = [line for line in head[1:] if line.split(":", 1)[0].strip().lower() in (
        "via", "from", "to", "call-id", "cseq")]
    return "\r\n".join([f"SIP/2.0 {status} {reason}", *keep, "Content-Length: 0"]) + "\r\n\r\n"


async def stream(calls: list[CallMedia], payload: bytes, seconds: float) -> None:
    """Send ``payload`` (µ-law, looped) on every call, 160 bytes every 20 ms, for
    ``seconds``, on an absolute schedule (a late tick does not shift the next ones)."""
    start = time.monotonic()
    ticks = int(seconds * 50)
    for tick in range(ticks):
        at = (tick * 160) % max(len(payload) - 159, 1)
        frame = payload[at:at + 160]
        for call in calls:
            call.send(frame)
        delay = start + (tick + 1) * 0.02 - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)


__all__ = ["CallMedia", "SipCaller", "stream"]
