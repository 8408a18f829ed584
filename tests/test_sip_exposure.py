"""SIP exposure limits on real loopback sockets: the per-source INVITE rate, INVITEs that
are never ACKed, SIP/TCP connections per source, slowloris, idle and oversize messages.
Sources are told apart by their loopback address (all of 127/8 is local)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import socket
import time
from collections.abc import AsyncIterator

import pytest

from bridge import metrics
from bridge.bench.sip import free_udp_port
from bridge.config import settings_from_mapping
from bridge.errors import ConfigError
from bridge.sip.admission import RateLimiter
from bridge.sip.message import parse_response
from bridge.sip.service import SipLeg, SipService
from bridge.sip.settings import SipSettings, Timers
from bridge.sip.tcp import TcpGuard
from tests.support.sip_peers import Recorder, SipSink, Uac, UdpPeer, caller_sdp, udp_peer
from tests.support.waiting import until


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


def rejected(reason: str) -> float:
    return metrics.REGISTRY.get_sample_value("voicebridge_calls_rejected_total",
                                             {"reason": reason}) or 0.0


def dropped(reason: str) -> float:
    return metrics.REGISTRY.get_sample_value("voicebridge_sip_tcp_dropped_total",
                                             {"reason": reason}) or 0.0


async def finals(peer: UdpPeer, who: str, n: int) -> list[tuple[int, str | None]]:
    """The final responses to INVITEs ``who-0`` .. ``who-(n-1)``: status and Retry-After,
    in the order of the INVITEs (they may come in another order)."""
    got: dict[str, tuple[int, str | None]] = {}
    while len(got) < n:
        response = await peer.recv_sip()
        if response.status >= 200:
            got[response.call_id] = (response.status, response.headers.get("Retry-After"))
    return [got[f"{who}-{i}@test"] for i in range(n)]


#: Each caller's branches start apart: equal branches would make one INVITE a
#: retransmission of another.
_FIRST_BRANCH = itertools.count(1000, 1000)


def caller(n: int, who: str) -> Uac:
    return Uac(call_id=f"{who}-{n}@test", from_tag=f"{who}{n}", rport=True,
               branches=itertools.count(next(_FIRST_BRANCH)))


# ------------------------------------------------------------------------- sans-I/O parts

def test_rate_limiter_lets_a_burst_through_then_the_rate() -> None:
    bucket = RateLimiter(2.0, 3)
    assert [bucket.take("a", 0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take("a", 0.0) == 0.5           # the next token in half a second
    assert bucket.take("b", 0.0) == 0.0           # another source has its own bucket
    assert bucket.take("a", 0.5) == 0.0
    assert bucket.take("a", 0.5) > 0
    assert RateLimiter(0, 1).take("a", 0.0) == 0.0   # rate 0: no limit


def test_rate_limiter_memory_is_bounded() -> None:
    bucket = RateLimiter(1.0, 2, max_sources=100)
    for n in range(10_000):
        bucket.take(f"10.0.{n // 256}.{n % 256}", n * 0.001)
    assert len(bucket) <= 100


def test_tcp_guard_limits_and_timeouts() -> None:
    guard = TcpGuard(SipSettings(tcp_max_connections=3, tcp_max_per_source=2,
                                 tcp_message_timeout_s=10, tcp_idle_timeout_s=120))
    assert guard.open(("10.0.0.1", 1), 0) is None
    assert guard.open(("10.0.0.1", 2), 0) is None
    assert guard.open(("10.0.0.1", 3), 0) == "per_source"
    assert guard.open(("10.0.0.2", 1), 0) is None
    assert guard.open(("10.0.0.3", 1), 0) == "overall"
    guard.close(("10.0.0.1", 2))
    assert guard.open(("10.0.0.1", 3), 0) is None
    # 10.0.0.1:1 trickles a message, :3 completes one, 10.0.0.2:1 is quiet but has a call.
    guard.received(("10.0.0.1", 1), 1.0, messages=False, in_progress=True)
    guard.received(("10.0.0.1", 3), 100.0, messages=True, in_progress=False)
    assert guard.expired(10.9, lambda a: False) == []
    assert guard.expired(11.0, lambda a: False) == [(("10.0.0.1", 1), "slow")]
    busy = {("10.0.0.2", 1)}
    assert guard.expired(130.0, busy.__contains__) == [(("10.0.0.1", 1), "slow")]
    assert (("10.0.0.1", 3), "idle") in guard.expired(220.0, busy.__contains__)


# ------------------------------------------------------------------------------ INVITEs

async def test_invite_rate_per_source_is_503_with_retry_after_and_others_are_unaffected(
        ) -> None:
    before = rejected("sip_rate_limited")
    async with service(invite_rate_per_source=1, invite_burst_per_source=3,
                       max_unacked=50, max_unacked_per_source=50) as (svc, _):
        target = ("127.0.0.1", svc.port)
        flood = await udp_peer("127.0.0.1")
        assert flood.transport is not None
        started = time.monotonic()
        for n in range(8):
            flood.transport.sendto(caller(n, "flood").invite(sdp=caller_sdp(4000)), target)
        answers = await finals(flood, "flood", 8)
        refused_in = time.monotonic() - started
        statuses = [status for status, _ in answers]
        assert statuses.count(200) in (3, 4), statuses    # the burst (and maybe one refill)
        refusals = [retry for status, retry in answers if status == 503]
        assert len(refusals) >= 4 and all(r is not None and int(r) >= 1 for r in refusals)
        assert rejected("sip_rate_limited") == before + len(refusals)
        # Another source has a bucket of its own.
        other = await udp_peer("127.0.0.2")
        assert other.transport is not None
        other.transport.sendto(caller(0, "other").invite(sdp=caller_sdp(4002)), target)
        assert (await finals(other, "other", 1))[0][0] == 200
        print(f"8 INVITEs from one source answered in {refused_in * 1000:.0f} ms: {statuses}")


async def test_unacked_invites_from_one_source_do_not_block_another_and_time_out() -> None:
    """max_calls INVITEs from 127.0.0.3 that are answered and never ACKed: only
    max_unacked_per_source of them get a 200 (the rest 503), a caller from 127.0.0.2 still
    gets its call, and when Timer H fires the unACKed calls' RTP ports and slots are free."""
    before = rejected("sip_unacked_limit")
    max_calls = 6
    async with service(max_calls=max_calls, max_unacked_per_source=2, max_unacked=4,
                       timers=Timers(t1=0.05)) as (svc, rec):
        target = ("127.0.0.1", svc.port)
        silent = await udp_peer("127.0.0.3")
        assert silent.transport is not None
        for n in range(max_calls):
            silent.transport.sendto(caller(n, "silent").invite(sdp=caller_sdp(4000)), target)
        answers = await finals(silent, "silent", max_calls)
        assert sorted(status for status, _ in answers) == [200, 200, 503, 503, 503, 503]
        assert all(retry == "5" for status, retry in answers if status == 503)
        assert rejected("sip_unacked_limit") == before + 4
        assert svc._ports.in_use == 2
        # A caller from elsewhere gets through and its call goes live.
        good = await udp_peer("127.0.0.2")
        assert good.transport is not None
        alice = caller(0, "good")
        good.transport.sendto(alice.invite(sdp=caller_sdp(4002)), target)
        ok = await good.recv_sip()
        while ok.status < 200:
            ok = await good.recv_sip()
        assert ok.status == 200
        good.transport.sendto(alice.ack(ok), target)
        await asyncio.wait_for(rec.started.wait(), 10)
        # No ACK ever comes for the others: after 64*T1 (3.2 s) their calls end.
        await until(lambda: svc.active_calls == 1, 20,
                    what=lambda: f"{svc.active_calls} calls")
        assert svc._ports.in_use == 1 and svc.unacked_calls == 0
        assert len(rec.legs) == 1 and not rec.legs[0].ended


