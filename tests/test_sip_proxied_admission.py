"""A bridge behind a SIP proxy, on real loopback sockets: the per-source INVITE limits
count the caller behind a trusted proxy (its Via), not the proxy; and OPTIONS says 503
while the bridge is at capacity, so the proxy's health probe sends calls elsewhere."""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import AsyncIterator

from bridge import metrics
from bridge.bench.sip import free_udp_port
from bridge.sip.service import SipLeg, SipService
from bridge.sip.settings import SipSettings, Timers
from tests.support.sip_peers import Recorder, SipSink, UdpPeer, caller_sdp, udp_peer
from tests.support.waiting import until

_N = itertools.count(1)
PROXY = "127.0.0.5"


async def hold(leg: SipLeg, sink: SipSink) -> None:
    await sink.hangup.wait()


@contextlib.asynccontextmanager
async def service(**settings: object) -> AsyncIterator[tuple[SipService, Recorder]]:
    low = free_udp_port() & ~1
    rec = Recorder(hold)
    svc = SipService(SipSettings(host="127.0.0.1", port=0, **settings),  # type: ignore[arg-type]
                     rec, rtp_ports=(low, low + 39))
    await svc.start()
    try:
        yield svc, rec
    finally:
        await svc.stop()


def proxied(method: str, proxy: UdpPeer, port: int, caller_ip: str) -> tuple[bytes, str]:
    """``method`` as a proxy relays it: its own Via on top, the caller's below, stamped
    with the address the proxy received it from (``received``)."""
    n = next(_N)
    call_id = f"proxied-{n}@test"
    lines = [f"{method} sip:agent@127.0.0.1:{port} SIP/2.0",
             f"Via: SIP/2.0/UDP {PROXY}:{proxy.port};branch=z9hG4bKpx{n};rport",
             f"Via: SIP/2.0/UDP 192.0.2.9:5060;branch=z9hG4bKua{n};received={caller_ip}",
             "Max-Forwards: 69", f"From: <sip:caller@{caller_ip}>;tag=c{n}",
             f"To: <sip:agent@127.0.0.1:{port}>", f"Call-ID: {call_id}",
             f"CSeq: 1 {method}", f"Contact: <sip:caller@{caller_ip}:5060>"]
    body = caller_sdp(4000 + 2 * n) if method == "INVITE" else b""
    if body:
        lines.append("Content-Type: application/sdp")
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body, call_id


async def final(peer: UdpPeer, call_id: str) -> int:
    while True:
        response = await peer.recv_sip()
        if response.call_id == call_id and response.status >= 200:
            return response.status


async def send(peer: UdpPeer, svc: SipService, method: str, caller_ip: str) -> int:
    data, call_id = proxied(method, peer, svc.port, caller_ip)
    assert peer.transport is not None
    peer.transport.sendto(data, ("127.0.0.1", svc.port))
    return await final(peer, call_id)


def rejected(reason: str) -> float:
    return metrics.REGISTRY.get_sample_value("voicebridge_calls_rejected_total",
                                             {"reason": reason}) or 0.0


async def test_rate_limit_counts_the_caller_behind_a_trusted_proxy() -> None:
    """Burst 2 per source: through a trusted proxy four callers get four calls and one
    caller's third INVITE is refused; an untrusted proxy is one source for all."""
    limits = {"invite_rate_per_source": 1, "invite_burst_per_source": 2, "max_unacked": 50,
              "max_unacked_per_source": 50, "max_calls": 50}
    async with service(trusted_proxies=(f"{PROXY}/32",), **limits) as (svc, _):
        proxy = await udp_peer(PROXY)
        callers = [f"198.51.100.{i}" for i in range(1, 5)]
        assert [await send(proxy, svc, "INVITE", ip) for ip in callers] == [200] * 4
        before = rejected("sip_rate_limited")
        same = [await send(proxy, svc, "INVITE", "203.0.113.7") for _ in range(3)]
        assert same[:2] == [200, 200] and same[2] == 503, same
        assert rejected("sip_rate_limited") == before + 1
    async with service(**limits) as (svc, _):                   # not trusted
        proxy = await udp_peer(PROXY)
        got = [await send(proxy, svc, "INVITE", ip) for ip in callers]
        assert got[:2] == [200, 200] and got[2:] == [503, 503], got


async def test_options_is_503_while_at_capacity_and_200_again_after() -> None:
    # Never ACKed: with T1 = 50 ms the call ends at the ACK timeout (64*T1 = 3.2 s).
    async with service(max_calls=1, timers=Timers(t1=0.05)) as (svc, _):
        probe = await udp_peer(PROXY)
        assert await send(probe, svc, "OPTIONS", PROXY) == 200
        before = metrics.REGISTRY.get_sample_value(
            "voicebridge_sip_options_refused_total", {"reason": "at_capacity"}) or 0.0
        assert await send(probe, svc, "INVITE", PROXY) == 200
        await until(lambda: svc.active_calls == 1, 10, what="the call counted")
        assert await send(probe, svc, "OPTIONS", PROXY) == 503
        assert metrics.REGISTRY.get_sample_value(
            "voicebridge_sip_options_refused_total", {"reason": "at_capacity"}) == before + 1
        await until(lambda: svc.active_calls == 0, 30, what="the ACK timeout")
        assert await send(probe, svc, "OPTIONS", PROXY) == 200
