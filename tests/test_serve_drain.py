"""SIGTERM drains a real ``voicebridge serve``: new INVITEs and OPTIONS get 503, live calls
go on and may end normally, the ones left when ``drain_s`` runs out get our BYE, the
process exits 0 and every call's record is written. A second signal ends the drain."""

from __future__ import annotations

import asyncio
import itertools
import json
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from bridge.bench.sip import PT_PCMU, Scenario, ServeProcess, SippRun, run_sipp
from tests.support.interop import require_binary
from tests.support.sip_peers import UdpPeer, udp_peer
from tests.support.waiting import until

_N = itertools.count(1)


def request(method: str, port: int, peer: UdpPeer) -> tuple[bytes, str]:
    n = next(_N)
    call_id = f"drain-{method.lower()}-{n}@test"
    lines = [f"{method} sip:agent@127.0.0.1:{port} SIP/2.0",
             f"Via: SIP/2.0/UDP 127.0.0.1:{peer.port};branch=z9hG4bKdrain{n};rport",
             "Max-Forwards: 70", f"From: <sip:probe@127.0.0.1>;tag=p{n}",
             f"To: <sip:agent@127.0.0.1:{port}>", f"Call-ID: {call_id}",
             f"CSeq: 1 {method}", f"Contact: <sip:probe@127.0.0.1:{peer.port}>"]
    body = b""
    if method == "INVITE":
        body = (b"v=0\r\no=p 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
                b"m=audio 4000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n")
        lines.append("Content-Type: application/sdp")
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body, call_id


async def ask(peer: UdpPeer, method: str, port: int) -> tuple[int, str | None]:
    """Send ``method`` to the bridge: the final status and its Retry-After."""
    data, call_id = request(method, port, peer)
    assert peer.transport is not None
    peer.transport.sendto(data, ("127.0.0.1", port))
    while True:
        response = await peer.recv_sip()
        if response.call_id == call_id and response.status >= 200:
            return response.status, response.headers.get("Retry-After")


def webrtc_offer(bridge: ServeProcess) -> int:
    """POST a (dummy) browser offer: the HTTP status (503 before any SDP work when busy)."""
    request = urllib.request.Request(
        bridge.http_url + "/webrtc/offer", method="POST",
        data=json.dumps({"type": "offer", "sdp": "v=0"}).encode(),
        headers={"Content-Type": "application/json",
                 "Authorization": f"Bearer {bridge.TOKEN}"})
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return int(reply.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def scenarios(tmp_path: Path, pause_ms: int) -> tuple[Path, Path]:
    media = tmp_path / "caller.ulaw"
    media.write_bytes(b"\xff" * 8000 * 3)
    ends = (Scenario("ends-itself", service="anything").invite()
            .rtp_stream(media, loops=-1, payload_type=PT_PCMU).pause(pause_ms).bye()
            .write(tmp_path))
    stays = (Scenario("stays", service="anything").invite()
             .rtp_stream(media, loops=-1, payload_type=PT_PCMU).wait_bye(90_000)
             .write(tmp_path))
    return ends, stays


async def exit_code(bridge: ServeProcess, limit: float) -> int:
    assert bridge.proc is not None
    try:
        return await asyncio.to_thread(bridge.proc.wait, limit)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"serve did not exit\n{bridge.log_tail()}") from None


def assert_ok(run: SippRun) -> None:
    assert run.returncode == 0 and run.successful == 1, run.explain()