# --------------------------------------------------------------------------------- TCP

async def closed(reader: asyncio.StreamReader, limit: float = 15.0) -> bytes:
    """Everything until the far end closes the connection."""
    return await asyncio.wait_for(reader.read(), limit)


async def refused(port: int, source: str) -> bool:
    """A connection from ``source`` is closed by the bridge at once (a reset, or an end of
    stream if the connection completed first)."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port,
                                                       local_addr=(source, 0))
    except ConnectionResetError:
        return True
    try:
        return await closed(reader, 5) == b""
    except ConnectionResetError:
        return True
    finally:
        writer.close()


async def test_tcp_per_source_limit_leaves_other_sources_alone() -> None:
    before = dropped("per_source")
    async with service(tcp_max_per_source=2) as (svc, _):
        mine = [await asyncio.open_connection("127.0.0.1", svc.port, local_addr=("127.0.0.4", 0))
                for _ in range(2)]
        await until(lambda: len(svc._tcp) == 2)
        assert await refused(svc.port, "127.0.0.4")
        assert dropped("per_source") == before + 1
        r, w = await asyncio.open_connection("127.0.0.1", svc.port, local_addr=("127.0.0.5", 0))
        w.write(b"\r\n\r\n")                                   # a CRLF ping: pong
        assert await asyncio.wait_for(r.readexactly(2), 5) == b"\r\n"
        for _, conn in [*mine, (r, w)]:
            conn.close()


async def test_slowloris_and_idle_connections_are_closed() -> None:
    slow_before, idle_before = dropped("slow"), dropped("idle")
    async with service(tcp_message_timeout_s=1, tcp_idle_timeout_s=3) as (svc, _):
        slow_r, slow_w = await asyncio.open_connection("127.0.0.1", svc.port)
        idle_r, idle_w = await asyncio.open_connection("127.0.0.1", svc.port)
        started = time.monotonic()

        async def trickle() -> None:
            for byte in b"INVITE sip:bob@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TCP x;branch=z9":
                slow_w.write(bytes([byte]))
                await asyncio.sleep(0.2)

        sender = asyncio.ensure_future(trickle())
        try:
            assert await closed(slow_r) == b""
            slow_s = time.monotonic() - started
        finally:
            sender.cancel()
        assert dropped("slow") == slow_before + 1
        assert await closed(idle_r) == b""
        idle_s = time.monotonic() - started
        assert dropped("idle") == idle_before + 1
        assert slow_s >= 0.9 and idle_s >= 2.9       # not before their timeouts
        print(f"slowloris closed after {slow_s:.1f} s, idle after {idle_s:.1f} s")
        slow_w.close()
        idle_w.close()


def tcp_invite(extra: bytes = b"", body: bytes = b"", length: int | None = None) -> bytes:
    head = (b"INVITE sip:bob@127.0.0.1 SIP/2.0\r\n"
            b"Via: SIP/2.0/TCP 127.0.0.1:5999;branch=z9hG4bKbig1\r\n"
            b"Max-Forwards: 70\r\nFrom: <sip:a@x>;tag=1\r\nTo: <sip:bob@127.0.0.1>\r\n"
            b"Call-ID: big@test\r\nCSeq: 1 INVITE\r\n" + extra
            + b"Content-Length: %d\r\n\r\n" % (len(body) if length is None else length))
    return head + body


async def test_oversize_headers_and_body_get_513_then_the_connection_closes() -> None:
    before = dropped("too_large")
    async with service() as (svc, _):
        for message in (tcp_invite(extra=b"X-Filler: %s\r\n" % (b"a" * 1000) * 80),
                        tcp_invite(length=300_000)):
            reader, writer = await asyncio.open_connection("127.0.0.1", svc.port)
            writer.write(message)
            answer = await closed(reader)
            response = parse_response(answer)
            assert response.status == 513 and response.call_id == "big@test", answer[:200]
            writer.close()
        assert dropped("too_large") == before + 2
        assert len(svc._tcp) == 0


async def test_an_idle_connection_carrying_a_live_call_stays_open() -> None:
    """The idle timeout spares a connection a live call was set up over (its BYE comes on
    it), and closes a quiet one beside it."""
    async with service(tcp_idle_timeout_s=1) as (svc, rec):
        rtp = await udp_peer()
        reader, writer = await asyncio.open_connection("127.0.0.1", svc.port)
        quiet_r, quiet_w = await asyncio.open_connection("127.0.0.1", svc.port)
        alice = caller(0, "tcp")
        writer.write(alice.invite(sdp=caller_sdp(rtp.port)).replace(b"/UDP", b"/TCP"))

        async def read_response() -> bytes:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
            return head + await reader.readexactly(length)

        ok = parse_response(await read_response())
        while ok.status < 200:
            ok = parse_response(await read_response())
        assert ok.status == 200
        writer.write(alice.ack(ok).replace(b"/UDP", b"/TCP"))
        await asyncio.wait_for(rec.started.wait(), 10)
        assert await closed(quiet_r) == b""             # the quiet one: idle, closed
        await asyncio.sleep(2.5)                        # well past the idle timeout
        assert len(svc._tcp) == 1 and not rec.legs[0].ended
        writer.write(alice.in_dialog("BYE").replace(b"/UDP", b"/TCP"))
        assert parse_response(await read_response()).status == 200
        await asyncio.wait_for(rec.finished.wait(), 10)
        writer.close()
        quiet_w.close()


async def test_a_peer_that_never_reads_our_answers_is_closed() -> None:
    """Requests whose answers are never read must not grow our write buffer for ever."""
    before = dropped("unread")
    async with service() as (svc, _):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", svc.port))
        reader, writer = await asyncio.open_connection(sock=sock)
        options = b"".join(
            b"OPTIONS sip:bob@127.0.0.1 SIP/2.0\r\n"
            b"Via: SIP/2.0/TCP 127.0.0.1:5999;branch=z9hG4bKopt%d\r\n"
            b"Max-Forwards: 70\r\nFrom: <sip:a@x>;tag=1\r\nTo: <sip:bob@127.0.0.1>\r\n"
            b"Call-ID: opt%d@test\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n" % (n, n)
            for n in range(200))
        with contextlib.suppress(ConnectionError):
            for _ in range(200):                  # 40,000 OPTIONS, never reading
                writer.write(options)
                await writer.drain()
                if dropped("unread") > before:
                    break
        await until(lambda: dropped("unread") == before + 1, 30)
        assert len(svc._tcp) == 0
        writer.close()


def test_limits_load_from_the_file_and_the_environment_and_refuse_negatives() -> None:
    settings = settings_from_mapping(
        {"sip": {"tcp_max_per_source": 8, "max_unacked": 3, "drain_s": 5}},
        env={"VOICEBRIDGE_SIP_INVITE_RATE_PER_SOURCE": "0"})
    assert (settings.sip.tcp_max_per_source, settings.sip.max_unacked, settings.sip.drain_s,
            settings.sip.invite_rate_per_source) == (8, 3, 5, 0)
    with pytest.raises(ConfigError, match=r"\[sip\] tcp_idle_timeout_s: must not be negative"):
        settings_from_mapping({"sip": {"tcp_idle_timeout_s": -1}}, env={})
