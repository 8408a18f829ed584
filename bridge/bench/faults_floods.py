"""SIP and HTTP abuse scenarios of ``voicebridge bench faults`` (see :mod:`bridge.bench.faults`).

Each SIP flood runs while ``--calls`` legitimate calls from 127.0.1.N are placed (6 s
each, turns every 4 s): the row's "recov" column counts those that were answered, heard
agent audio and were not hung up by the bridge, "lost" those that were not.

* ``malformed-udp``: ``--datagrams`` datagrams of garbage, truncated and mangled SIP
  from 127.0.0.4 to the SIP port, as fast as this process sends them;
* ``idle-tcp``: ``--tcp-conns`` TCP connections to the SIP port from 127.0.0.5, opened and
  held ``--hold-s`` seconds without a byte (how many connected, how many the bridge
  closed during the hold);
* ``slowloris``: ``--slowloris`` TCP connections from 127.0.0.6 trickling an INVITE's
  header one byte per second for ``--hold-s`` seconds (how many the bridge closed);
* ``invite-flood``: ``--max-calls`` INVITEs from 127.0.0.3 all at once, never ACKed (and
  their 200s never acknowledged), then the legitimate calls;
* ``webrtc-offers``: ``--offers`` ``POST /webrtc/offer`` with an aiortc-made offer and no
  token, ICE never completed: HTTP statuses, and how many Realtime sessions the emulator
  saw (its log's ``session ... opened`` lines).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import socket
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from aiortc import RTCPeerConnection

from bridge.bench.faults_uac import CallOutcome, UacCall, caller_ip, judge_plain, summary

if TYPE_CHECKING:
    from bridge.bench.faults import Campaign, Row

LEGIT_S = 6.0


async def _legit(c: Campaign, delay_s: float = 0.0) -> tuple[float, list[CallOutcome]]:
    assert c.serve is not None
    await asyncio.sleep(delay_s)
    t0 = time.monotonic()
    bursts = [t0 + 1.5 + 4.0 * k for k in range(2)]
    calls = [UacCall(i, c.serve.sip_port, bursts=bursts, local_ip=caller_ip(i))
             for i in range(c.args.calls)]
    return t0, list(await asyncio.gather(*(call.run(t0 + LEGIT_S) for call in calls)))


def _count(row: Row, placed: tuple[float, list[CallOutcome]]) -> None:
    t0, outcomes = placed
    row.detail = {"calls": [summary(out, t0) for out in outcomes]}
    for out in outcomes:
        verdict = judge_plain(out)
        row.calls += 1
        row.ok += verdict.kind == "ok"
        row.lost += verdict.kind != "ok"
        if out.answered_at is not None:
            row.silences.append(verdict.silence_s)
            row.dead_airs.append(verdict.dead_air_s)
        if out.hung_up_by_bridge is not None:
            row.fell_back += 1
    failed = Counter(str(o.status or o.error or "no answer") for o in outcomes
                     if o.answered_at is None)
    if failed:
        row.notes.append("legit calls not answered: " + ", ".join(
            f"{k} x{v}" for k, v in sorted(failed.items())))


# ---- malformed UDP ---------------------------------------------------------------------------

def _garbage(rng: random.Random, n: int) -> list[bytes]:
    """``n`` distinct-enough malformed datagrams (a few shapes, random contents)."""
    head = (b"INVITE sip:agent@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.4:5060;"
            b"branch=z9hG4bK%d\r\nCall-ID: %d@x\r\nCSeq: 1 INVITE\r\nFrom: <sip:a@b>;tag=1"
            b"\r\nTo: <sip:agent@127.0.0.1>\r\nContent-Length: 999\r\n\r\nv=0\r\n")
    shapes: list[Callable[[int], bytes]] = [
        lambda i: rng.randbytes(rng.randint(1, 1400)),
        lambda i: (head % (i, i))[:rng.randint(10, len(head) - 1)],
        lambda i: head % (i, i),                                  # body shorter than said
        lambda i: b"SIP/2.0 200 OK\r\nVia: \x00\xff\r\nCSeq: x\r\n\r\n",
        lambda i: b"INVITE " + b"A" * rng.randint(200, 1400) + b" SIP/2.0\r\n\r\n",
        lambda i: b"\r\n\r\n",
        lambda i: (head % (i, i)).replace(b":", b"", rng.randint(1, 3)),
    ]
    return [shapes[i % len(shapes)](i) for i in range(n)]


async def malformed_udp(c: Campaign, name: str, row: Row) -> None:
    assert c.serve is not None
    rng = random.Random(c.args.seed)
    datagrams = _garbage(rng, c.args.datagrams)
    legit = asyncio.ensure_future(_legit(c, 0.5))
    sent = errors = 0
    started = time.monotonic()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.4", 0))
        sock.setblocking(False)
        target = ("127.0.0.1", c.serve.sip_port)
        for i, data in enumerate(datagrams):
            try:
                sock.sendto(data, target)
                sent += 1
            except (BlockingIOError, OSError):
                errors += 1
            if i % 500 == 499:
                await asyncio.sleep(0)
    spent = time.monotonic() - started
    _count(row, await legit)
    row.notes.append(f"{sent} malformed datagrams sent in {spent:.1f} s "
                     f"({errors} send errors)")


# ---- idle TCP and slowloris -----------------------------------------------------------------

async def _open_many(port: int, n: int, source: str) -> list[socket.socket]:
    """Up to ``n`` connected TCP sockets from ``source`` (in batches of 200)."""
    loop = asyncio.get_running_loop()
    socks: list[socket.socket] = []

    async def one() -> None:
        s = socket.socket()
        s.setblocking(False)
        try:
            s.bind((source, 0))
            await asyncio.wait_for(loop.sock_connect(s, ("127.0.0.1", port)), 10.0)
        except (OSError, TimeoutError):
            s.close()
            return
        socks.append(s)

    for first in range(0, n, 200):
        await asyncio.gather(*(one() for _ in range(first, min(n, first + 200))))
    return socks


def _closed_by_peer(s: socket.socket) -> bool:
    try:
        data = s.recv(4096, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except BlockingIOError:
        return False
    except OSError:
        return True
    return data == b""


async def _hold(c: Campaign, row: Row, source: str, n: int, trickle: bool) -> None:
    assert c.serve is not None
    try:
        socks = await _open_many(c.serve.sip_port, n, source)
    except OSError as exc:
        row.notes.append(f"could not open connections: {exc}")
        socks = []
    row.notes.append(f"{len(socks)}/{n} TCP connections opened")
    legit = asyncio.ensure_future(_legit(c, 0.5))
    text = (b"INVITE sip:agent@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.6:5060;"
            b"branch=z9hG4bKslow\r\nX-Slow: " + b"a" * 4000)
    deadline = time.monotonic() + c.args.hold_s
    step = 0
    first_closed: float | None = None
    started = time.monotonic()
    while time.monotonic() < deadline:
        if trickle:
            for s in socks:
                with contextlib.suppress(OSError):
                    s.send(text[step:step + 1])
            step += 1
        await asyncio.sleep(1.0)
        if first_closed is None and any(_closed_by_peer(s) for s in socks):
            first_closed = time.monotonic() - started
    closed = sum(_closed_by_peer(s) for s in socks)
    for s in socks:
        s.close()
    _count(row, await legit)
    when = f", the first after {first_closed:.0f} s" if first_closed is not None else ""
    row.notes.append(f"{closed} closed by the bridge within {c.args.hold_s:.0f} s{when}")


async def idle_tcp(c: Campaign, name: str, row: Row) -> None:
    await _hold(c, row, "127.0.0.5", c.args.tcp_conns, trickle=False)


async def slowloris(c: Campaign, name: str, row: Row) -> None:
    await _hold(c, row, "127.0.0.6", c.args.slowloris, trickle=True)


# ---- unACKed INVITEs ------------------------------------------------------------------------

async def invite_flood(c: Campaign, name: str, row: Row) -> None:
    assert c.serve is not None
    port = c.serve.sip_port
    n = c.args.max_calls
    statuses: Counter[int] = Counter()
    loop = asyncio.get_running_loop()

    class Sink(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
            first = data.split(b"\r\n", 1)[0].split(b" ")
            if first[0] == b"SIP/2.0" and len(first) > 1 and first[1].isdigit():
                statuses[int(first[1])] += 1

    transport, _ = await loop.create_datagram_endpoint(Sink, local_addr=("127.0.0.3", 0))
    try:
        local = transport.get_extra_info("sockname")[1]
        for i in range(n):
            sdp = (f"v=0\r\no=- {i} 1 IN IP4 127.0.0.3\r\ns=-\r\nc=IN IP4 127.0.0.3\r\nt=0 0"
                   f"\r\nm=audio {40000 + 2 * i} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n")
            tag = random.getrandbits(32)
            invite = (f"INVITE sip:agent@127.0.0.1:{port} SIP/2.0\r\n"
                      f"Via: SIP/2.0/UDP 127.0.0.3:{local};branch=z9hG4bKfl{i}x{tag}"
                      f"\r\nMax-Forwards: 70\r\nFrom: <sip:flood@127.0.0.3>;tag=f{i}\r\n"
                      f"To: <sip:agent@127.0.0.1>\r\nCall-ID: flood-{i}-{tag}"
                      f"@127.0.0.3\r\nCSeq: 1 INVITE\r\nContact: <sip:flood@127.0.0.3:{local}>"
                      f"\r\nContent-Type: application/sdp\r\nContent-Length: {len(sdp)}\r\n\r\n"
                      + sdp)
            transport.sendto(invite.encode(), ("127.0.0.1", port))
        await asyncio.sleep(1.0)
        _count(row, await _legit(c))
    finally:
        transport.close()
    row.notes.append(f"{n} unACKed INVITEs from 127.0.0.3; their responses: "
                     + (", ".join(f"{k} x{v}" for k, v in sorted(statuses.items())) or "none"))


# ---- anonymous WebRTC offers -------------------------------------------------------------------

async def _offer_sdp() -> str:
    pc = RTCPeerConnection()
    try:
        pc.addTransceiver("audio", direction="sendrecv")
        await pc.setLocalDescription(await pc.createOffer())
        return str(pc.localDescription.sdp)
    finally:
        await pc.close()


def _post(url: str, body: bytes) -> int:
    request = urllib.request.Request(url, data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=20) as reply:
            reply.read()
            return int(reply.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (OSError, TimeoutError):
        return 0


async def webrtc_offers(c: Campaign, name: str, row: Row) -> None:
    assert c.serve is not None
    body = json.dumps({"type": "offer", "sdp": await _offer_sdp(), "caller": "anonymous"})
    url = c.serve.http_url + "/webrtc/offer"
    gate = asyncio.Semaphore(10)

    async def one() -> int:
        async with gate:
            return await asyncio.to_thread(_post, url, body.encode())

    statuses = Counter(await asyncio.gather(*(one() for _ in range(c.args.offers))))
    await asyncio.sleep(3.0)             # sessions a bridge opens for the offers
    row.notes.append(f"{c.args.offers} offers without a token: HTTP " + ", ".join(
        f"{k or 'no answer'} x{v}" for k, v in sorted(statuses.items())))


RUNNERS: dict[str, Callable[[Campaign, str, Row], Awaitable[None]]] = {
    "malformed-udp": malformed_udp, "idle-tcp": idle_tcp, "slowloris": slowloris,
    "invite-flood": invite_flood, "webrtc-offers": webrtc_offers,
}

__all__ = ["RUNNERS"]