@pytest.mark.interop
async def test_sigterm_drains_live_calls_then_byes_the_rest(tmp_path: Path) -> None:
    sipp = require_binary("sipp", "calls to drain")
    drain_s = 10
    ends, stays = scenarios(tmp_path, pause_ms=6000)
    with ServeProcess(tmp_path / "serve", env={"VOICEBRIDGE_SIP_TRANSPORTS": "udp",
                                               "VOICEBRIDGE_SIP_DRAIN_S": str(drain_s)}
                      ) as bridge:
        probe = await udp_peer()
        assert await ask(probe, "OPTIONS", bridge.sip_port) == (200, None)
        assert await asyncio.to_thread(webrtc_offer, bridge) == 400     # not busy: parsed
        first = asyncio.ensure_future(run_sipp(
            ends, bridge.sip_port, workdir=tmp_path, call_id_prefix="ends", limit_s=60,
            sipp=sipp))
        left = asyncio.ensure_future(run_sipp(
            stays, bridge.sip_port, workdir=tmp_path, call_id_prefix="stays", limit_s=90,
            sipp=sipp))
        await until(lambda: bridge.metric("voicebridge_calls_active", 'source="sip"') == 2,
                    30, what="2 live SIP calls", poll_s=0.2)
        assert bridge.proc is not None
        bridge.proc.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        # Admission stops (the signal is handled asynchronously: poll OPTIONS).
        status: list[tuple[int, str | None]] = []

        async def options_refused() -> bool:
            status.append(await ask(probe, "OPTIONS", bridge.sip_port))
            return status[-1][0] == 503

        await until(options_refused, 10, poll_s=0.1, what=lambda: f"OPTIONS: {status}")
        refused_in = time.monotonic() - signalled
        invite = await ask(probe, "INVITE", bridge.sip_port)
        assert invite[0] == 503 and invite[1] is not None, invite
        assert bridge.metric("voicebridge_calls_rejected_total", 'reason="draining"') >= 1
        assert await asyncio.to_thread(webrtc_offer, bridge) == 503     # browsers too
        assert bridge.get("/readyz")[0] == 503
        assert bridge.metric("voicebridge_calls_active", 'source="sip"') == 2
        # The first call ends by itself (SIPp's BYE) during the drain ...
        assert_ok(await first)
        ended_itself = time.monotonic() - signalled
        assert ended_itself < drain_s - 1
        # ... the other gets our BYE when the drain time is over, and SIPp answers it.
        assert_ok(await left)
        byed_after = time.monotonic() - signalled
        assert byed_after >= drain_s - 1, byed_after
        assert await exit_code(bridge, 60) == 0
        records = {r["leg_call_id"].split("-")[0]: r for r in bridge.records()}
        print(f"drain: OPTIONS 503 {refused_in * 1000:.0f} ms after SIGTERM; first call "
              f"ended by SIPp at {ended_itself:.1f} s, our BYE at {byed_after:.1f} s "
              f"(drain_s {drain_s}); records {[(k, r['end_reason']) for k, r in records.items()]}")
    assert set(records) == {"ends", "stays"}, records
    assert all(r["ended_at"] for r in records.values())
    assert records["stays"]["end_reason"] == "shutdown"
    assert records["ends"]["end_reason"] != "shutdown"
    assert "draining: 2 live call(s)" in bridge.log_tail(400)


@pytest.mark.interop
async def test_a_second_signal_ends_the_drain_at_once(tmp_path: Path) -> None:
    sipp = require_binary("sipp", "a call to drain")
    _ends, stays = scenarios(tmp_path, pause_ms=0)
    with ServeProcess(tmp_path / "serve", env={"VOICEBRIDGE_SIP_TRANSPORTS": "udp",
                                               "VOICEBRIDGE_SIP_DRAIN_S": "120"}) as bridge:
        left = asyncio.ensure_future(run_sipp(
            stays, bridge.sip_port, workdir=tmp_path, call_id_prefix="stays", limit_s=90,
            sipp=sipp))
        await until(lambda: bridge.metric("voicebridge_calls_active", 'source="sip"') == 1,
                    30, what="a live SIP call", poll_s=0.2)
        assert bridge.proc is not None
        bridge.proc.send_signal(signal.SIGTERM)
        await until(lambda: "draining: 1 live call(s)" in bridge.log_tail(400), 10,
                    poll_s=0.1)
        signalled = time.monotonic()
        bridge.proc.send_signal(signal.SIGINT)
        assert_ok(await left)                     # our BYE, well before the 120 s
        assert await exit_code(bridge, 60) == 0
        assert time.monotonic() - signalled < 30
        (record,) = bridge.records()
        assert record["ended_at"] and record["end_reason"] == "shutdown"
