"""SipService on real loopback sockets: a Python caller over UDP/TCP with real RTP, and
SIPp (OPTIONS, a basic INVITE/ACK/BYE either way) as a real peer."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from bridge import metrics
from bridge.bench.sip import free_udp_port
from bridge.sip.message import parse_request, parse_response
from bridge.sip.service import SipLeg, SipService
from bridge.sip.settings import SipSettings
from tests.support.interop import require_binary
from tests.support.sip_peers import Recorder, SipSink, Uac, caller_sdp, respond, udp_peer
from tests.support.waiting import until

SIPP_DIR = Path(__file__).parent / "sipp"


async def wait_for_hangup(leg: SipLeg, sink: SipSink) -> None:
    await sink.hangup.wait()


@contextlib.asynccontextmanager
async def service(on_call: Callable[[SipLeg], Awaitable[None]],
                  **settings: object) -> AsyncIterator[SipService]:
    low = free_udp_port() & ~1
    svc = SipService(SipSettings(host="127.0.0.1", port=0, **settings),  # type: ignore[arg-type]
                     on_call, rtp_ports=(low, low + 19))
    await svc.start()
    try:
        yield svc
    finally:
        await svc.stop()


def rtp_packet(seq: int, ts: int, payload: bytes, pt: int = 0) -> bytes:
    return struct.pack("!BBHII", 0x80, pt, seq, ts, 0x1234) + payload


async def test_udp_call_with_rtp_both_ways_and_bye_from_caller() -> None:
    async def body(leg: SipLeg, sink: SipSink) -> None:
        for _ in range(5):
            leg.write_frame(b"\x00\x10" * 160)
        await sink.hangup.wait()

    rec = Recorder(body)
    async with service(rec) as svc:
        sip, rtp = await udp_peer(), await udp_peer()
        assert sip.transport is not None and rtp.transport is not None
        alice = Uac(rport=True)
        target = ("127.0.0.1", svc.port)
        sip.transport.sendto(alice.invite(sdp=caller_sdp(rtp.port)), target)
        assert (await sip.recv_sip()).status == 100
        ok = await sip.recv_sip()
        assert ok.status == 200
        answer = ok.body.decode()
        assert "m=audio " in answer and " RTP/AVP 0 101" in answer
        assert "c=IN IP4 127.0.0.1" in answer
        our_rtp = int(answer.split("m=audio ")[1].split()[0])
        sip.transport.sendto(alice.ack(ok), target)
        await asyncio.wait_for(rec.started.wait(), 10)
        leg = rec.legs[0]
        assert (leg.info.caller, leg.info.called, leg.g711) == ("alice", "bob", "pcmu")
        # Our 5 frames arrive as PCMU packets of 160 bytes (20 ms).
        packets = [await rtp.recv() for _ in range(5)]
        assert all(p[1] & 0x7F == 0 and len(p) == 12 + 160 for p in packets)
        # Theirs reach the sink as 20 ms PCM16 frames.
        for i in range(3):
            rtp.transport.sendto(rtp_packet(100 + i, 160 * i, b"\xff" * 160),
                                 ("127.0.0.1", our_rtp))
        await until(lambda: len(rec.sinks[0].audio) >= 3)
        assert [len(f) for f in rec.sinks[0].audio[:3]] == [320, 320, 320]
        # BYE from the caller: 200, the sink hears it, on_call returns.
        sip.transport.sendto(alice.in_dialog("BYE"), target)
        bye_ok = await sip.recv_sip()
        assert (bye_ok.status, bye_ok.cseq.method) == (200, "BYE")
        await asyncio.wait_for(rec.finished.wait(), 10)
        assert rec.sinks[0].reason == "bye"
        assert svc.active_calls == 0


async def test_media_from_the_signalling_host_latches_whatever_the_sdp_says() -> None:
    """A caller whose SDP names an address it does not send from (NAT, or a softphone
    naming another interface): its RTP comes from where its SIP came from, latches, and
    our audio follows it there."""
    async def body(leg: SipLeg, sink: SipSink) -> None:
        await sink.hangup.wait()

    rec = Recorder(body)
    async with service(rec) as svc:
        sip, rtp = await udp_peer(), await udp_peer()
        assert sip.transport is not None and rtp.transport is not None
        alice = Uac(rport=True)
        target = ("127.0.0.1", svc.port)
        sdp = caller_sdp(rtp.port).replace(b"c=IN IP4 127.0.0.1", b"c=IN IP4 203.0.113.9")
        sip.transport.sendto(alice.invite(sdp=sdp), target)
        await sip.recv_sip()
        ok = await sip.recv_sip()
        our_rtp = int(ok.body.decode().split("m=audio ")[1].split()[0])
        sip.transport.sendto(alice.ack(ok), target)
        await asyncio.wait_for(rec.started.wait(), 10)
        leg, sink = rec.legs[0], rec.sinks[0]
        rtp.transport.sendto(rtp_packet(1, 0, b"\xff" * 160), ("127.0.0.1", our_rtp))
        await until(lambda: sink.audio)
        assert len(sink.audio) == 1
        assert leg.rtp.stats.latched == ("127.0.0.1", rtp.port)
        leg.write_frame(b"\x00\x10" * 160)
        assert len(await rtp.recv()) == 12 + 160          # symmetric: back to the latch
        sip.transport.sendto(alice.in_dialog("BYE"), target)
        await asyncio.wait_for(rec.finished.wait(), 10)


async def test_offerless_invite_offer_in_200_answer_in_ack_with_media() -> None:
    """INVITE without SDP: our offer (from the configured RTP range, at the public
    address) goes in the 200, the caller's answer in the ACK sets the codec and where
    media goes, and RTP flows both ways."""
    async def body(leg: SipLeg, sink: SipSink) -> None:
        leg.write_frame(b"\x00\x10" * 160)
        await sink.hangup.wait()

    rec = Recorder(body)
    async with service(rec, public_address="198.51.100.20") as svc:
        low, high = svc.rtp_ports
        sip, rtp = await udp_peer(), await udp_peer()
        assert sip.transport is not None and rtp.transport is not None
        alice = Uac(rport=True)
        target = ("127.0.0.1", svc.port)
        sip.transport.sendto(alice.invite(sdp=None), target)
        assert (await sip.recv_sip()).status == 100
        ok = await sip.recv_sip()
        assert ok.status == 200 and ok.content_type == "application/sdp"
        # NAT: the public address in Contact, Via-independent, and in the SDP.
        assert ok.headers.get("Contact") == f"<sip:198.51.100.20:{svc.port}>"
        offer = ok.body.decode()
        assert "c=IN IP4 198.51.100.20\r\n" in offer and " IN IP4 198.51.100.20\r\n" in offer
        m_line = offer.split("m=audio ")[1].split("\r\n")[0].split()
        our_rtp = int(m_line[0])
        assert low <= our_rtp <= high and our_rtp % 2 == 0
        assert m_line[2:] == ["9", "0", "8", "101"]     # [sip] codecs: G.722 first
        answer = caller_sdp(rtp.port).replace(b"RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000",
                                              b"RTP/AVP 8 101\r\na=rtpmap:8 PCMA/8000")
        sip.transport.sendto(alice.ack(ok, body=answer), target)
        await asyncio.wait_for(rec.started.wait(), 10)
        leg, sink = rec.legs[0], rec.sinks[0]
        assert leg.g711 == "pcma"
        packet = await rtp.recv()                         # the answer told us where
        assert packet[1] & 0x7F == 8 and len(packet) == 12 + 160
        rtp.transport.sendto(rtp_packet(1, 0, b"\xd5" * 160, pt=8), ("127.0.0.1", our_rtp))
        await until(lambda: sink.audio)
        assert [len(f) for f in sink.audio] == [320]
        sip.transport.sendto(alice.in_dialog("BYE"), target)
        await asyncio.wait_for(rec.finished.wait(), 10)


@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_malformed_request_gets_400_with_the_reason(transport: str) -> None:
    async with service(wait_for_hangup) as svc:
        bad = Uac(rport=True).invite()
        bad = b"\r\n".join(line for line in bad.split(b"\r\n")
                            if not line.startswith(b"From:"))
        if transport == "udp":
            sip = await udp_peer()
            assert sip.transport is not None
            sip.transport.sendto(bad, ("127.0.0.1", svc.port))
            data = await sip.recv()
        else:
            reader, writer = await asyncio.open_connection("127.0.0.1", svc.port)
            writer.write(bad.replace(b"/UDP", b"/TCP"))
            data = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            writer.close()
        assert data.startswith(b"SIP/2.0 400 Bad Request (missing From)\r\n"), data
        assert svc.active_calls == 0


async def test_on_call_return_sends_bye_over_tcp() -> None:
    async def body(leg: SipLeg, sink: SipSink) -> None:
        await asyncio.sleep(0.05)

    rec = Recorder(body)
    async with service(rec) as svc:
        rtp = await udp_peer()
        reader, writer = await asyncio.open_connection("127.0.0.1", svc.port)
        alice = Uac(rport=True)
        writer.write(alice.invite(sdp=caller_sdp(rtp.port)).replace(b"/UDP", b"/TCP"))

        async def read_message() -> bytes:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
            return head + await reader.readexactly(length)

        assert parse_response(await read_message()).status == 100
        ok = parse_response(await read_message())
        assert ok.status == 200 and ok.headers.get("Contact", ).endswith(";transport=tcp>")
        writer.write(alice.ack(ok).replace(b"/UDP", b"/TCP"))
        bye = parse_request(await read_message())
        assert bye.method == "BYE"
        assert bye.via[0].transport == "TCP"
        writer.write(b"SIP/2.0 200 OK\r\n" + b"".join(
            f"{k}: {v}\r\n".encode() for k, v in bye.headers if k in (
                "Via", "From", "To", "Call-ID", "CSeq")) + b"Content-Length: 0\r\n\r\n")
        await writer.drain()
        await asyncio.wait_for(rec.finished.wait(), 10)
        writer.close()


async def test_a_flood_of_junk_datagrams_is_answered_but_logged_only_a_few_times(
        caplog: pytest.LogCaptureFixture) -> None:
    async with service(wait_for_hangup) as svc:
        sip = await udp_peer()
        assert sip.transport is not None
        with caplog.at_level(logging.INFO, "bridge.sip.ua"):
            for n in range(200):
                sip.transport.sendto(b"INVITE sip:x@y SIP/2.0\r\nVia: junk %d\r\n\r\n" % n,
                                     ("127.0.0.1", svc.port))
            await asyncio.sleep(0.3)
        assert svc.ua is not None and svc.ua.stats["malformed"] >= 150
        junk = [r for r in caplog.records if "malformed SIP message" in r.getMessage()]
        assert 1 <= len(junk) <= 5


async def test_tcp_connections_past_the_cap_are_closed_at_once() -> None:
    refused_before = metrics.SIP_TCP_REFUSED._value.get()
    async with service(wait_for_hangup, transports=("udp", "tcp"),
                       tcp_max_connections=3) as svc:
        conns = [await asyncio.open_connection("127.0.0.1", svc.port) for _ in range(3)]
        await until(lambda: len(svc._tcp) == 3)
        try:                                                        # closed by the bridge
            reader, writer = await asyncio.open_connection("127.0.0.1", svc.port)
            assert await asyncio.wait_for(reader.read(), 5) == b""
            writer.close()
        except ConnectionResetError:
            pass
        assert svc.tcp.stats["refused"] == 1
        assert metrics.SIP_TCP_REFUSED._value.get() == refused_before + 1
        # The connections within the cap stay, and still work: a CRLF ping gets its pong.
        r, w = conns[0]
        w.write(b"\r\n\r\n")
        await w.drain()
        assert await asyncio.wait_for(r.readexactly(2), 5) == b"\r\n"
        assert len(svc._tcp) == 3
        for _, w in conns:
            w.close()


def rejected(reason: str) -> float:
    return metrics.REGISTRY.get_sample_value("voicebridge_calls_rejected_total",
                                             {"reason": reason}) or 0.0


async def test_allowlist_and_capacity() -> None:
    forbidden, busy_before = rejected("sip_forbidden"), rejected("sip_busy")
    async with service(wait_for_hangup, allow_from=("10.0.0.0/8",)) as svc:
        sip = await udp_peer()
        assert sip.transport is not None
        sip.transport.sendto(Uac(rport=True).invite(), ("127.0.0.1", svc.port))
        statuses = [(await sip.recv_sip()).status for _ in range(2)]
        assert statuses == [100, 403]
    async with service(wait_for_hangup, max_calls=0) as svc:
        sip = await udp_peer()
        assert sip.transport is not None
        sip.transport.sendto(Uac(rport=True).invite(), ("127.0.0.1", svc.port))
        assert (await sip.recv_sip()).status == 100
        busy = await sip.recv_sip()
        assert (busy.status, busy.headers.get("Retry-After")) == (503, "5")
    # Both refusals are counted as rejected calls, each with its reason.
    assert rejected("sip_forbidden") == forbidden + 1
    assert rejected("sip_busy") == busy_before + 1


# --------------------------------------------------------------------------------- SIPp

async def run_sipp(svc: SipService, *args: str, limit: float = 60.0) -> tuple[int, str]:
    sipp = require_binary("sipp", "SIP interop")
    cmd = [sipp, f"127.0.0.1:{svc.port}", "-i", "127.0.0.1", "-p", str(free_udp_port()),
           "-mp", str(free_udp_port() & ~1), "-m", "1", "-l", "1", "-nostdin",
           "-timeout", "30s", "-timeout_error", "-max_recv_loops", "1000", *args]
    proc = await asyncio.create_subprocess_exec(
        *cmd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), limit)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    return proc.returncode or 0, out.decode(errors="replace")[-3000:]


@pytest.mark.interop
async def test_sipp_options() -> None:
    async with service(wait_for_hangup) as svc:
        code, out = await run_sipp(svc, "-sf", str(SIPP_DIR / "options.xml"))
        assert code == 0, out
        assert svc.stats["options"] == 1


@pytest.mark.interop
@pytest.mark.parametrize("transport", ["u1", "t1"])
async def test_sipp_basic_call_bye_from_sipp(transport: str) -> None:
    rec = Recorder(wait_for_hangup)
    async with service(rec) as svc:
        code, out = await run_sipp(svc, "-sn", "uac", "-t", transport, "-d", "500")
        assert code == 0, out
        await asyncio.wait_for(rec.finished.wait(), 10)
        assert rec.sinks[0].reason == "bye"
        assert rec.legs[0].g711 == "pcmu"


@pytest.mark.interop
async def test_sipp_basic_call_bye_from_us() -> None:
    async def short(leg: SipLeg, sink: SipSink) -> None:
        await asyncio.sleep(0.3)

    rec = Recorder(short)
    async with service(rec) as svc:
        code, out = await run_sipp(svc, "-sf", str(SIPP_DIR / "uac_wait_bye.xml"))
        assert code == 0, out
        assert rec.finished.is_set()
        assert rec.legs[0].g711 == "pcma"  # SIPp offered PCMA first


async def test_leg_dtmf_info_hold_resume_and_transfer() -> None:
    rec = Recorder(wait_for_hangup)
    async with service(rec) as svc:
        sip, rtp = await udp_peer(), await udp_peer()
        assert sip.transport is not None
        alice = Uac(rport=True)
        target = ("127.0.0.1", svc.port)
        sdp = caller_sdp(rtp.port)
        sip.transport.sendto(alice.invite(sdp=sdp), target)
        await sip.recv_sip()
        ok = await sip.recv_sip()
        sip.transport.sendto(alice.ack(ok), target)
        await asyncio.wait_for(rec.started.wait(), 10)
        leg, sink = rec.legs[0], rec.sinks[0]
        # INFO DTMF reaches the sink.
        info = alice.in_dialog("INFO", b"Signal=5\r\nDuration=160\r\n").replace(
            b"application/sdp", b"application/dtmf-relay")
        sip.transport.sendto(info, target)
        assert (await sip.recv_sip()).status == 200
        assert sink.dtmf == ["5"]
        # Hold (sendonly) stops our sending; resume restarts it.
        for direction, allowed in ((b"a=sendonly\r\n", False), (b"a=sendrecv\r\n", True)):
            sip.transport.sendto(alice.in_dialog("INVITE", sdp + direction), target)
            assert (await sip.recv_sip()).status == 100
            reok = await sip.recv_sip()
            assert reok.status == 200
            sip.transport.sendto(alice.ack(reok), target)
            assert leg.sending_allowed is allowed
        # Blind transfer: REFER out, NOTIFY sipfrag back.
        transfer = asyncio.ensure_future(leg.transfer("sip:agent@127.0.0.1"))
        refer = parse_request(await sip.recv())
        assert refer.method == "REFER"
        sip.transport.sendto(respond(refer, 202, "Accepted"), target)
        notify = alice.in_dialog("NOTIFY", b"SIP/2.0 200 OK\r\n", extra=(
            "Event: refer", "Subscription-State: terminated;reason=noresource")).replace(
            b"application/sdp", b"message/sipfrag")
        sip.transport.sendto(notify, target)
        assert (await sip.recv_sip()).status == 200
        outcome = await asyncio.wait_for(transfer, 10)
        assert (outcome.ok, outcome.status) == (True, 200)
        # A refused transfer: the outcome says so and the call goes on.
        transfer = asyncio.ensure_future(leg.transfer("sip:busy@127.0.0.1"))
        refer = parse_request(await sip.recv())
        sip.transport.sendto(respond(refer, 202, "Accepted"), target)
        notify = alice.in_dialog("NOTIFY", b"SIP/2.0 486 Busy Here\r\n", extra=(
            "Event: refer", "Subscription-State: terminated;reason=noresource")).replace(
            b"application/sdp", b"message/sipfrag")
        sip.transport.sendto(notify, target)
        assert (await sip.recv_sip()).status == 200
        outcome = await asyncio.wait_for(transfer, 10)
        assert (outcome.ok, outcome.status) == (False, 486)
        assert not leg.ended and svc.active_calls == 1
        sip.transport.sendto(alice.in_dialog("BYE"), target)
        assert (await sip.recv_sip()).status == 200
        await asyncio.wait_for(rec.finished.wait(), 10)
